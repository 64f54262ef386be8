"""One registry of encoder backends; a model is named by a spec string.

Spec forms:
    ``hf:<hub id or local dir>``           transformers CLIP / ChineseCLIP / SigLIP / SigLIP2, and
                                           BLIP / BLIP-2 retrieval models (ITC bi-encoders)
    ``open_clip:<arch>[@<tag or ckpt>]``   open_clip (optional extra ``xmr[open_clip]``)
    ``st:<hub id or local dir>``           a sentence-transformers text bi-encoder (``xmr[text]``)
    ``<local dir>``                         resolved by what is in it
    ``<backend>:<target>``                 any backend added with ``register_backend``
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xmr.errors import XmrError
from xmr.registry import Registry

if TYPE_CHECKING:
    from xmr.models.base import Encoder

BackendFactory = Callable[..., "Encoder"]
BACKENDS: Registry[BackendFactory] = Registry("encoder backend")

# How an encoder's text tower runs (see create_encoder's ``runtime``).
RUNTIMES = ("eager", "onnx")

# config.json model_type values the hf backend loads.
HF_MODEL_TYPES = ("clip", "chinese_clip", "siglip", "siglip2", "blip", "blip-2")


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: register ``factory(target, *, device, precision, **kwargs) -> Encoder`` for
    specs ``name:<target>``."""
    return BACKENDS.register(name)


def list_backends() -> list[str]:
    return BACKENDS.names()


def looks_local(target: str) -> bool:
    """Whether a model ``target`` that is not an existing directory is still meant as a local
    path, so that its absence is "no such directory" and not a trip to the hub: absolute, or
    ``./``, ``../``, ``~`` relative; more than one ``/`` (a hub id is ``name`` or ``org/name``);
    or ``dir/name`` where ``dir`` exists here (``hf:qs/nosuch`` beside a ``qs/`` directory).
    A bare ``org/name`` with no ``org/`` here stays a hub id."""
    text = os.fspath(target)
    if text.startswith(("/", ".", "~")) or os.path.isabs(text):
        return True
    parts = text.replace(os.sep, "/").split("/")
    if len(parts) > 2:
        return True
    return len(parts) == 2 and os.path.isdir(os.path.expanduser(parts[0]))


def parse_spec(spec: str | os.PathLike) -> tuple[str, str]:
    """Split a spec into (backend, target); a bare local directory is resolved by its contents."""
    text = os.fspath(spec)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in BACKENDS:
        if not rest:
            raise XmrError(f"model spec '{text}' names no model after '{prefix}:'")
        return prefix, rest
    if os.path.isdir(text):
        return detect_backend(text), text
    if os.path.exists(text):
        raise XmrError(
            f"model spec '{text}' is a file; name a model directory, or a checkpoint as "
            "open_clip:<arch>@<checkpoint>"
        )
    raise XmrError(
        f"unknown model spec '{text}': use hf:<hub id or local dir>, "
        f"open_clip:<arch>[@<pretrained tag or checkpoint>], or a local model directory "
        f"(backends: {', '.join(list_backends())})"
    )


def detect_backend(directory: str | os.PathLike) -> str:
    """Which backend loads a local directory, from the files in it."""
    path = Path(directory)
    if (path / "modules.json").is_file():  # sentence-transformers' save format
        return "st"
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise XmrError(f"{config}: not a readable model config ({exc})") from None
        if model_type in HF_MODEL_TYPES:
            return "hf"
        raise XmrError(
            f"{config}: model_type '{model_type}' is not a CLIP-family model xmr can load "
            f"(supported: {', '.join(HF_MODEL_TYPES)})"
        )
    if (path / "open_clip_config.json").is_file() or any(path.glob("*.pt")):
        return "open_clip"
    raise XmrError(
        f"{path}: cannot tell what model this directory holds (expected config.json of a "
        "transformers CLIP/ChineseCLIP/SigLIP model, or open_clip_config.json / a *.pt checkpoint)"
    )


def create_encoder(
    spec: str | os.PathLike,
    device: str | None = None,
    precision: str = "fp32",
    *,
    draft: bool = False,
    runtime: str = "eager",
    image_backend: str | None = None,
    **kwargs: Any,
) -> Encoder:
    """Load the encoder named by ``spec`` onto ``device`` (default: cuda when available).

    Args:
        spec: see the module docstring.
        device: "cpu", "cuda", "cuda:1", ... or None for automatic.
        precision: "fp32", "fp16" or "bf16" (autocast during encoding).
        draft: decode JPEGs in draft mode (reduced scale) wherever this encoder's preprocessing
            decodes images: faster on big photos, not the reference processor's pixels; recorded
            in its manifest (``preprocess.draft``). Off by default.
        runtime: "eager" (PyTorch) or "onnx": text queries (``encode_texts``) run on ONNX
            Runtime, from an export of the text tower cached by the weights' fingerprint
            (:mod:`xmr.models.onnx_text`; hf: models on the CPU in fp32; needs ``xmr[onnx]``).
        image_backend: which transformers image-processor backend's pixels the preprocessing
            reproduces: "pil" or "torchvision" (see :class:`~xmr.models.preprocess.
            ImagePreprocess`); None keeps the model's (pil). Recorded in its manifest.
        **kwargs: backend options (e.g. ``context_length`` to override the text length).
    """
    check_runtime(runtime)
    backend, target = parse_spec(spec)
    factory = BACKENDS.get(backend)
    encoder = factory(target, device=device, precision=precision, **kwargs)
    if draft:
        from dataclasses import replace

        encoder.preprocess = replace(encoder.preprocess, draft=True)
    if image_backend is not None:
        encoder = with_image_backend(encoder, image_backend)
    if runtime != "eager":
        enable_text_runtime(encoder, runtime)
    return encoder


def with_image_backend(encoder: Encoder, backend: str) -> Encoder:
    """``encoder`` with its preprocessing switched to ``backend`` (in place; a model without
    image preprocessing is returned as it is). An impossible switch is an XmrError."""
    from dataclasses import replace

    preprocess = getattr(encoder, "preprocess", None)
    if preprocess is None or getattr(preprocess, "backend", "pil") == backend:
        return encoder
    try:
        encoder.preprocess = replace(preprocess, backend=backend)
    except ValueError as exc:
        raise XmrError(f"image_backend={backend!r}: {exc}") from None
    return encoder


def check_runtime(runtime: str) -> str:
    """``runtime`` when it is one of :data:`RUNTIMES`, else an XmrError listing them."""
    if runtime not in RUNTIMES:
        raise XmrError(f"unknown runtime '{runtime}' (choose from {', '.join(RUNTIMES)})")
    return runtime


def enable_text_runtime(encoder: Encoder, runtime: str) -> Encoder:
    """Switch a loaded encoder's text queries to ``runtime`` ("onnx": the cached export of its
    text tower, made now when there is none; "eager": back to PyTorch)."""
    if check_runtime(runtime) == "eager":
        encoder.text_runtime = None
        return encoder
    from xmr.models.onnx_text import enable_onnx_text

    enable_onnx_text(encoder)
    return encoder


@register_backend("hf")
def _hf_backend(target: str, **kwargs: Any) -> Encoder:
    from xmr.models import blip_encoders  # noqa: F401 - registers the BLIP families
    from xmr.models.hf_clip import HFEncoder

    return HFEncoder.load(target, **kwargs)


@register_backend("open_clip")
def _open_clip_backend(target: str, **kwargs: Any) -> Encoder:
    from xmr.models.open_clip_backend import OpenClipEncoder

    return OpenClipEncoder.load(target, **kwargs)


@register_backend("st")
def _st_backend(target: str, **kwargs: Any) -> Encoder:
    from xmr.models.st_models import SentenceTransformerEncoder

    return SentenceTransformerEncoder.load(target, **kwargs)
