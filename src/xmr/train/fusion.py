"""Learn how to fuse an item's image and caption embeddings (``xmr train --fused``).

The bi-encoder stays frozen: its item (image, caption) and query embeddings are computed once,
and only the gate of :class:`~xmr.fusion.GatedFusion` is trained, so an epoch over tens
of thousands of pairs takes seconds on a CPU. The loss is InfoNCE from each query to the fused
items (multi-positive: every relevant item of the query counts as a positive)::

    loss_q = logsumexp_c(s_qc / T) - logsumexp_{c relevant to q}(s_qc / T),  s_qc = q . fused_c

A multi-vector encoder (BLIP-2: ``(N, K, D)`` image vectors, ``(N, D)`` captions) is fused the
way :meth:`~xmr.fusion.Fusion.fuse` fuses it, each of the K vectors with the item's caption
through the same gate, and scored the way it is evaluated, by max-sim:
``s_qc = max_k q . fused_ck``.

over the candidates ``c`` of the step: the batch's items plus ``negatives`` random items of the
split (all of them when the split is that small). Training starts from the weighted sum with
``init_weight``, and after each epoch the fused text->item ``metric`` is measured on the
validation data (on the training data when there is none): the best epoch is kept, and epoch 0
is the weighted sum itself, so the result is never worse than it on that data.

:func:`train_fusion` trains on frozen embeddings; :func:`train_fusion_on_dataset` is ``xmr train
--fused``: it reads the data set, encodes it, trains and saves the fusion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.fusion import DEFAULT_TUNE_METRIC, GatedFusion, WeightedFusion
from xmr.io.atomic import check_output_dir
from xmr.models import create_encoder
from xmr.train.config_base import TrainerConfig
from xmr.train.fusion_data import (
    FusionData,
    FusionEvaluator,
    candidates,
    positive_mask,
    relevant_rows,
)
from xmr.train.fusion_step import Gate, ItemTensors, fusion_step
from xmr.train.result import TrainResult
from xmr.train.validate import Evaluator, resolve_valid_split

__all__ = [
    "FusionData",
    "FusionEvaluator",
    "FusionTrainConfig",
    "fusion_step",
    "train_fusion",
    "train_fusion_on_dataset",
]


@dataclass
class FusionTrainConfig(TrainerConfig):
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

    The options are saved in the trained fusion's ``fusion.json`` (``training.config``).
    """

    KIND: ClassVar[str] = "fusion training"
    CONFIG_FILE: ClassVar[str] = "fusion_train_config.json"

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
        self.validate()  # a fusion config is complete at construction: check it there

    def validate(self) -> FusionTrainConfig:
        if not 0.0 <= self.init_weight <= 1.0:
            raise XmrError(f"fusion option init_weight must be in [0, 1], got {self.init_weight}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise XmrError(f"fusion option {name} must be at least 1")
        if self.negatives < 0 or self.lr <= 0 or self.temperature <= 0 or self.weight_decay < 0:
            raise XmrError(
                "fusion options: negatives >= 0, lr > 0, temperature > 0, weight_decay >= 0"
            )
        return self


def train_fusion(
    train: FusionData,
    *,
    config: FusionTrainConfig | Mapping[str, Any] | None = None,
    valid: FusionData | Evaluator | None = None,
    model: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a :class:`GatedFusion` on frozen embeddings (see the module docstring).

    Args:
        train: the training split's embeddings (see :meth:`FusionData.encode`).
        config: the options (or a dict of them); defaults as :class:`FusionTrainConfig`.
        valid: the validation split's embeddings, or any evaluator of a fusion, which pick the
            best epoch (else ``train``'s embeddings by ``config.metric``).
        model: the bi-encoder manifest the embeddings come from (recorded in the fusion).
        log: called with one line per epoch.

    Returns:
        A ``TrainResult`` (``trainer="fusion"``): ``model`` the best fusion, ``history`` one row
        per epoch (epoch 0 = the weighted sum it starts from, also ``baseline``), ``losses``
        per epoch, ``details`` ``best_epoch`` and ``selected_on`` ("valid" or "train").
    """
    import torch

    if config is None:
        config = FusionTrainConfig()
    elif isinstance(config, Mapping):
        config = FusionTrainConfig.from_dict(dict(config))
    config.validate()
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = train.pairs()
    if len(pairs) == 0:
        raise XmrError(f"split '{train.name}': no relevant item with an embedding to learn from")
    items = train.items
    both = ~(items.no_image | items.no_caption)
    if not both.any():
        raise XmrError(
            f"split '{train.name}': no item has both an image and a caption; there is nothing "
            "to fuse"
        )
    dim = items.image.shape[-1]  # (N, D), or (N, K, D) for a multi-vector encoder (BLIP-2)
    if train.query_emb.shape[1] != dim:
        raise XmrError(f"queries are {train.query_emb.shape[1]}-d, items {dim}-d")

    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    start = GatedFusion.initial(dim, weight=config.init_weight, content=config.content)
    gate = Gate(start, device)
    decay = [gate.weight] if gate.weight is not None else []
    optimizer = torch.optim.AdamW(
        [
            {"params": [gate.bias], "weight_decay": 0.0},
            {"params": decay, "weight_decay": config.weight_decay},
        ],
        lr=config.lr,
    )
    tensors = ItemTensors.of(train, device)
    relevant = relevant_rows(train)
    n_items = len(items.ids)
    steps_per_epoch = -(-len(pairs) // config.batch_size)

    if isinstance(valid, Evaluator):
        judge, selected_on = valid, "valid"
    elif valid is not None:
        judge, selected_on = FusionEvaluator(valid, config.metric), "valid"
    else:
        judge, selected_on = FusionEvaluator(train, config.metric), "train"
    metric = judge.primary_metric
    # Epoch 0: the weighted sum training starts from (the gate at init is exactly it).
    metrics = judge(WeightedFusion(config.init_weight))
    baseline = judge.primary(metrics)
    history: list[dict[str, Any]] = [{"epoch": 0, "step": 0, "loss": None, metric: baseline}]
    best, best_epoch, best_fusion = baseline, 0, start
    losses: list[float] = []
    say = log or (lambda _line: None)
    say(
        f"fusion epoch 0 (weighted w={config.init_weight:g}): {selected_on} {metric} {baseline:.4f}"
    )
    train_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(pairs))
        epoch_losses = []
        for s in range(0, len(order), config.batch_size):
            batch = pairs[order[s : s + config.batch_size]]
            cand = candidates(batch[:, 1], n_items, config.negatives, rng)
            positive = positive_mask(batch[:, 0], cand, relevant)
            epoch_losses.append(
                fusion_step(gate, optimizer, tensors, batch, cand, positive, config.temperature)
            )
        fusion = gate.export()
        metrics = judge(fusion)
        value = judge.primary(metrics)
        losses.append(float(np.mean(epoch_losses)))
        history.append(
            {"epoch": epoch, "step": epoch * steps_per_epoch, "loss": losses[-1], metric: value}
        )
        if judge.is_better(value, best):
            best, best_epoch, best_fusion = value, epoch, fusion
        say(
            f"fusion epoch {epoch}: loss {losses[-1]:.4f}, {selected_on} "
            f"{metric} {value:.4f}, image share "
            f"{fusion.image_share(items.image, items.caption):.3f} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    seconds = time.perf_counter() - train_start
    best_fusion.model = dict(model) if model else None
    best_fusion.training = {
        "config": config.to_dict(),
        "train_split": train.name,
        "selected_on": selected_on,
        "best_epoch": best_epoch,
        "metric": metric,
        "weighted_baseline": baseline,
        "best": best,
        "history": history,
    }
    total = config.epochs * steps_per_epoch
    return TrainResult(
        trainer="fusion",
        global_step=total,
        total_steps=total,
        best_metric=metric,
        best_value=best,
        best_step=best_epoch * steps_per_epoch,
        baseline=baseline,
        metrics=metrics,
        history=history,
        losses=losses,
        last_loss=losses[-1],
        seconds=seconds,
        samples_per_s=config.epochs * len(pairs) / max(seconds, 1e-9),
        model=best_fusion,
        details={"best_epoch": best_epoch, "selected_on": selected_on},
    )


def train_fusion_on_dataset(
    model: str | Any,
    data: str | Path,
    out: str | Path,
    *,
    format: str | None = None,
    images: str | Path | None = None,
    split: str | None = None,
    valid_split: str | None = "auto",
    config: FusionTrainConfig | Mapping[str, Any] | None = None,
    device: str | None = None,
    precision: str = "fp32",
    log: Callable[[str], None] | None = None,
    skip_bad: bool = False,
) -> TrainResult:
    """``xmr train --fused``: learn a fusion of a frozen bi-encoder's item images and captions
    on a data set, and save it to ``out`` (``fusion.json`` + ``fusion.safetensors``).

    Args:
        model: the bi-encoder (a spec or a loaded encoder), frozen.
        data, format, images: the data set (format None: detected; images: an image folder
            for formats that keep images apart).
        out: the output directory.
        split: the training split (None: "train" when the data set has one, else its only one).
        valid_split: the split that picks the best epoch (``resolve_valid_split``: "auto" is
            "valid" when the data set has it; None selects on the training split).
        config: the training options (a ``FusionTrainConfig`` or a dict of its fields).
        device: where the encoder runs (None/"auto": CUDA when available); when given, the
            fusion trains there too (else on ``config.device``).
        precision: the encoder's precision.
        log: called with progress lines.
        skip_bad: skip malformed records of the data set (counted and reported through ``log``)
            instead of stopping at the first.

    Returns:
        ``train_fusion``'s ``TrainResult`` with ``out_dir`` and ``summary`` filled in.
    """
    if config is None:
        config = FusionTrainConfig()
    elif isinstance(config, Mapping):
        config = FusionTrainConfig.from_dict(dict(config))
    if device not in (None, "auto"):
        config = config.replace(device=device)
    check_output_dir(out)  # before the encoding and training, not after them
    dataset = load_dataset(data, format, images=images, skip_bad=skip_bad)
    if log and dataset.skipped_warning():
        log(f"warning: {dataset.skipped_warning(data)}")
    train_name = split or ("train" if "train" in dataset.splits else None)
    train_split = dataset.split(train_name, need_relevance=True)
    valid_name = resolve_valid_split(dataset, valid_split, train_split.name, data)
    valid_split_ = dataset.split(valid_name, need_relevance=True) if valid_name else None
    encoder = model
    if isinstance(encoder, str):
        encoder = create_encoder(
            model, device=None if device in (None, "auto") else device, precision=precision
        )
    spec = getattr(encoder, "spec", model)
    if log:
        log(f"encoding split '{train_split.name}' with {spec} (frozen)")
    train = FusionData.encode(encoder, train_split)
    valid = FusionData.encode(encoder, valid_split_) if valid_split_ is not None else None
    result = train_fusion(train, config=config, valid=valid, model=encoder.manifest(), log=log)
    fusion = result.model
    fusion.training.update(
        data={"path": str(data), "format": dataset.format},
        valid_split=valid_split_.name if valid_split_ is not None else None,
    )
    result.out_dir = Path(fusion.save(out))
    judge = valid if valid is not None else train
    metric = result.best_metric
    result.summary = {
        "out": str(result.out_dir),
        "kind": fusion.kind,
        "content": fusion.content,
        "epochs": config.epochs,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "best_epoch": result.details["best_epoch"],
        "selected_on": result.details["selected_on"],
        f"weighted/{metric}": result.baseline,
        f"gated/{metric}": result.best_value,
        "image_share": fusion.image_share(judge.items.image, judge.items.caption),
    }
    return result
