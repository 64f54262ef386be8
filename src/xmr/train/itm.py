"""Fine-tune a cross-encoder's image-text matching head with hard negatives from a first stage.

As in BLIP / BLIP-2 (LAVIS), every step takes ``B`` matching pairs ``(image_i, text_i)`` and adds,
for each, one non-matching text for ``image_i`` and one non-matching image for ``text_i``: ``3B``
pairs, labels ``1`` for the matches and ``0`` for the rest, cross-entropy on the two ITM logits.

Negatives are *hard*: drawn from the ``hard_negatives`` highest-scoring non-matching candidates
of a first-stage bi-encoder (the ones a reranker has to sort out at search time). Without a first
stage they are drawn at random from all non-matching candidates (``xmr.train.itm_data``).

:func:`train_itm` trains on a split; :func:`train_itm_on_dataset` is ``xmr train
--cross-encoder``: it reads the data set, loads the models, trains, saves and validates by
reranking the first stage's results on the validation split (:class:`RerankEvaluator`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.eval.embedded import embed_split
from xmr.eval.reranked import evaluate_reranked
from xmr.io.atomic import check_output_dir
from xmr.models import create_encoder
from xmr.models.cross_encoders import create_cross_encoder
from xmr.train.config_base import TrainerConfig
from xmr.train.itm_data import ItmBatch, ItmPairs, mine_hard_negatives, positive_pairs
from xmr.train.optim import optimizer_update
from xmr.train.result import TrainResult
from xmr.train.validate import Evaluator, greater_is_better, resolve_valid_split

__all__ = [
    "ItmTrainConfig",
    "RerankEvaluator",
    "itm_step",
    "mine_hard_negatives",
    "positive_pairs",
    "train_itm",
    "train_itm_on_dataset",
]

DEFAULT_RERANK_K = 16
# The validation metrics ``xmr train --cross-encoder`` reports (of all evaluate_reranked gives).
SUMMARY_METRICS = ("R@1", "MeanRecall")


@dataclass
class ItmTrainConfig(TrainerConfig):
    """Options of :func:`train_itm` (all have working defaults for a small fine-tune).

    Attributes:
        steps: optimiser steps; ``epochs``, when set, replaces it with
            ``ceil(epochs * positive pairs / batch_size)``.
        batch_size: matching pairs per step (each with two negatives).
        lr, weight_decay (AdamW; not on biases and norms), warmup_steps (linear, then cosine),
        grad_clip (max global norm; None: none).
        hard_negatives: the first stage's top non-matches each negative is drawn from.
        seed, log_every: batch order and negatives; steps between log lines.
    """

    KIND: ClassVar[str] = "ITM training"
    CONFIG_FILE: ClassVar[str] = "itm_train.json"

    steps: int = 1000
    epochs: float | None = None
    batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    hard_negatives: int = 16
    seed: int = 0
    log_every: int = 50

    def validate(self) -> ItmTrainConfig:
        if self.batch_size < 1 or self.steps < 1:
            raise XmrError("ITM training needs steps >= 1 and batch_size >= 1")
        if self.log_every < 1 or self.warmup_steps < 0 or self.hard_negatives < 0:
            raise XmrError(
                "ITM training options: log_every >= 1, warmup_steps >= 0, hard_negatives >= 0"
            )
        return self


class RerankEvaluator(Evaluator):
    """Two-stage retrieval metrics of a cross-encoder on ``split``: the frozen ``first_stage``
    ranks, the cross-encoder rescores each query's top ``rerank_k``
    (``xmr.rerank.evaluate_reranked``; keys ``t2i/...`` and ``first_stage/t2i/...``).

    The first stage's embeddings are computed once (it does not change during training), by
    :func:`xmr.eval.embedded.embed_split` as ``xmr evaluate`` computes them.
    """

    def __init__(
        self,
        split: Any,
        first_stage: Any,
        *,
        rerank_k: int = DEFAULT_RERANK_K,
        primary_metric: str = "t2i/MeanRecall",
    ) -> None:
        if rerank_k < 1:
            raise XmrError(f"rerank_k must be >= 1, got {rerank_k}")
        self.split = split
        self.first_stage = first_stage
        self.rerank_k = int(rerank_k)
        self.primary_metric = primary_metric
        self.greater_is_better = greater_is_better(primary_metric)
        self._embeddings: tuple[Any, Any] | None = None

    def __call__(self, cross_encoder: Any) -> dict[str, float]:
        if self._embeddings is None:
            # The one way to embed a split (xmr evaluate's): an undecodable image ranks last.
            emb = embed_split(self.first_stage, self.split, progress=False)
            self._embeddings = (emb.text, emb.items)
        text_emb, image_emb = self._embeddings
        return evaluate_reranked(
            self.split, text_emb, image_emb, cross_encoder, rerank_k=self.rerank_k
        )


def itm_step(cross_encoder: Any, optimizer: Any, scheduler: Any, batch: ItmBatch, config) -> float:
    """One step: the ITM cross-entropy of ``batch``, backward, clip and update; the loss."""
    import torch

    with cross_encoder._autocast():
        logits = cross_encoder.forward_logits(batch.images, batch.texts)
    target = torch.tensor(batch.labels, device=logits.device)
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    loss.backward()
    optimizer_update(
        optimizer,
        cross_encoder.model.parameters(),
        grad_clip=config.grad_clip,
        scheduler=scheduler,
    )
    return float(loss.detach())


def train_itm(
    cross_encoder: Any,
    split: Any,
    *,
    config: ItmTrainConfig | Mapping[str, Any] | None = None,
    first_stage: Any = None,
    out_dir: str | Path | None = None,
    evaluator: Evaluator | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fine-tune ``cross_encoder`` (a BLIP / BLIP-2 ITM cross-encoder) on ``split``'s pairs.

    Args:
        cross_encoder: the model to train, in place (a spec string is loaded first).
        split: a data set split with items (images) and pairs or relevance (texts).
        config: steps, batch size, learning rate, negatives per side, ... (or a dict of them).
        first_stage: a bi-encoder whose rankings give the hard negatives (None: random ones).
        out_dir: where to save the trained model (``save_pretrained`` format) and
            ``itm_train.json`` (the config, the loss curve and the validation metrics).
        evaluator: scores the trained cross-encoder once, after the last step (e.g. a
            :class:`RerankEvaluator` of a validation split).
        log: called with a progress line every ``config.log_every`` steps.

    Returns:
        A ``TrainResult`` (``trainer="itm"``; ``losses`` per step; ``details["negatives"]``
        "first-stage" or "random"; ``model`` the cross-encoder).
    """
    import torch

    if config is None:
        config = ItmTrainConfig()
    elif isinstance(config, Mapping):
        config = ItmTrainConfig.from_dict(dict(config))
    config.validate()
    if out_dir is not None:
        check_output_dir(out_dir)  # before the training, not after it
    ce = create_cross_encoder(cross_encoder) if isinstance(cross_encoder, str) else cross_encoder
    if not hasattr(ce, "forward_logits"):
        raise XmrError(f"{type(ce).__name__} cannot be trained (no differentiable forward)")

    data = ItmPairs(split, first_stage, config.hard_negatives, config.seed)
    if config.epochs is not None:
        steps = max(1, math.ceil(config.epochs * len(data.positives) / config.batch_size))
        config = config.replace(steps=steps)
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
    losses: list[float] = []
    start = time.monotonic()
    model.train()
    try:
        for step in range(config.steps):
            losses.append(itm_step(ce, optimizer, scheduler, data.batch(config.batch_size), config))
            if log and (step + 1) % config.log_every == 0:
                recent = np.mean(losses[-config.log_every :])
                log(f"itm step {step + 1}/{config.steps} loss {recent:.4f}")
    finally:
        model.eval()
    seconds = time.monotonic() - start
    result = TrainResult(
        trainer="itm",
        out_dir=Path(out_dir) if out_dir is not None else None,
        global_step=config.steps,
        total_steps=config.steps,
        losses=losses,
        last_loss=losses[-1],
        seconds=seconds,
        samples_per_s=len(losses) * config.batch_size / max(seconds, 1e-9),
        model=ce,
        details={"negatives": data.negatives},
    )
    if evaluator is not None:
        metrics = evaluator(ce)
        result.metrics = metrics
        result.history = [{"step": config.steps, **metrics}]
        result.best_metric = evaluator.primary_metric
        result.best_value = evaluator.primary(metrics)
        result.best_step = config.steps
    if out_dir is not None:
        out = ce.save(out_dir)
        result.out_dir = Path(out)
        meta = {
            "config": config.to_dict(),
            "first_stage": getattr(first_stage, "spec", None),
            "started_from": ce.spec,
            "n_pairs": len(data.positives),
            "losses": losses,
            "steps": config.steps,
            "seconds": seconds,
            "negatives": data.negatives,
        }
        if evaluator is not None:
            meta["valid"] = result.metrics
        config.save(out, data=meta)
    result.summary = {
        "out": str(out_dir) if out_dir is not None else None,
        "steps": config.steps,
        "negatives": data.negatives,
        "last_loss": result.last_loss,
    }
    if evaluator is not None:
        result.summary["valid"] = {
            k: v for k, v in result.metrics.items() if k.endswith(SUMMARY_METRICS)
        }
    return result


def train_itm_on_dataset(
    cross_encoder: str | Any,
    data: str | Path,
    out: str | Path,
    *,
    first_stage: str | Any | None = None,
    format: str | None = None,
    images: str | Path | None = None,
    split: str | None = None,
    valid_split: str | None = "auto",
    rerank_k: int = DEFAULT_RERANK_K,
    config: ItmTrainConfig | Mapping[str, Any] | None = None,
    device: str | None = None,
    precision: str = "fp32",
    log: Callable[[str], None] | None = None,
    skip_bad: bool = False,
) -> TrainResult:
    """``xmr train --cross-encoder``: ITM fine-tuning of a cross-encoder on a data set's split.

    Args:
        cross_encoder: the cross-encoder to start from (a spec: ``blip:...``, ``blip2:...``, a
            local directory; or a loaded one).
        data, format, images: the data set (format None: detected; images: an image folder
            for formats that keep images apart).
        out: the output directory (the trained cross-encoder and ``itm_train.json``).
        first_stage: the bi-encoder (spec or loaded) whose top non-matching results are the
            hard negatives, and the first stage of the validation (None: random negatives, no
            validation).
        split: the training split (None: "train" when the data set has one, else its only one).
        valid_split: the split validation reranks (see ``resolve_valid_split``: "auto" is
            "valid" when the data set has it; None validates nothing).
        rerank_k: how deep validation reranks the first stage's results.
        config: the training options (an ``ItmTrainConfig`` or a dict of its fields).
        device, precision: where and how the models run (None/"auto": CUDA when available).
        log: called with progress lines.
        skip_bad: skip malformed records of the data set (counted and reported through ``log``)
            instead of stopping at the first.
    """
    check_output_dir(out)  # before loading and training, not after them
    if isinstance(config, Mapping):
        config = ItmTrainConfig.from_dict(dict(config))
    if config is not None:
        config.validate()
    device = None if device in (None, "auto") else device
    dataset = load_dataset(data, format, images=images, skip_bad=skip_bad)
    if log and dataset.skipped_warning():
        log(f"warning: {dataset.skipped_warning(data)}")
    train_split = dataset.split(split or ("train" if "train" in dataset.splits else None))
    valid_name = None
    if first_stage is not None:  # validation reranks the first stage's results
        valid_name = resolve_valid_split(dataset, valid_split, train_split.name, data)
    ce = cross_encoder
    if isinstance(ce, str):
        ce = create_cross_encoder(ce, device=device, precision=precision)
    if isinstance(first_stage, str):
        first_stage = create_encoder(first_stage, device=device, precision=precision)
    evaluator = None
    if valid_name is not None:
        evaluator = RerankEvaluator(dataset.split(valid_name), first_stage, rerank_k=rerank_k)
    return train_itm(
        ce,
        train_split,
        config=config,
        first_stage=first_stage,
        out_dir=out,
        evaluator=evaluator,
        log=log,
    )
