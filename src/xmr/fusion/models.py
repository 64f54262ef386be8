"""How an item's image and caption embeddings become one vector: the fusion registry.

Two kinds are built in (``list_fusions()``):

* ``weighted`` (the default): ``normalize(w * e_img + (1 - w) * e_cap)``, one fixed ``w``.
* ``gated`` (learned by ``xmr train --fused``): a gate ``g`` in ``(0, 1)^d`` chosen per
  dimension, and, with ``content=True``, per item from its own two embeddings::

      g = sigmoid(W @ [e_img; e_cap] + b)      # W: (d, 2d), b: (d,); content=False: W = 0
      e_fused = normalize(g * e_img + (1 - g) * e_cap)

  With ``W = 0`` and ``b = logit(w)`` it is exactly the weighted sum with weight ``w``, which is
  where training starts.

For both, an item lacking one side (a NaN row) is fused from the other side alone. A fusion is
loaded by :func:`load_fusion` from a weight (``0.3``) or a directory written by
:meth:`Fusion.save`::

    OUT/fusion.json          {"format": "xmr-fusion", "version": 1, "kind": "gated",
                              "dim": d, "params": {"content": true}, "model": {spec, fingerprint,
                              embed_dim, ...}, "formula": "...", "training": {...}}
    OUT/fusion.safetensors   "gate.bias" (d,) float32 and, when content, "gate.weight" (d, 2d)

``model`` is the manifest of the bi-encoder whose embeddings the fusion was trained on; fusing
another model's embeddings with it is a :class:`~xmr.errors.ModelMismatchError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import ModelMismatchError, XmrError
from xmr.io.atomic import atomic_write, atomic_write_json
from xmr.registry import Registry
from xmr.vectors import l2_normalize

FUSION_FILE = "fusion.json"
FUSION_WEIGHTS = "fusion.safetensors"
FUSION_FORMAT = "xmr-fusion"
FUSION_VERSION = 1

FUSIONS: Registry[Callable[..., Fusion]] = Registry("fusion kind")


def register_fusion(name: str):
    """Decorator: register a Fusion class (``from_files(meta, tensors)``) under ``name``."""
    return FUSIONS.register(name)


def list_fusions() -> list[str]:
    return FUSIONS.names()


def per_vector_sides(image_emb: Any, caption_emb: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """``(image rows, caption rows, K)``: a multi-vector image side ``(n, K, d)`` with its
    ``(n, d)`` captions becomes ``n*K`` rows, each of the K vectors beside its item's caption
    (so a fused multi-vector item is its K vectors each fused with the caption, scored by
    max-sim); single-vector sides are returned as they are, with K=1."""
    image_emb = np.asarray(image_emb, dtype=np.float32)
    caption_emb = np.asarray(caption_emb, dtype=np.float32)
    if image_emb.ndim == 3 and caption_emb.ndim == 2 and len(image_emb) == len(caption_emb):
        k = image_emb.shape[1]
        caption_emb = np.repeat(caption_emb[:, None, :], k, axis=1).reshape(
            -1, caption_emb.shape[-1]
        )
        return image_emb.reshape(-1, image_emb.shape[-1]), caption_emb, k
    return image_emb, caption_emb, 1


def _sides(image_emb: Any, caption_emb: Any) -> tuple[np.ndarray, np.ndarray]:
    image_emb, caption_emb, _ = per_vector_sides(image_emb, caption_emb)
    if image_emb.shape != caption_emb.shape or image_emb.ndim != 2:
        raise XmrError(
            f"image {image_emb.shape} and caption {caption_emb.shape} embeddings must be two "
            "matrices of the same shape"
        )
    return image_emb, caption_emb


class Fusion:
    """Fuses image and caption embeddings of items row by row (see the module docstring).

    Attributes:
        kind: the registry name.
        model: the bi-encoder manifest the fusion belongs to (None: any model).
        source: the directory it was loaded from, if any.
    """

    kind = ""
    formula = ""

    def __init__(self) -> None:
        self.model: dict[str, Any] | None = None
        self.source: str | None = None
        self.training: dict[str, Any] = {}

    def gates(self, image_emb: np.ndarray, caption_emb: np.ndarray) -> np.ndarray:
        """The image share ``g`` of each row and dimension, shape ``(n, d)`` or broadcastable."""
        raise NotImplementedError

    def fuse(self, image_emb: Any, caption_emb: Any) -> np.ndarray:
        """``normalize(g * image + (1 - g) * caption)``; a NaN row on one side takes the other.
        A multi-vector image side ``(n, K, d)`` gives ``(n, K, d)``: each of an item's K
        vectors fused with its caption (:func:`per_vector_sides`)."""
        n = len(image_emb)
        _, _, k = per_vector_sides(image_emb, caption_emb)
        image_emb, caption_emb = _sides(image_emb, caption_emb)
        no_image = np.isnan(image_emb).any(axis=-1)
        no_caption = np.isnan(caption_emb).any(axis=-1)
        img, cap = np.nan_to_num(image_emb), np.nan_to_num(caption_emb)
        g = self.gates(img, cap)
        fused = l2_normalize(g * img + (1.0 - g) * cap)
        fused[no_image] = caption_emb[no_image]
        fused[no_caption] = image_emb[no_caption]
        return fused.reshape(n, k, -1) if k > 1 else fused

    def image_share(self, image_emb: Any, caption_emb: Any) -> float:
        """The mean gate over rows that have both sides and over dimensions (w for weighted)."""
        image_emb, caption_emb = _sides(image_emb, caption_emb)
        both = ~(np.isnan(image_emb).any(axis=-1) | np.isnan(caption_emb).any(axis=-1))
        g = self.gates(image_emb[both], caption_emb[both])
        return float(np.broadcast_to(g, image_emb[both].shape).mean()) if both.any() else math.nan

    def params(self) -> dict[str, Any]:
        """JSON parameters (fusion.json ``params``)."""
        return {}

    def tensors(self) -> dict[str, np.ndarray]:
        """Array parameters (fusion.safetensors)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What an index manifest records about the fusion that built it."""
        out: dict[str, Any] = {"kind": self.kind, "formula": self.formula, **self.params()}
        if self.source:
            out["path"] = self.source
            out["sha256"] = fusion_digest(self.source)
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Write fusion.json (and fusion.safetensors when there are arrays) into ``out_dir``."""

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.tensors().items()}
        meta = {
            "format": FUSION_FORMAT,
            "version": FUSION_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "params": self.params(),
            "model": self.model,
            "formula": self.formula,
            "training": self.training,
        }
        if tensors:
            _save_tensors(tensors, out / FUSION_WEIGHTS)
        elif (out / FUSION_WEIGHTS).exists():
            (out / FUSION_WEIGHTS).unlink()
        atomic_write_json(out / FUSION_FILE, meta)
        return out

    @property
    def dim(self) -> int | None:
        return None

    def check_model(self, model: dict[str, Any] | None, *, what: str) -> None:
        """ModelMismatchError when ``model`` (an embeddings manifest) is not the fusion's."""

        if self.dim is not None and model and model.get("embed_dim") not in (None, self.dim):
            raise ModelMismatchError(
                f"{what} are {model['embed_dim']}-d; the fusion"
                f"{' in ' + self.source if self.source else ''} was trained on {self.dim}-d "
                f"embeddings of {(self.model or {}).get('spec')!r}"
            )
        if not self.model or not model:
            return
        fe, fa = self.model.get("fingerprint"), model.get("fingerprint")
        same = fe == fa if (fe and fa) else self.model.get("spec") == model.get("spec")
        if not same:
            raise ModelMismatchError(
                f"{what} come from model {model.get('spec')!r} (fingerprint {fa}), but the fusion"
                f"{' in ' + self.source if self.source else ''} was trained on embeddings of "
                f"{self.model.get('spec')!r} (fingerprint {fe}); train a fusion for this model"
            )


@register_fusion("weighted")
class WeightedFusion(Fusion):
    """``normalize(w * image + (1 - w) * caption)`` with a fixed ``w`` in [0, 1]."""

    kind = "weighted"
    formula = "normalize(w * image + (1 - w) * caption)"

    def __init__(self, weight: float = 0.5) -> None:
        super().__init__()
        weight = float(weight)
        if not 0.0 <= weight <= 1.0:
            raise XmrError(f"fusion weight must be in [0, 1], got {weight:g}")
        self.weight = weight

    def gates(self, image_emb: np.ndarray, caption_emb: np.ndarray) -> np.ndarray:
        return np.float32(self.weight)

    def params(self) -> dict[str, Any]:
        return {"weight": self.weight}

    @classmethod
    def from_files(cls, meta: dict[str, Any], tensors: dict[str, np.ndarray], where: str):
        weight = _field(meta.get("params") or {}, "weight", (int, float), where, "params.weight")
        try:
            return cls(weight)
        except XmrError as exc:
            raise XmrError(f"{where}: field 'params.weight': {exc}") from None


@register_fusion("gated")
class GatedFusion(Fusion):
    """A learned gate (see the module docstring); ``weight`` None is a per-dimension gate only.

    Args:
        bias: ``b``, shape ``(d,)``.
        weight: ``W``, shape ``(d, 2d)``, or None when the gate does not look at the item.
    """

    kind = "gated"
    formula = "normalize(g * image + (1 - g) * caption), g = sigmoid(W [image; caption] + b)"

    def __init__(self, bias: np.ndarray, weight: np.ndarray | None = None) -> None:
        super().__init__()
        self.bias = np.asarray(bias, dtype=np.float32).reshape(-1)
        d = self.bias.shape[0]
        self.weight = None if weight is None else np.asarray(weight, dtype=np.float32)
        if self.weight is not None and self.weight.shape != (d, 2 * d):
            raise XmrError(f"gate weight must be ({d}, {2 * d}), got {self.weight.shape}")

    @classmethod
    def initial(cls, dim: int, *, weight: float = 0.5, content: bool = True) -> GatedFusion:
        """The gate that equals the weighted sum with ``weight`` (clipped to [0.01, 0.99])."""
        w = min(max(float(weight), 0.01), 0.99)
        bias = np.full(dim, math.log(w / (1.0 - w)), dtype=np.float32)
        return cls(bias, np.zeros((dim, 2 * dim), dtype=np.float32) if content else None)

    @property
    def dim(self) -> int:
        return int(self.bias.shape[0])

    @property
    def content(self) -> bool:
        return self.weight is not None

    def gates(self, image_emb: np.ndarray, caption_emb: np.ndarray) -> np.ndarray:
        if image_emb.shape[-1] != self.dim:
            raise XmrError(
                f"the gated fusion is {self.dim}-d; the embeddings are {image_emb.shape[-1]}-d"
            )
        z = np.broadcast_to(self.bias, image_emb.shape).astype(np.float32)
        if self.weight is not None:
            z = z + np.concatenate([image_emb, caption_emb], axis=-1) @ self.weight.T
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {"content": self.content}

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"gate.bias": self.bias}
        if self.weight is not None:
            out["gate.weight"] = self.weight
        return out

    @classmethod
    def from_files(cls, meta: dict[str, Any], tensors: dict[str, np.ndarray], where: str):
        content = _field(meta.get("params") or {}, "content", (bool,), where, "params.content")
        if "gate.bias" not in tensors:
            raise XmrError(f"{where}: {FUSION_WEIGHTS} has no tensor 'gate.bias'")
        if content and "gate.weight" not in tensors:
            raise XmrError(f"{where}: content gate, but {FUSION_WEIGHTS} has no 'gate.weight'")
        fusion = cls(tensors["gate.bias"], tensors["gate.weight"] if content else None)
        dim = meta.get("dim")
        if dim is not None and dim != fusion.dim:
            raise XmrError(f"{where}: field 'dim' is {dim}, the tensors are {fusion.dim}-d")
        return fusion


def _field(obj: dict[str, Any], key: str, types: tuple, where: str, name: str) -> Any:
    value = obj.get(key)
    ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
    if not ok:
        kinds = " or ".join(t.__name__ for t in types)
        raise XmrError(f"{where}: field '{name}' must be {kinds}, got {value!r}")
    return value


def _save_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise XmrError(
            "saving a learned fusion needs safetensors: pip install 'xmr[models]'"
        ) from None

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise XmrError(
            "loading a learned fusion needs safetensors: pip install 'xmr[models]'"
        ) from None
    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise XmrError(f"{path}: not a readable safetensors file ({exc})") from None


def fusion_digest(path: str | Path) -> str:
    """sha256 over fusion.json and fusion.safetensors (what an index records to find it again)."""
    root = Path(path)
    h = hashlib.sha256()
    for name in (FUSION_FILE, FUSION_WEIGHTS):
        f = root / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:32]


def create_fusion(kind: str = "weighted", **params: Any) -> Fusion:
    """A fusion of a registered kind: ``create_fusion("weighted", weight=0.3)``."""
    factory = FUSIONS.get(kind)
    return factory(**params)


def load_fusion(spec: Any) -> Fusion:
    """A Fusion from a weight (``0.3`` or ``"0.3"``: weighted), a directory holding fusion.json
    (as ``xmr train --fused`` writes), the path of a fusion.json, or a Fusion (returned as is)."""
    if isinstance(spec, Fusion):
        return spec
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return WeightedFusion(float(spec))
    text = str(spec).strip()
    try:
        return WeightedFusion(float(text))
    except ValueError:
        pass
    path = Path(text).expanduser()
    meta_path = path / FUSION_FILE if path.is_dir() else path
    if not meta_path.is_file():
        raise XmrError(
            f"fusion '{text}': not a weight in [0, 1] nor a directory with {FUSION_FILE} "
            "(xmr train --fused writes one)"
        )
    root = meta_path.parent
    where = str(meta_path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise XmrError(f"{where}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise XmrError(f"{where}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FUSION_FORMAT:
        raise XmrError(f"{where}: field 'format' must be '{FUSION_FORMAT}'")
    version = meta.get("version")
    if not isinstance(version, int) or version > FUSION_VERSION:
        raise XmrError(
            f"{where}: field 'version' is {version!r}; this xmr reads up to {FUSION_VERSION}"
        )
    kind = meta.get("kind")
    if not isinstance(kind, str) or kind not in FUSIONS:
        raise XmrError(f"{where}: field 'kind' is {kind!r} (known: {', '.join(list_fusions())})")
    weights = root / FUSION_WEIGHTS
    tensors = _load_tensors(weights) if weights.is_file() else {}
    fusion = FUSIONS.get(kind).from_files(meta, tensors, where)
    model = meta.get("model")
    if model is not None and not isinstance(model, dict):
        raise XmrError(f"{where}: field 'model' must be an object or null")
    fusion.model = model
    fusion.training = meta.get("training") or {}
    fusion.source = str(root.resolve())
    return fusion
