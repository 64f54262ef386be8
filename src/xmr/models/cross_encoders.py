"""Cross-encoders: models that read one image and one text together and say whether they match.

A bi-encoder (CLIP) embeds each side alone, which is what makes search over millions of items
fast; a cross-encoder (BLIP / BLIP-2 image-text matching, the ITM head) attends across both and
is more accurate but costs one forward pass per pair. xmr uses them for pair scores
(``xmr similarity``) and to rerank the top-K of a first-stage search (:mod:`xmr.rerank`).

Backends live in their own registry, apart from the bi-encoders::

    create_cross_encoder("blip:Salesforce/blip-itm-base-coco")   # backend:hub-id
    create_cross_encoder("blip2-itm-vit-g")                       # a known short name
    create_cross_encoder("hf:/models/my-blip")                    # a local save_pretrained dir
    create_cross_encoder("/models/my-blip")                       # same; backend from config.json
    create_cross_encoder("mplug:/models/mplug_image-text-retrieval_flickr30k_large_en")
    create_cross_encoder("/models/mplug_...")                     # ModelScope layout: mplug

Every backend implements :meth:`CrossEncoder.logits` (two-class ITM logits, column 1 = "match"
as in transformers and LAVIS); :meth:`CrossEncoder.score` turns them into match probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.errors import XmrError
from xmr.models.registry import looks_local
from xmr.registry import Registry

if TYPE_CHECKING:
    from PIL import Image as PILImage

CROSS_ENCODERS: Registry[Callable[..., CrossEncoder]] = Registry("cross-encoder backend")


def register_cross_encoder(name: str):
    """Decorator: register a factory ``f(source: str, **kwargs) -> CrossEncoder`` under ``name``."""
    return CROSS_ENCODERS.register(name)


# Short names for the published ITM checkpoints (hub ids). Loading them needs the hub or its cache.
KNOWN_CROSS_ENCODERS: dict[str, str] = {
    "blip-itm-base-coco": "blip:Salesforce/blip-itm-base-coco",
    "blip-itm-large-coco": "blip:Salesforce/blip-itm-large-coco",
    "blip-itm-base-flickr": "blip:Salesforce/blip-itm-base-flickr",
    "blip-itm-large-flickr": "blip:Salesforce/blip-itm-large-flickr",
    "blip2-itm-vit-g": "blip2:Salesforce/blip2-itm-vit-g",
}

# config.json "model_type" -> backend, for local directories and "hf:" specs.
MODEL_TYPE_BACKENDS = {"blip": "blip", "blip-2": "blip2", "blip_2": "blip2"}


class CrossEncoder:
    """Scores aligned (image, text) pairs. Subclasses implement :meth:`logits`.

    Attributes:
        spec: the string it was created from (recorded beside results, so they say what made them).
        device: where it runs ("cpu", "cuda", "cuda:1", ...).
    """

    spec: str = ""
    device: str = "cpu"

    def logits(
        self, images: Sequence[PILImage.Image], texts: Sequence[str], batch_size: int = 32
    ) -> np.ndarray:
        """Two-class ITM logits for aligned pairs, shape ``(n, 2)``; column 1 is "match"."""
        raise NotImplementedError

    def score(
        self, images: Sequence[PILImage.Image], texts: Sequence[str], batch_size: int = 32
    ) -> np.ndarray:
        """Match probability in [0, 1] for each aligned pair ``(images[i], texts[i])``."""
        return match_probability(self.logits(images, texts, batch_size=batch_size))

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "backend": type(self).__name__, "device": self.device}


def match_probability(logits: np.ndarray) -> np.ndarray:
    """softmax(logits)[:, 1], computed stably, as float32."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.size == 0:
        return np.zeros(0, dtype=np.float32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)


def match_probabilities(logits: np.ndarray) -> np.ndarray:
    """softmax(logits) over both columns, (n, 2) float32: ``[p(no match), p(match)]``, the
    ``scores`` pair ModelScope's image-text retrieval pipeline returns."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, 2)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def is_cross_encoder_spec(spec: str) -> bool:
    """True when ``spec`` can only name a cross-encoder: a known short name, a registered
    cross-encoder backend prefix (``blip:``, ``blip2:``, ``mplug:``), or a local directory that
    is one (ModelScope's mPLUG layout, a BLIP config.json). ``hf:`` specs and hub ids are not
    claimed (they may be bi-encoders)."""
    _load_backends()
    spec = spec.strip()
    if spec in KNOWN_CROSS_ENCODERS:
        return True
    backend, sep, _ = spec.partition(":")
    if sep and backend in CROSS_ENCODERS:
        return True
    path = Path(spec).expanduser()
    try:
        return path.is_dir() and local_backend(path) is not None
    except XmrError:
        return False


def check_pairs(images: Sequence[Any], texts: Sequence[str]) -> None:
    if len(images) != len(texts):
        raise XmrError(
            f"cross-encoder needs aligned pairs: got {len(images)} images and {len(texts)} texts"
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise XmrError(f"cross-encoder text {i} is {type(t).__name__}, not a string")


def list_cross_encoders() -> list[str]:
    """Registered backends and the known short names."""
    _load_backends()
    return CROSS_ENCODERS.names() + sorted(KNOWN_CROSS_ENCODERS)


def _load_backends() -> None:
    # The backends register on import; transformers itself is imported only when one is built.
    import xmr.models.blip_itm  # noqa: F401
    import xmr.models.mplug.backend  # noqa: F401
    import xmr.models.text_cross_encoder  # noqa: F401


def local_backend(path: Path) -> str | None:
    """The backend for a local model directory: ``mplug`` for ModelScope's mPLUG layout
    (configuration.json with model type mplug), else from config.json's ``model_type``."""
    from xmr.models.mplug.layout import is_mplug_dir

    if is_mplug_dir(path):
        return "mplug"
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise XmrError(f"{config}: unreadable model config ({exc})") from None
    return MODEL_TYPE_BACKENDS.get(str(model_type))


def parse_cross_encoder_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(backend, source)``; source is a hub id or a local directory.

    Accepted: a known short name, ``backend:source``, ``hf:DIR-or-hub-id``, a bare local
    directory (backend from its config.json), or a bare hub id whose name says blip/blip2.
    """
    _load_backends()
    spec = spec.strip()
    if spec in KNOWN_CROSS_ENCODERS:
        spec = KNOWN_CROSS_ENCODERS[spec]
    backend, sep, source = spec.partition(":")
    if sep and backend in CROSS_ENCODERS:
        return backend, source
    if sep and backend == "hf":
        return _backend_for(source, spec), source
    return _backend_for(spec, spec), spec


def _backend_for(source: str, spec: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        backend = local_backend(path)
        if backend is None:
            raise XmrError(
                f"{path}: not a cross-encoder directory (config.json model_type must be one of "
                f"{', '.join(sorted(MODEL_TYPE_BACKENDS))}, or configuration.json + config.yaml "
                "of a ModelScope mPLUG model)"
            )
        return backend
    if looks_local(source) and not path.exists():
        raise XmrError(f"unknown cross-encoder '{spec}': {source}: no such directory")
    if path.exists() or source.count("/") != 1:
        raise XmrError(
            f"unknown cross-encoder '{spec}': not a model directory, a known name "
            f"({', '.join(sorted(KNOWN_CROSS_ENCODERS))}) or backend:hub-id "
            f"(backends: {', '.join(CROSS_ENCODERS.names())})"
        )
    name = source.split("/")[-1].lower()
    if "blip2" in name or "blip-2" in name:
        return "blip2"
    if "blip" in name:
        return "blip"
    raise XmrError(
        f"cannot tell the backend of hub id '{source}'; write it as backend:{source} "
        f"(backends: {', '.join(CROSS_ENCODERS.names())})"
    )


def create_cross_encoder(
    spec: str | CrossEncoder,
    *,
    device: str | None = None,
    precision: str = "fp32",
    **kwargs: Any,
) -> CrossEncoder:
    """Build a cross-encoder from a spec (see the module docstring); an instance passes through.

    Args:
        spec: short name, ``backend:source``, ``hf:DIR``, a local directory or a hub id.
        device: "cpu", "cuda", ...; default: CUDA when available.
        precision: "fp32", "fp16" or "bf16" (half precision only on CUDA).
    """
    if isinstance(spec, CrossEncoder):
        return spec
    backend, source = parse_cross_encoder_spec(spec)
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser().resolve())
    encoder = CROSS_ENCODERS.get(backend)(source, device=device, precision=precision, **kwargs)
    # The spec that loads this model again, from anywhere.
    encoder.spec = f"{backend}:{source}"
    return encoder
