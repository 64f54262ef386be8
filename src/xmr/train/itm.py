"""Fine-tune a cross-encoder's image-text matching head with hard negatives from a first stage.

As in BLIP / BLIP-2 (LAVIS), every step takes ``B`` matching pairs ``(image_i, text_i)`` and adds,
for each, one non-matching text for ``image_i`` and one non-matching image for ``text_i``: ``3B``
pairs, labels ``1`` for the matches and ``0`` for the rest, cross-entropy on the two ITM logits.

Negatives are *hard*: drawn from the ``hard_negatives`` highest-scoring non-matching candidates
of a first-stage bi-encoder (the ones a reranker has to sort out at search time). Without a first
stage they are drawn at random from all non-matching candidates.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XmrError


@dataclass
class ItmTrainConfig:
    """Options of :func:`train_itm` (all have working defaults for a small fine-tune)."""

    steps: int = 1000
    epochs: float | None = None  # when set: steps = ceil(epochs * positive pairs / batch_size)
    batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    hard_negatives: int = 16
    seed: int = 0
    log_every: int = 50

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ItmTrainConfig:
        """From ``key=value`` strings or values (``lr=5e-3``, ``grad_clip=none``), type-checked."""
        types = {f.name: str(f.type) for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key not in types:
                known = ", ".join(types)
                raise XmrError(f"unknown ITM training option '{key}' (known: {known})")
            kind = types[key]
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                if "None" not in kind:
                    raise XmrError(f"ITM training option {key} cannot be empty")
                values[key] = None
                continue
            try:
                values[key] = int(value) if kind.startswith("int") else float(value)
            except (TypeError, ValueError):
                raise XmrError(f"ITM training option {key}={value!r} is not a number") from None
        return cls(**values)


def positive_pairs(split: Any) -> list[tuple[str, str]]:
    """``(item id, text)`` matching pairs: the split's training pairs, else its relevance."""
    pairs: list[tuple[str, str]] = []
    if any(split.pairs.values()):
        for item_id, texts in split.pairs.items():
            pairs.extend((str(item_id), t) for t in texts)
    else:
        for qid, item_ids in split.relevance.items():
            text = split.queries[qid].text
            pairs.extend((str(i), text) for i in sorted(item_ids))
    pairs = [(i, t) for i, t in pairs if i in split.items and split.items[i].image is not None]
    if not pairs:
        raise XmrError(f"split '{split.name}' has no matching (image, text) pairs to train on")
    return pairs


def mine_hard_negatives(
    encoder: Any,
    image_refs: Sequence[Any],
    texts: Sequence[str],
    positives: Sequence[tuple[int, int]],
    n: int,
    *,
    batch_size: int | None = None,
    device: Any = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """The ``n`` highest-scoring non-matching texts of each image and images of each text.

    Args:
        encoder: the first-stage bi-encoder.
        image_refs, texts: the candidates (anything ``encode_images`` reads; strings).
        positives: ``(image index, text index)`` matching pairs (excluded from the negatives).
        n: negatives kept per image and per text.

    Returns:
        ``(texts_for_image, images_for_text)``: lists of indices, hardest first.
    """
    from xmr.eval.ranking import topk_from_embeddings

    image_emb = np.asarray(encoder.encode_images(list(image_refs), batch_size=batch_size))
    text_emb = np.asarray(encoder.encode_texts(list(texts), batch_size=batch_size))
    match_of_image: dict[int, set[int]] = {}
    match_of_text: dict[int, set[int]] = {}
    for i, t in positives:
        match_of_image.setdefault(i, set()).add(t)
        match_of_text.setdefault(t, set()).add(i)
    # Ask for enough candidates that n survive removing the matches.
    depth_i = min(len(texts), n + max((len(v) for v in match_of_image.values()), default=0))
    depth_t = min(len(image_refs), n + max((len(v) for v in match_of_text.values()), default=0))
    top_t, _ = topk_from_embeddings(image_emb, text_emb, depth_i, device=device)
    top_i, _ = topk_from_embeddings(text_emb, image_emb, depth_t, device=device)
    texts_for_image = [
        [int(t) for t in row if t not in match_of_image.get(i, ())][:n]
        for i, row in enumerate(top_t)
    ]
    images_for_text = [
        [int(i) for i in row if i not in match_of_text.get(t, ())][:n]
        for t, row in enumerate(top_i)
    ]
    return texts_for_image, images_for_text


class _ImageCache:
    """Decoded images, least recently used dropped first (a step re-reads few images)."""

    def __init__(self, refs: Sequence[Any], size: int = 2048) -> None:
        self.refs = refs
        self.size = size
        self.cache: OrderedDict[int, Any] = OrderedDict()

    def __getitem__(self, index: int) -> Any:
        from xmr.models.base import load_image

        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        image = load_image(self.refs[index])
        self.cache[index] = image
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return image


def _random_negative(rng: random.Random, n: int, exclude: set[int]) -> int | None:
    if len(exclude) >= n:
        return None
    while True:
        c = rng.randrange(n)
        if c not in exclude:
            return c


def train_itm(
    cross_encoder: Any,
    split: Any,
    *,
    config: ItmTrainConfig | None = None,
    first_stage: Any = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cross_encoder`` (a BLIP / BLIP-2 ITM cross-encoder) on ``split``'s pairs.

    Args:
        cross_encoder: the model to train, in place (a spec string is loaded first).
        split: a data set split with items (images) and pairs or relevance (texts).
        config: steps, batch size, learning rate, negatives per side, ...
        first_stage: a bi-encoder whose rankings give the hard negatives (None: random ones).
        out_dir: where to save the trained model (``save_pretrained`` format) and
            ``itm_train.json`` (the config and the loss curve).
        log: called with a progress line every ``config.log_every`` steps.

    Returns:
        ``{"losses": [...], "steps": n, "seconds": s, "negatives": "first-stage" | "random"}``.
    """
    import torch

    from xmr.models.cross_encoders import create_cross_encoder

    config = config or ItmTrainConfig()
    if config.batch_size < 1 or config.steps < 1:
        raise XmrError("ITM training needs steps >= 1 and batch_size >= 1")
    if out_dir is not None:
        from xmr.index.atomic import check_output_dir

        check_output_dir(out_dir)  # before the training, not after it
    ce = create_cross_encoder(cross_encoder) if isinstance(cross_encoder, str) else cross_encoder
    if not hasattr(ce, "forward_logits"):
        raise XmrError(f"{type(ce).__name__} cannot be trained (no differentiable forward)")

    pairs = positive_pairs(split)
    if config.epochs is not None:
        config = ItmTrainConfig(
            **{
                **asdict(config),
                "steps": max(1, math.ceil(config.epochs * len(pairs) / config.batch_size)),
            }
        )
    item_ids = sorted({i for i, _ in pairs})
    texts = list(dict.fromkeys(t for _, t in pairs))
    item_index = {i: n for n, i in enumerate(item_ids)}
    text_index = {t: n for n, t in enumerate(texts)}
    positives = [(item_index[i], text_index[t]) for i, t in pairs]
    refs = [split.items[i].image for i in item_ids]
    match_of_image: dict[int, set[int]] = {}
    match_of_text: dict[int, set[int]] = {}
    for i, t in positives:
        match_of_image.setdefault(i, set()).add(t)
        match_of_text.setdefault(t, set()).add(i)
    hard_texts = hard_images = None
    if first_stage is not None and config.hard_negatives > 0:
        hard_texts, hard_images = mine_hard_negatives(
            first_stage, refs, texts, positives, config.hard_negatives
        )

    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    model = ce.model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )

    def lr_factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    images = _ImageCache(refs)
    losses: list[float] = []
    order: list[int] = []
    start = time.monotonic()
    model.train()
    try:
        for step in range(config.steps):
            batch_images, batch_texts, labels = [], [], []
            for _ in range(config.batch_size):
                if not order:
                    order = list(range(len(positives)))
                    rng.shuffle(order)
                i, t = positives[order.pop()]
                batch_images.append(images[i])
                batch_texts.append(texts[t])
                labels.append(1)
                neg_t = (
                    rng.choice(hard_texts[i])
                    if hard_texts and hard_texts[i]
                    else _random_negative(rng, len(texts), match_of_image[i])
                )
                if neg_t is not None:
                    batch_images.append(images[i])
                    batch_texts.append(texts[neg_t])
                    labels.append(0)
                neg_i = (
                    rng.choice(hard_images[t])
                    if hard_images and hard_images[t]
                    else _random_negative(rng, len(refs), match_of_text[t])
                )
                if neg_i is not None:
                    batch_images.append(images[neg_i])
                    batch_texts.append(texts[t])
                    labels.append(0)
            with ce._autocast():
                logits = ce.forward_logits(batch_images, batch_texts)
            target = torch.tensor(labels, device=logits.device)
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if log and (step + 1) % config.log_every == 0:
                recent = np.mean(losses[-config.log_every :])
                log(f"itm step {step + 1}/{config.steps} loss {recent:.4f}")
    finally:
        model.eval()
    result = {
        "losses": losses,
        "steps": config.steps,
        "seconds": time.monotonic() - start,
        "negatives": "first-stage" if hard_texts is not None else "random",
    }
    if out_dir is not None:
        out = ce.save(out_dir)
        meta = {
            "config": asdict(config),
            "first_stage": getattr(first_stage, "spec", None),
            "started_from": ce.spec,
            "n_pairs": len(positives),
            **result,
        }
        (out / "itm_train.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return result
