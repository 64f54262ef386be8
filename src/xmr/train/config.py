"""The typed training configuration: defaults < YAML file < ``key=value`` overrides.

The resolved configuration is written as ``train_config.json`` in the output directory (not
``config.json``: that name belongs to the saved transformers model beside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from xmr.errors import XmrError
from xmr.train.config_base import TrainerConfig, load_trainer_config, parse_overrides
from xmr.train.validate import check_best_metric

CONFIG_FILE = "train_config.json"

__all__ = ["CONFIG_FILE", "TrainConfig", "load_config", "parse_overrides", "trajectory_differences"]

# Fields that change the training trajectory: a resumed run must agree with its checkpoint on
# all of them (the others, such as workers, logging or the progress bar, may change).
TRAJECTORY_FIELDS = (
    "model",
    "split",
    "epochs",
    "batch_size",
    "accum_steps",
    "accum_mode",
    "lr",
    "image_lr",
    "text_lr",
    "weight_decay",
    "betas",
    "eps",
    "warmup_steps",
    "warmup_ratio",
    "min_lr_ratio",
    "grad_clip",
    "loss",
    "multi_positive",
    "label_smoothing",
    "max_logit_scale",
    "init_logit_scale",
    "init_logit_bias",
    "freeze_image",
    "freeze_text",
    "freeze_image_layers",
    "freeze_text_layers",
    "precision",
    "seed",
    "max_train_items",
    "text_source",
    "draft",
    "image_backend",
    "multimodal_items",
)


@dataclass
class TrainConfig(TrainerConfig):
    """Everything contrastive training (``xmr train``) needs. Field names are the CLI's ``key=value`` overrides.

    Data:
        model: encoder spec to start from (``hf:DIR``, a hub id, ``open_clip:ARCH@TAG``, a dir).
        data: data set path; ``format`` its format (None: detected); ``images`` an image folder
            for formats that keep images apart.
        split / valid_split: training and validation split names; ``valid_split=None`` (or "")
            trains without validation. A missing validation split is skipped with a warning.
        max_train_items: use only the first N training items (quick experiments).
        skip_bad: skip malformed records of the data set instead of stopping at the first; the
            count and the first errors are recorded in ``train_config.json`` (``extra.derived``).
        multimodal_items: train on the model's multimodal items (BLIP-2: the Q-Former over the
            image and one of the item's captions, sampled per step, as seed 001 trains) instead
            of its images; validation then ranks multimodal items (first caption) too.
        text_source: an item's training texts: "auto" (its pairs, else captions), "pairs",
            "captions" (seed 001: one of an image's captions per step) or "both".
    Optimisation:
        epochs, batch_size (per process and micro-batch; the contrastive batch is
        ``batch_size * world_size * accum_steps`` with ``accum_mode="features"``).
        accum_steps / accum_mode: gradient accumulation. "features" (default) caches the
            features of all micro-batches and recomputes each with grad (open_clip's scheme), so
            the contrastive batch really is the accumulated batch and the gradient equals one
            big batch; "gradients" sums the gradients of independent micro-batch losses
            (cheaper, but each micro-batch is its own contrastive batch).
        lr (base, also for the temperature), image_lr / text_lr (per-tower overrides),
        weight_decay (AdamW; not applied to norms, biases, logit scale/bias), betas, eps,
        warmup_steps (or warmup_ratio of all optimiser steps when None), min_lr_ratio (cosine
        floor), grad_clip (max global norm; None/0 disables).
    Loss:
        loss: "clip" (symmetric InfoNCE) or "siglip" (sigmoid). multi_positive: "soft", "mask" or
        "none" (see ``xmr.train.losses``). label_smoothing: the CLIP loss's label smoothing in
        [0, 1) (LAVIS trains BLIP-2's ITC with 0.1; how it is spread over several positives:
        ``xmr.train.losses``); 0, the default, is the unsmoothed loss; SigLIP refuses it.
        max_logit_scale: the temperature's cap (CLIP: 100).
        init_logit_scale / init_logit_bias: override the model's values (log-space scale);
        SigLIP on a model without a bias starts the bias at -10.
    Model surgery:
        freeze_image / freeze_text: freeze a whole tower (``freeze_image`` unset: the model's
            default, frozen for BLIP-2 whose ViT is frozen in its published training, trained
            otherwise; ``freeze_image=false`` trains it); freeze_image_layers /
        freeze_text_layers: freeze the embeddings and the lowest N transformer blocks.
        grad_checkpointing: recompute activations in backward (less memory, ~30% slower).
    Runtime:
        precision: fp32, fp16 (CUDA, with a GradScaler) or bf16 (autocast). device: auto, cpu,
        cuda. workers: DataLoader processes decoding images. cache_images: keep preprocessed
        training images in memory ("auto": when they fit in ``cache_max_mb``). draft: decode
        JPEGs in draft mode (``--draft``: faster on big photos, not the reference processor's
        pixels) for training and validation alike; a resumed run must use its checkpoint's.
        image_backend: "pil" or "torchvision" (``--image-backend``): whose pixels the
        preprocessing reproduces (see :func:`xmr.models.create_encoder`); likewise fixed on resume.
    Validation, checkpoints, logs:
        eval_every: validate every N optimiser steps (0: at the end of each epoch).
        best_metric: validation metric that picks the best model (None: ``t2i/mAP@10`` for
        track2 data, ``t2i/MeanRecall`` otherwise). save_every: also checkpoint every N steps
        (0: at each validation / epoch end). resume: continue from ``out/checkpoints/last.pt``
        when present. log_every: steps between log lines. progress: tqdm bar.
    """

    KIND: ClassVar[str] = "training"
    CONFIG_FILE: ClassVar[str] = CONFIG_FILE

    model: str = ""
    data: str = ""
    out: str = ""
    format: str | None = None
    images: str | None = None
    split: str = "train"
    valid_split: str | None = "valid"
    max_train_items: int | None = None
    text_source: str = "auto"
    skip_bad: bool = False

    epochs: int = 10
    batch_size: int = 64
    accum_steps: int = 1
    accum_mode: str = "features"
    lr: float = 5e-4
    image_lr: float | None = None
    text_lr: float | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int | None = None
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0

    loss: str = "clip"
    multi_positive: str = "soft"
    label_smoothing: float = 0.0
    max_logit_scale: float = 100.0
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None

    freeze_image: bool | None = None
    multimodal_items: bool = False
    freeze_text: bool = False
    freeze_image_layers: int = 0
    freeze_text_layers: int = 0
    grad_checkpointing: bool = False

    precision: str = "fp32"
    device: str = "auto"
    workers: int = 2
    cache_images: str = "auto"
    cache_max_mb: int = 2048
    draft: bool = False
    image_backend: str = "pil"
    seed: int = 0

    eval_every: int = 0
    eval_batch_size: int = 256
    best_metric: str | None = None
    save_every: int = 0
    resume: bool = True
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True

    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Check values; raise XmrError naming the bad field."""
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise XmrError(f"training config: '{name}' is required")
        positive = ("epochs", "batch_size", "accum_steps", "eval_batch_size", "log_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise XmrError(f"training config: '{name}' must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "eps", "warmup_ratio", "min_lr_ratio"):
            if float(getattr(self, name)) < 0:
                raise XmrError(f"training config: '{name}' must be >= 0")
        non_negative = (
            "workers",
            "cache_max_mb",
            "eval_every",
            "save_every",
            "freeze_image_layers",
            "freeze_text_layers",
            "warmup_steps",
        )
        for name in non_negative:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise XmrError(f"training config: '{name}' must be >= 0, got {value}")
        if self.max_train_items is not None and self.max_train_items < 1:
            raise XmrError(
                f"training config: 'max_train_items' must be >= 1 (or null: all), "
                f"got {self.max_train_items}"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise XmrError("training config: 'grad_clip' must be > 0 (or null: no clipping)")
        if self.best_metric is not None:
            check_best_metric(self.best_metric)
        if isinstance(self.cache_images, bool):
            self.cache_images = "yes" if self.cache_images else "no"
        choices = {
            "accum_mode": ("features", "gradients"),
            "loss": tuple(_loss_names()),
            "multi_positive": ("soft", "mask", "none"),
            "precision": ("fp32", "fp16", "bf16"),
            "cache_images": ("auto", "yes", "no"),
            "text_source": ("auto", "pairs", "captions", "both"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise XmrError(
                    f"training config: '{name}' must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        if self.freeze_image and self.freeze_text:
            raise XmrError("training config: freezing both towers leaves nothing to train")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise XmrError(
                f"training config: 'label_smoothing' must be in [0, 1), got {self.label_smoothing}"
            )
        if self.label_smoothing and self.loss == "siglip":
            raise XmrError(
                "training config: 'label_smoothing' smooths the softmax cross-entropy of "
                "loss=clip; the sigmoid loss of loss=siglip has none"
            )
        if self.max_logit_scale <= 0:
            raise XmrError("training config: 'max_logit_scale' must be > 0")
        if len(tuple(self.betas)) != 2:
            raise XmrError("training config: 'betas' must be two numbers")
        self.betas = tuple(float(b) for b in self.betas)
        if self.valid_split == "":
            self.valid_split = None
        return self


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    **fields_: Any,
) -> TrainConfig:
    """Defaults, then the YAML (or JSON) file at ``path``, then ``fields_`` (None: not given),
    then ``overrides``; validated."""
    return load_trainer_config(TrainConfig, path, overrides, **fields_)


def trajectory_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Names (with both values) of the trajectory fields on which ``a`` and ``b`` differ."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} != {db[k]!r}" for k in TRAJECTORY_FIELDS if da[k] != db[k]]


def _loss_names() -> list[str]:
    """The registered losses (clip, siglip and any registered with ``register_loss``)."""
    from xmr.train.losses import LOSSES

    return LOSSES.names()
