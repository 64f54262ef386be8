"""Contrastive fine-tuning of two-tower (CLIP-family) models: ``xmr.train.train(TrainConfig)``.

Behind the ``[train]`` extra: importing ``xmr.train`` is light; torch loads with the loop.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "xmr.train.config",
    "load_config": "xmr.train.config",
    "parse_overrides": "xmr.train.config",
    "train": "xmr.train.loop",
    "TrainResult": "xmr.train.loop",
    "export_model": "xmr.train.loop",
    "ClipLoss": "xmr.train.losses",
    "SigLipLoss": "xmr.train.losses",
    "create_loss": "xmr.train.losses",
    "register_loss": "xmr.train.losses",
    "positive_mask": "xmr.train.losses",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xmr.train' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
