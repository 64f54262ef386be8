"""Learn how to fuse an item's image and caption embeddings (``xmr train --fused``).

The bi-encoder stays frozen: its item (image, caption) and query embeddings are computed once,
and only the gate of :class:`~xmr.fusion.GatedFusion` is trained, so an epoch over tens
of thousands of pairs takes seconds on a CPU. The loss is InfoNCE from each query to the fused
items (multi-positive: every relevant item of the query counts as a positive)::

    loss_q = logsumexp_c(s_qc / T) - logsumexp_{c relevant to q}(s_qc / T),  s_qc = q . fused_c

over the candidates ``c`` of the step: the batch's items plus ``negatives`` random items of the
split (all of them when the split is that small). Training starts from the weighted sum with
``init_weight``, and after each epoch the fused text->item ``metric`` is measured on the
validation data (on the training data when there is none): the best epoch is kept, and epoch 0
is the weighted sum itself, so the result is never worse than it on that data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.eval.fused import evaluate_modes
from xmr.fusion import (
    DEFAULT_TUNE_METRIC,
    GatedFusion,
    ItemEmbeddings,
    WeightedFusion,
    encode_items,
)


@dataclass
class FusionTrainConfig:
    """Options of ``xmr train --fused`` (``KEY=VALUE`` on the command line).

    Attributes:
        content: the gate reads the item's two embeddings (else: one learned gate per dimension).
        init_weight: the image weight of the weighted sum that training starts from.
        epochs, batch_size, lr, weight_decay: the optimisation (AdamW; decay on W only).
        negatives: random extra items per step besides the batch's own.
        temperature: T of the loss (the similarities are cosines).
        metric: the fused text->item metric that picks the best epoch.
        seed: for batch order and negatives.
        device: "cpu", "cuda" or "auto".
    """

    content: bool = True
    init_weight: float = 0.5
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 1e-4
    negatives: int = 1024
    temperature: float = 0.05
    metric: str = DEFAULT_TUNE_METRIC
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 <= self.init_weight <= 1.0:
            raise XmrError(f"fusion option init_weight must be in [0, 1], got {self.init_weight}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise XmrError(f"fusion option {name} must be at least 1")
        if self.negatives < 0 or self.lr <= 0 or self.temperature <= 0 or self.weight_decay < 0:
            raise XmrError(
                "fusion options: negatives >= 0, lr > 0, temperature > 0, weight_decay >= 0"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FusionTrainConfig:
        """From ``key=value`` values (strings or typed), each checked against its field."""
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key not in kinds:
                raise XmrError(
                    f"unknown fusion training option '{key}' (known: {', '.join(kinds)})"
                )
            values[key] = _convert(key, value, str(kinds[key]))
        return cls(**values)


def _convert(key: str, value: Any, kind: str) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in ("true", "yes", "1", "on"):
            return True
        if word in ("false", "no", "0", "off"):
            return False
        raise XmrError(f"fusion training option {key}={value!r} is not true/false")
    if kind == "str":
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise XmrError(f"fusion training option {key}={value!r} is not a number") from None
    if kind == "int":
        if not number.is_integer():
            raise XmrError(f"fusion training option {key}={value!r} is not a whole number")
        return int(number)
    return number


@dataclass
class FusionData:
    """Frozen embeddings of one split: queries (rows in ``query_ids`` order), items and
    relevance (query id -> relevant item ids)."""

    query_emb: np.ndarray
    query_ids: list[str]
    items: ItemEmbeddings
    relevance: Mapping[str, Any]
    name: str = ""

    @classmethod
    def encode(cls, encoder: Any, split: Any, batch_size: int | None = None) -> FusionData:
        """Encode the split's items (image, mean caption) and its queries with relevant items."""
        qids = [q for q in split.queries if split.relevance.get(q)]
        if not qids:
            raise XmrError(
                f"split '{split.name}' has no query with relevant items: a fusion learns from "
                "queries and the items they should find"
            )
        texts = [split.queries[q].text for q in qids]
        items = encode_items(encoder, split.items, batch_size)
        query_emb = np.asarray(encoder.encode_texts(texts, batch_size=batch_size), np.float32)
        return cls(query_emb, qids, items, split.relevance, split.name)

    def pairs(self) -> np.ndarray:
        """(query row, item row) for every relevant item that has an embedding."""
        row = {item_id: n for n, item_id in enumerate(self.items.ids)}
        usable = ~(np.isnan(self.items.image).all(1) & np.isnan(self.items.caption).all(1))
        out = [
            (qi, row[i])
            for qi, q in enumerate(self.query_ids)
            for i in sorted(self.relevance.get(q) or ())
            if i in row and usable[row[i]]
        ]
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)

    def score(self, fusion: Any, metric: str, device: Any = "cpu") -> float:
        scores = evaluate_modes(
            self.query_emb,
            self.query_ids,
            self.items,
            self.relevance,
            modes=("fused",),
            weight=fusion,
            device=device,
        )
        key = f"fused/t2i/{metric}"
        if key not in scores:
            names = sorted(s.split("/")[-1] for s in scores if s.startswith("fused/t2i/"))
            raise XmrError(f"unknown metric '{metric}' (choose from {', '.join(names)})")
        return float(scores[key])


@dataclass
class FusionTrainResult:
    """The kept fusion, the per-epoch history and the weighted sum it started from."""

    fusion: GatedFusion
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    selected_on: str = "valid"
    metric: str = DEFAULT_TUNE_METRIC
    baseline: float = math.nan
    best: float = math.nan

    @property
    def first_loss(self) -> float:
        return self.history[1]["loss"] if len(self.history) > 1 else math.nan

    @property
    def last_loss(self) -> float:
        return self.history[-1]["loss"] if len(self.history) > 1 else math.nan


class _Gate:
    """The torch twin of GatedFusion (same formula, trainable)."""

    def __init__(self, start: GatedFusion, device: Any) -> None:
        import torch

        self.bias = torch.nn.Parameter(torch.tensor(start.bias, device=device))
        self.weight = (
            torch.nn.Parameter(torch.tensor(start.weight, device=device))
            if start.weight is not None
            else None
        )

    def parameters(self) -> list[Any]:
        return [p for p in (self.bias, self.weight) if p is not None]

    def fuse(self, img, cap, no_img, no_cap):
        import torch

        z = self.bias.expand_as(img)
        if self.weight is not None:
            z = z + torch.cat([img, cap], dim=-1) @ self.weight.T
        g = torch.sigmoid(z)
        mixed = torch.nn.functional.normalize(g * img + (1 - g) * cap, dim=-1, eps=1e-12)
        mixed = torch.where(no_img[:, None], cap, mixed)
        return torch.where(no_cap[:, None], img, mixed)

    def export(self) -> GatedFusion:
        weight = None if self.weight is None else self.weight.detach().cpu().numpy()
        return GatedFusion(self.bias.detach().cpu().numpy(), weight)


def train_fusion(
    train: FusionData,
    *,
    config: FusionTrainConfig | None = None,
    valid: FusionData | None = None,
    model: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> FusionTrainResult:
    """Train a :class:`GatedFusion` on frozen embeddings (see the module docstring).

    Args:
        train: the training split's embeddings (see :meth:`FusionData.encode`).
        config: the options; defaults as :class:`FusionTrainConfig`.
        valid: the validation split's embeddings, which pick the best epoch (else ``train``).
        model: the bi-encoder manifest the embeddings come from (recorded in the fusion).
        log: called with one line per epoch.

    Returns:
        The best fusion and the history (epoch 0 = the weighted sum it starts from).
    """
    import torch

    config = config or FusionTrainConfig()
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = train.pairs()
    if len(pairs) == 0:
        raise XmrError(f"split '{train.name}': no relevant item with an embedding to learn from")
    items = train.items
    both = ~(np.isnan(items.image).any(1) | np.isnan(items.caption).any(1))
    if not both.any():
        raise XmrError(
            f"split '{train.name}': no item has both an image and a caption; there is nothing "
            "to fuse"
        )
    dim = items.image.shape[1]
    if train.query_emb.shape[1] != dim:
        raise XmrError(f"queries are {train.query_emb.shape[1]}-d, items {dim}-d")

    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    start = GatedFusion.initial(dim, weight=config.init_weight, content=config.content)
    gate = _Gate(start, device)
    decay = [gate.weight] if gate.weight is not None else []
    optimizer = torch.optim.AdamW(
        [
            {"params": [gate.bias], "weight_decay": 0.0},
            {"params": decay, "weight_decay": config.weight_decay},
        ],
        lr=config.lr,
    )
    as_t = lambda a: torch.tensor(a, device=device)  # noqa: E731
    img = as_t(np.nan_to_num(items.image))
    cap = as_t(np.nan_to_num(items.caption))
    no_img = as_t(np.isnan(items.image).any(1))
    no_cap = as_t(np.isnan(items.caption).any(1))
    queries = as_t(train.query_emb)
    relevant = _relevant_rows(train)
    n_items = len(items.ids)

    judge, selected_on = (valid, "valid") if valid is not None else (train, "train")
    # Epoch 0: the weighted sum training starts from (the gate at init is exactly it).
    baseline = judge.score(WeightedFusion(config.init_weight), config.metric)
    history: list[dict[str, Any]] = [{"epoch": 0, "loss": None, config.metric: baseline}]
    best, best_epoch, best_fusion = baseline, 0, start
    say = log or (lambda _line: None)
    say(
        f"fusion epoch 0 (weighted w={config.init_weight:g}): {selected_on} {config.metric} "
        f"{baseline:.4f}"
    )
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(pairs))
        losses = []
        for s in range(0, len(order), config.batch_size):
            batch = pairs[order[s : s + config.batch_size]]
            cand = _candidates(batch[:, 1], n_items, config.negatives, rng)
            cand_t = as_t(cand)
            fused = gate.fuse(img[cand_t], cap[cand_t], no_img[cand_t], no_cap[cand_t])
            logits = queries[as_t(batch[:, 0])] @ fused.T / config.temperature
            positive = as_t(_positive_mask(batch[:, 0], cand, relevant))
            loss = (
                torch.logsumexp(logits, 1)
                - torch.logsumexp(logits.masked_fill(~positive, -torch.inf), 1)
            ).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        fusion = gate.export()
        value = judge.score(fusion, config.metric)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), config.metric: value})
        if value > best:
            best, best_epoch, best_fusion = value, epoch, fusion
        say(
            f"fusion epoch {epoch}: loss {history[-1]['loss']:.4f}, {selected_on} "
            f"{config.metric} {value:.4f}, image share "
            f"{fusion.image_share(items.image, items.caption):.3f} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    best_fusion.model = dict(model) if model else None
    best_fusion.training = {
        "config": asdict(config),
        "train_split": train.name,
        "selected_on": selected_on,
        "best_epoch": best_epoch,
        "metric": config.metric,
        "weighted_baseline": baseline,
        "best": best,
        "history": history,
    }
    return FusionTrainResult(
        best_fusion, history, best_epoch, selected_on, config.metric, baseline, best
    )


def _relevant_rows(data: FusionData) -> list[set[int]]:
    row = {item_id: n for n, item_id in enumerate(data.items.ids)}
    return [{row[i] for i in (data.relevance.get(q) or ()) if i in row} for q in data.query_ids]


def _positive_mask(query_rows: np.ndarray, cand: np.ndarray, relevant: list[set[int]]):
    column = {int(c): j for j, c in enumerate(cand)}
    mask = np.zeros((len(query_rows), len(cand)), dtype=bool)
    for b, q in enumerate(query_rows):
        for r in relevant[q]:
            j = column.get(r)
            if j is not None:
                mask[b, j] = True
    return mask


def _candidates(batch_items: np.ndarray, n_items: int, negatives: int, rng) -> np.ndarray:
    """The batch's items and ``negatives`` random others (every item when there are few)."""
    own = np.unique(batch_items)
    if n_items <= len(own) + negatives:
        return np.arange(n_items)
    extra = rng.choice(n_items, size=min(negatives + len(own), n_items), replace=False)
    extra = extra[~np.isin(extra, own)][:negatives]
    return np.concatenate([own, extra])
