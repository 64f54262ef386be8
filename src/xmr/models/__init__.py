"""Encoders: one registry of backends, models named by spec strings (see ``registry``).

``import xmr.models`` stays light; torch and transformers load when an encoder is created.
"""

from __future__ import annotations

import importlib
from typing import Any

from xmr.models.registry import (
    RUNTIMES,
    create_encoder,
    enable_text_runtime,
    list_backends,
    parse_spec,
    register_backend,
    with_image_backend,
)

_LAZY = {
    "Encoder": "xmr.models.base",
    "HFEncoder": "xmr.models.hf_clip",
    "ImagePreprocess": "xmr.models.preprocess",
    "create_tiny_clip": "xmr.models.tiny",
    "create_tiny_chinese_clip": "xmr.models.tiny",
    "create_tiny_siglip": "xmr.models.tiny",
}

__all__ = [
    "RUNTIMES",
    "create_encoder",
    "enable_text_runtime",
    "list_backends",
    "parse_spec",
    "register_backend",
    "with_image_backend",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xmr.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
