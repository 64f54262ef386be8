"""The trainable module around an encoder: both towers, the temperature, optional SigLIP bias;
freezing, gradient checkpointing and the AdamW parameter groups."""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xmr.train.config import TrainConfig
from xmr.train.losses import SIGLIP_INIT_LOGIT_BIAS

log = logging.getLogger(__name__)

TOWERS = ("image", "text", "other")
# Transformer block index inside a tower: transformers (layers.N / layer.N for BERT) and
# open_clip (resblocks.N).
_BLOCK = re.compile(r"\.(?:layers|layer|resblocks)\.(\d+)\.")
# Parameters below the first block: patch/token/position embeddings, CLS token, pre-norms.
_EMBEDDING = re.compile(r"embed|conv1|class_embedding|pre_layrnorm|ln_pre|patch")


def tower_of(name: str) -> str:
    """ "image", "text" or "other" (temperature, bias) for a parameter name of a CLIP-family
    model (transformers: ``vision_model.*``, ``visual_projection``, ``text_model.*``; open_clip:
    ``visual.*`` and the text parts at top level)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("logit_scale", "logit_bias") or name in ("extra_logit_bias",):
        return "other"
    if name.startswith(("visual", "vision")) or ".visual" in name or "vision_model" in name:
        return "image"
    return "text"


def tower_in(module: TwoTower, name: str) -> str:
    """The tower of parameter ``name`` of ``module.model``: the encoder's own split when it has
    one (BLIP-2: the ViT is "image", the Q-Former and both projections "text"), else
    :func:`tower_of`."""
    own = getattr(module.encoder, "parameter_tower", None)
    return own(name) if callable(own) else tower_of(name)


def image_frozen(module: TwoTower, config: TrainConfig) -> bool:
    """``freeze_image``, or when unset (None) the encoder's default: frozen for BLIP-2 (its ViT
    is frozen in the published training and in seed 001), trained for the others."""
    if config.freeze_image is not None:
        return bool(config.freeze_image)
    return "image" in getattr(module.encoder, "frozen_by_default", ())


def no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Norm gains, biases and the logit scale/bias are not decayed (open_clip's rule)."""
    lowered = name.lower()
    return (
        param.ndim < 2
        or "norm" in lowered
        or ".ln" in lowered
        or lowered.startswith("ln")
        or "bias" in lowered
        or "logit_scale" in lowered
    )


class TwoTower(torch.nn.Module):
    """Wraps an ``Encoder`` so that one ``forward`` runs both towers (what DDP wraps).

    ``forward(pixels, tokens)`` returns L2-normalised float32 image and text features, the
    logit scale and the logit bias (None for CLIP models trained with the CLIP loss).
    """

    def __init__(self, encoder, config: TrainConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.model = encoder.model  # registered: its parameters are this module's
        self.extra_logit_bias: torch.nn.Parameter | None = None
        with torch.no_grad():
            if config.init_logit_scale is not None:
                encoder.logit_scale.fill_(float(config.init_logit_scale))
            native_bias = encoder.logit_bias
            if config.loss == "siglip":
                if native_bias is None:
                    init = config.init_logit_bias
                    init = SIGLIP_INIT_LOGIT_BIAS if init is None else float(init)
                    self.extra_logit_bias = torch.nn.Parameter(torch.tensor([init]))
                elif config.init_logit_bias is not None:
                    native_bias.fill_(float(config.init_logit_bias))
            elif native_bias is not None:
                # The CLIP loss has no bias: a SigLIP model's bias would get no gradient (and
                # DDP insists every trainable parameter gets one).
                native_bias.requires_grad_(False)

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.encoder.logit_scale

    @property
    def logit_bias(self) -> torch.nn.Parameter | None:
        if self.extra_logit_bias is not None:
            return self.extra_logit_bias
        bias = self.encoder.logit_bias
        return bias if bias is not None and bias.requires_grad else None

    def forward(self, pixels, tokens):
        if isinstance(pixels, dict) and "item_input_ids" in pixels:
            # Multimodal items (``multimodal_items``): image + one caption per row.
            caption = {k.removeprefix("item_"): v for k, v in pixels.items() if k != "pixel_values"}
            image = self.encoder.item_features(pixels["pixel_values"], caption)
            image = F.normalize(image.float(), dim=-1)
        else:
            image = F.normalize(self.encoder.image_features(pixels).float(), dim=-1)
        text = F.normalize(self.encoder.text_features(tokens).float(), dim=-1)
        return image, text, self.logit_scale, self.logit_bias

    def clamp_logit_scale(self, max_scale: float) -> None:
        """CLIP clamps the learned temperature so logits never exceed ``max_scale`` x cosine."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(max_scale))


def freeze(module: TwoTower, config: TrainConfig) -> dict[str, int]:
    """Apply ``freeze_image``/``freeze_text`` and ``freeze_*_layers``; returns frozen parameter
    counts per tower. Lower layers mean the embeddings plus blocks ``0..N-1``."""
    frozen = {"image": 0, "text": 0}
    whole = {"image": image_frozen(module, config), "text": config.freeze_text}
    layers = {"image": config.freeze_image_layers, "text": config.freeze_text_layers}
    for name, param in module.model.named_parameters():
        tower = tower_in(module, name)
        if tower == "other" or not param.requires_grad:
            continue
        if whole[tower]:
            stop = True
        elif layers[tower] > 0:
            block = _BLOCK.search(name)
            if block is not None:
                stop = int(block.group(1)) < layers[tower]
            else:
                stop = bool(_EMBEDDING.search(name))
        else:
            stop = False
        if stop:
            param.requires_grad_(False)
            frozen[tower] += param.numel()
    return frozen


def enable_grad_checkpointing(model: torch.nn.Module) -> bool:
    """Turn on activation checkpointing: transformers' (non-reentrant, which works with DDP and
    frozen inputs) or open_clip's. Returns whether the model supports it."""
    kwargs = {"use_reentrant": False}
    if getattr(model, "supports_gradient_checkpointing", False):
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            return True
        if hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            return True
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        return True
    warnings.warn(f"{type(model).__name__} does not support gradient checkpointing", stacklevel=2)
    return False


@dataclass
class GroupInfo:
    name: str
    tower: str
    decay: bool
    n_params: int


def param_groups(module: TwoTower, config: TrainConfig) -> tuple[list[dict], list[GroupInfo]]:
    """AdamW groups: (image, text, other) x (decay, no decay), trainable parameters only, each
    with its tower's learning rate."""
    lrs = {
        "image": config.image_lr if config.image_lr is not None else config.lr,
        "text": config.text_lr if config.text_lr is not None else config.lr,
        "other": config.lr,
    }
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    seen: set[int] = set()
    for name, param in module.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        short = name.removeprefix("model.")
        tower = tower_in(module, short) if name.startswith("model.") else tower_of(short)
        key = (tower, not no_weight_decay(short, param))
        buckets.setdefault(key, []).append(param)
    groups, infos = [], []
    for tower in TOWERS:
        for decay in (True, False):
            params = buckets.get((tower, decay))
            if not params:
                continue
            name = f"{tower}{'' if decay else '_no_decay'}"
            groups.append(
                {
                    "params": params,
                    "lr": lrs[tower],
                    "weight_decay": config.weight_decay if decay else 0.0,
                    "name": name,
                }
            )
            infos.append(GroupInfo(name, tower, decay, sum(p.numel() for p in params)))
    return groups, infos


def cosine_schedule(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier: linear warmup from ~0 to 1, then a cosine to ``min_ratio``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
