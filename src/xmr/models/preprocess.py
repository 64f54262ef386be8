"""Image preprocessing that travels with a model's weights, without torchvision.

``ImagePreprocess`` is a small picklable class (safe to send to DataLoader workers) that does what
the weights' saved processor config says: resize (shortest edge, or to a fixed size), centre crop,
rescale to [0, 1] and normalise with the model's mean/std. It reproduces transformers' PIL/NumPy
image processors (CLIPImageProcessor, ChineseCLIPImageProcessor, SiglipImageProcessor,
Siglip2ImageProcessor, BlipImageProcessor for BLIP and BLIP-2) step by step, so its output equals
theirs (tests/test_preprocess.py checks max abs diff < 1e-5).

It runs in two halves so that a GPU is never starved by float work on the CPU:

* ``crop(image)``: PIL resize of the uint8 image with the processor's filter, integer centre-crop
  offsets -> an ``(H, W, 3)`` uint8 array. This is all a DataLoader worker does.
* ``normalize(batch)``: a uint8 ``(B, H, W, 3)`` batch -> float32 ``(B, 3, H, W)``, once per batch
  on the batch's device. On the CPU it is a lookup table built with transformers' own operations
  (``uint8 -> float64 * rescale_factor -> float32``, then ``(x - mean) / std`` in float32), so it
  is bit-identical to the processor; on a GPU the same formula is computed in float32 (within
  1 ulp, ~2e-7).

``__call__`` runs both for one image. SigLIP2's NaFlex processor (``mode="naflex"``:
aspect-preserving resize to at most ``max_num_patches`` patches, patchified and padded) crops to
a dict of uint8 patches, normalised per batch the same way.

``draft=True`` (opt-in, ``--draft``) lets JPEGs decode at 1/2..1/8 scale when at least twice the
resize target: much faster for big photos, but not the processor's pixels.

(One module, a little over 400 lines, on purpose: it is one class, ``ImagePreprocess``, and the
two array helpers whose rounding it must share with it to match transformers bit for bit.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from xmr.data.images import to_rgb
from xmr.models.naflex import naflex_size, patchify_uint8
from xmr.models.preprocess_torchvision import (
    center_crop_torchvision,
    check_torchvision_resample,
    resize_uint8,
    torchvision_table,
)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

# PIL resampling filter ids (as transformers stores them in `resample`) and names.
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_RESAMPLE_IDS = {v: k for k, v in _RESAMPLE_NAMES.items()}

# Class defaults of transformers' image processors, per model_type: a saved config overrides them
# key by key (a config may omit keys whose value equals the class default).
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {
        "do_resize": True,
        "size": {"shortest_edge": 224},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "do_convert_rgb": True,
    },
    "siglip": {
        "do_resize": True,
        "size": {"height": 224, "width": 224},
        "resample": 3,
        "do_center_crop": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(HALF),
        "image_std": list(HALF),
        "do_convert_rgb": True,
    },
    "siglip2": {
        "do_resize": True,
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(HALF),
        "image_std": list(HALF),
        "do_convert_rgb": True,
        "patch_size": 16,
        "max_num_patches": 256,
    },
}
HF_DEFAULTS["chinese_clip"] = HF_DEFAULTS["clip"]
# BlipImageProcessor (BLIP and BLIP-2): a bicubic resize to a square, no crop, OpenAI mean/std.
HF_DEFAULTS["blip"] = {
    **HF_DEFAULTS["siglip"],
    "size": {"height": 384, "width": 384},
    "image_mean": list(OPENAI_CLIP_MEAN),
    "image_std": list(OPENAI_CLIP_STD),
}
HF_DEFAULTS["blip-2"] = HF_DEFAULTS["blip"]
__all__ = ["HF_DEFAULTS", "ImagePreprocess", "center_crop", "naflex_size", "to_rgb_pil"]
# transformers' processor backends ImagePreprocess reproduces (see ``backend``).
BACKENDS = ("pil", "torchvision")
# Processors whose int `size` means a square (transformers' default_to_square=True).
_SQUARE_WHEN_INT = {"siglip", "blip", "blip-2"}


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, Mapping):
        return int(value["height"]), int(value["width"])
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1]))
    return int(value), int(value)


@dataclass
class ImagePreprocess:
    """Callable: PIL image (or HxWxC uint8 array) -> float32 tensor (3, H, W) (or, for NaFlex, a
    dict of tensors). Picklable; holds only plain fields.

    Attributes:
        mode: "shortest_edge" (resize the short side to ``size``, keep aspect), "resize" (to exactly
            ``size`` = (h, w)), "naflex" (SigLIP2) or "none".
        size: shortest edge (int) or (height, width).
        crop_size: centre crop (height, width), or None for no crop.
        resample: PIL filter name ("bicubic", "bilinear", ...).
        crop_rounding: how a centre crop's offset is rounded: "floor" (transformers) or "round"
            (torchvision's CenterCrop, which open_clip uses).
        draft: decode JPEGs in draft mode (reduced scale, see ``draft_size``). Off by default:
            the default gives the reference processor's pixels.
        backend: which of transformers' two processor backends to reproduce bit for bit: "pil"
            (the default, the same pixels on every machine, and what the original CLIP pipeline
            did: a PIL resize) or "torchvision" (what ``AutoImageProcessor`` picks wherever
            torchvision is installed; a torch uint8 resize, ~3x faster per core; see
            :mod:`xmr.models.preprocess_torchvision`).
    """

    mode: str = "shortest_edge"
    size: int | tuple[int, int] = 224
    crop_size: tuple[int, int] | None = (224, 224)
    resample: str = "bicubic"
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, ...] | None = OPENAI_CLIP_MEAN
    std: tuple[float, ...] | None = OPENAI_CLIP_STD
    patch_size: int = 16
    max_num_patches: int = 256
    crop_rounding: str = "floor"
    draft: bool = False
    backend: str = "pil"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("shortest_edge", "resize", "naflex", "none"):
            raise ValueError(f"unknown resize mode '{self.mode}'")
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(f"unknown crop rounding '{self.crop_rounding}'")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown image backend '{self.backend}' (choose from {', '.join(BACKENDS)})"
            )
        if self.backend == "torchvision":
            if self.mode == "naflex":
                raise ValueError(
                    "the torchvision backend is not reproduced for SigLIP2's NaFlex resize; use "
                    "backend='pil'"
                )
            if self.crop_rounding != "floor":
                raise ValueError(
                    "the torchvision backend reproduces transformers' processors; this "
                    "preprocessing follows open_clip's transforms (PIL images): use backend='pil'"
                )
            if self.mode != "none":
                check_torchvision_resample(self.resample)
        if isinstance(self.size, list):
            self.size = tuple(self.size)
        if self.crop_size is not None:
            self.crop_size = _pair(self.crop_size)
        if self.mean is not None:
            self.mean = tuple(float(m) for m in self.mean)
            self.std = tuple(float(s) for s in self.std)

    # ---- construction from / to configs -------------------------------------------------------

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], model_type: str = "clip") -> ImagePreprocess:
        """Build from a transformers ``preprocessor_config.json`` dict (missing keys take the class
        defaults of the processor for ``model_type``)."""
        cfg = {**HF_DEFAULTS.get(model_type, HF_DEFAULTS["clip"]), **dict(config)}
        resample = cfg.get("resample", 3)
        resample = (
            _RESAMPLE_NAMES.get(int(resample), "bicubic") if resample is not None else "bilinear"
        )
        mean = cfg.get("image_mean") if cfg.get("do_normalize", True) else None
        std = cfg.get("image_std") if cfg.get("do_normalize", True) else None
        if isinstance(mean, (int, float)):
            mean, std = (mean,) * 3, (std,) * 3
        rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None
        crop = cfg.get("crop_size") if cfg.get("do_center_crop", False) else None
        if model_type == "siglip2" or "max_num_patches" in config:
            return cls(
                mode="naflex" if cfg.get("do_resize", True) else "none",
                size=0,
                crop_size=None,
                resample=resample,
                rescale_factor=rescale,
                mean=mean,
                std=std,
                patch_size=int(cfg.get("patch_size", 16)),
                max_num_patches=int(cfg.get("max_num_patches", 256)),
            )
        size = cfg.get("size")
        if not cfg.get("do_resize", True) or size is None:
            mode, size = "none", 0
        elif isinstance(size, Mapping) and "shortest_edge" in size:
            mode, size = "shortest_edge", int(size["shortest_edge"])
        elif isinstance(size, (Mapping, list, tuple)):
            mode, size = "resize", _pair(size)
        else:
            mode = "resize" if model_type in _SQUARE_WHEN_INT else "shortest_edge"
            size = _pair(size) if mode == "resize" else int(size)
        return cls(
            mode=mode,
            size=size,
            crop_size=crop,
            resample=resample,
            rescale_factor=rescale,
            mean=mean,
            std=std,
        )

    def to_hf_config(self, image_processor_type: str = "CLIPImageProcessor") -> dict[str, Any]:
        """The ``preprocessor_config.json`` dict transformers reads back to the same processing."""
        cfg: dict[str, Any] = {
            "image_processor_type": image_processor_type,
            "do_convert_rgb": True,
            "do_resize": self.mode != "none",
            "resample": _RESAMPLE_IDS[self.resample],
            "do_center_crop": self.crop_size is not None,
            "do_rescale": self.rescale_factor is not None,
            "rescale_factor": self.rescale_factor if self.rescale_factor is not None else 1 / 255,
            "do_normalize": self.mean is not None,
        }
        if self.mean is not None:
            cfg["image_mean"], cfg["image_std"] = list(self.mean), list(self.std)
        if self.mode == "shortest_edge":
            cfg["size"] = {"shortest_edge": int(self.size)}
        elif self.mode == "resize":
            h, w = _pair(self.size)
            cfg["size"] = {"height": h, "width": w}
        elif self.mode == "naflex":
            cfg["patch_size"], cfg["max_num_patches"] = self.patch_size, self.max_num_patches
        if self.crop_size is not None:
            cfg["crop_size"] = {"height": self.crop_size[0], "width": self.crop_size[1]}
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for manifests)."""
        d = asdict(self)
        d.pop("extra")
        if self.mode != "naflex":
            d.pop("patch_size")
            d.pop("max_num_patches")
        if self.crop_rounding == "floor":
            d.pop("crop_rounding")  # the default; keeps hf manifests as they were
        if not self.draft:
            d.pop("draft")  # likewise: only a draft-decoding run says so
        if self.backend == "pil":
            d.pop("backend")  # likewise: only the torchvision backend is written down
        for key in ("size", "crop_size", "mean", "std"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output image, or None when it depends on the input."""
        if self.crop_size is not None:
            return self.crop_size
        if self.mode == "resize":
            return _pair(self.size)
        return None

    # ---- the transform ------------------------------------------------------------------------

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the resize step produces for an input of that size."""
        if self.mode == "resize":
            return _pair(self.size)
        if self.mode == "shortest_edge":
            # transformers' get_resize_output_image_size (default_to_square=False): floor, not round.
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = int(self.size), int(int(self.size) * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        if self.mode == "naflex":
            return naflex_size(height, width, self.patch_size, self.max_num_patches)
        return height, width

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The (width, height) JPEG draft decoding may go down to while keeping what the resize
        keeps (PIL picks the largest 1/2^k scale still at least this big); None unless
        ``draft``."""
        if not self.draft:
            return None
        if self.mode == "shortest_edge" and self.size:
            return int(self.size), int(self.size)
        if self.mode == "resize" and self.size:
            h, w = _pair(self.size)
            return w, h
        return None

    def crop(self, image: Any) -> Any:
        """The worker half: PIL image (or uint8 array) -> resized, centre-cropped ``(H, W, 3)``
        uint8 array (NaFlex: a dict of uint8 patches, their mask and grid)."""
        pil = to_rgb_pil(image)
        if self.backend == "torchvision":
            return self._crop_torchvision(np.asarray(pil))  # torchvision's pil_to_tensor
        if self.mode != "none":
            from PIL import Image

            h, w = self.target_size(pil.height, pil.width)
            if (h, w) != (pil.height, pil.width):
                resample = getattr(Image.Resampling, self.resample.upper())
                pil = pil.resize((w, h), resample=resample)
        if self.crop_size is not None:
            box = _crop_box(pil.height, pil.width, self.crop_size, self.crop_rounding)
            if box is not None:  # PIL copies only the crop: the same pixels, less memory traffic
                pil = pil.crop(box)
        array = np.asarray(pil)
        if self.crop_size is not None and array.shape[:2] != self.crop_size:
            array = center_crop(array, self.crop_size, self.crop_rounding)  # pads when too small
        array = np.ascontiguousarray(array)
        if self.mode == "naflex":
            return patchify_uint8(array, self.patch_size, self.max_num_patches)
        return array

    def _crop_torchvision(self, array: np.ndarray) -> np.ndarray:
        """``crop`` as transformers' torchvision backend does it (torch uint8 resize, its crop)."""
        if self.mode != "none":
            h, w = self.target_size(*array.shape[:2])
            if (h, w) != array.shape[:2]:
                array = resize_uint8(array, (h, w), self.resample)
        if self.crop_size is not None and array.shape[:2] != self.crop_size:
            array = center_crop_torchvision(array, self.crop_size)
        return np.ascontiguousarray(array)

    def normalize(self, batch: Any) -> Any:
        """The batch half: uint8 ``(B, H, W, 3)`` (tensor on any device, or array) -> float32
        ``(B, 3, H, W)`` on that device, in the processor's order (rescale, then normalise).
        A NaFlex dict has its uint8 ``pixel_values`` normalised and its padding kept at 0."""
        import torch

        if isinstance(batch, Mapping):
            return self._normalize_patches(batch)
        x = batch if isinstance(batch, np.ndarray | torch.Tensor) else np.asarray(batch)
        if str(x.dtype) not in ("uint8", "torch.uint8") or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"normalize takes a uint8 (B, H, W, 3) batch, got {x.dtype} {tuple(x.shape)}"
            )
        if isinstance(x, np.ndarray) or x.device.type == "cpu":
            array = x if isinstance(x, np.ndarray) else x.numpy()
            b, h, w, _ = array.shape
            out = np.empty((b, 3, h, w), dtype=np.float32)
            table = self._table()
            # One image-channel plane at a time, read strided from HWC: np.take widens its
            # indices to intp, and a plane's worth stays in cache (3x faster than whole-batch
            # takes on a transposed copy; measured in benchmarks/bench_encode.py).
            for i in range(b):
                for c in range(3):
                    np.take(table[c], array[i, :, :, c], out=out[i, c])
            return torch.from_numpy(out)
        scale, offset = self._affine(x.device)
        return x.permute(0, 3, 1, 2).to(torch.float32).mul_(scale).add_(offset).contiguous()

    def __call__(self, image: Any) -> Any:
        """One image -> float32 ``(3, H, W)`` tensor (NaFlex: a dict of tensors)."""
        cropped = self.crop(image)
        if self.mode == "naflex":
            batch = {k: np.expand_dims(v, 0) for k, v in cropped.items()}
            return {k: v[0] for k, v in self._normalize_patches(batch).items()}
        return self.normalize(cropped[None])[0]

    # ---- normalisation helpers ----------------------------------------------------------------

    def _table(self) -> np.ndarray:
        """(3, 256) float32: the processor's output for each uint8 value of each channel."""
        cached = self.__dict__.get("_lut")
        if cached is None and self.backend == "torchvision":
            cached = torchvision_table(self.rescale_factor, self.mean, self.std)
            self.__dict__["_lut"] = cached
        if cached is None:
            values = np.arange(256, dtype=np.uint8)
            if self.rescale_factor is not None:
                # transformers' rescale: float64 multiply, then float32.
                v = (values.astype(np.float64) * self.rescale_factor).astype(np.float32)
            else:
                v = values.astype(np.float32)
            if self.mean is not None:
                mean = np.asarray(self.mean, dtype=np.float32)[:, None]
                std = np.asarray(self.std, dtype=np.float32)[:, None]
                cached = ((v[None, :] - mean) / std).astype(np.float32)
            else:
                cached = np.repeat(v[None, :], 3, axis=0)
            self.__dict__["_lut"] = cached  # not a dataclass field: eq, asdict, pickle ignore it
        return cached

    def _affine(self, device: Any) -> tuple[Any, Any]:
        """(scale, offset), each (1, 3, 1, 1) on ``device``: x * scale + offset = processor."""
        import torch

        rescale = self.rescale_factor if self.rescale_factor is not None else 1.0
        mean = torch.tensor(self.mean or (0.0, 0.0, 0.0), dtype=torch.float64)
        std = torch.tensor(self.std or (1.0, 1.0, 1.0), dtype=torch.float64)
        scale, offset = rescale / std, -mean / std
        return (
            scale.to(torch.float32).view(1, 3, 1, 1).to(device),
            offset.to(torch.float32).view(1, 3, 1, 1).to(device),
        )

    def _normalize_patches(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        batch = {
            k: torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v)
            for k, v in batch.items()
        }
        patches = batch["pixel_values"]
        if patches.dtype != torch.uint8:  # already normalised
            return batch
        b, n, d = patches.shape
        # (B, N, p*p*3) with the channel fastest: as an image batch (B, N*p*p, 1, 3).
        pixels = self.normalize(patches.reshape(b, n * d // 3, 1, 3))
        values = pixels.permute(0, 2, 3, 1).reshape(b, n, d)
        mask = batch["pixel_attention_mask"].to(values.device)
        values = values * (mask[..., None] != 0)  # transformers pads after normalising: zeros
        return {**batch, "pixel_values": values}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lut", None)  # rebuilt on first use; keeps pickles to workers small
        return state


def to_rgb_pil(image: Any) -> Any:
    """PIL RGB image from a PIL image of any mode (see :func:`xmr.data.images.to_rgb`:
    transparency composited on white as transformers does, 16-bit greyscale scaled) or an
    HxW / HxWxC uint8 array."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image array, got {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    return to_rgb(image)


def _crop_box(
    h: int, w: int, size: tuple[int, int], rounding: str
) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of ``center_crop``'s window when it needs no padding."""
    crop_h, crop_w = size
    if h < crop_h or w < crop_w:
        return None
    if rounding == "round":
        top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    else:
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return left, top, left + crop_w, top + crop_h


def center_crop(array: np.ndarray, size: tuple[int, int], rounding: str = "floor") -> np.ndarray:
    """Centre crop of an HxWxC array, zero-padding when too small. Offsets are floored like
    transformers' (``rounding="floor"``) or rounded half-to-even like torchvision's CenterCrop."""
    crop_h, crop_w = size
    h, w = array.shape[:2]
    if rounding == "round" and h >= crop_h and w >= crop_w:
        top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
        return array[top : top + crop_h, left : left + crop_w]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return array[top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((new_h, new_w, *array.shape[2:]), dtype=array.dtype)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    padded[pad_top : pad_top + h, pad_left : pad_left + w] = array
    top, left = top + pad_top, left + pad_left
    return padded[max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]
