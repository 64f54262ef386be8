"""transformers' *torchvision* image-processor backend, reproduced with torch core operations.

transformers 5 ships two backends for every image processor: ``pil`` (PIL resize, NumPy
rescale/normalise) and ``torchvision`` (``torchvision.transforms.v2.functional.resize`` of uint8
tensors, a fused rescale+normalise). ``AutoImageProcessor`` picks ``torchvision`` whenever
torchvision is installed (a GPU machine, typically) and ``pil`` otherwise, and their pixels differ:
torch's antialiased bicubic uses a = -0.75 where PIL uses a = -0.5, and its fixed-point rounding
differs (up to 2 levels of 255 apart; ~0.03 after normalisation).

``ImagePreprocess(backend="torchvision")`` gives the torchvision backend's pixels without
torchvision: the resize is ``torch.nn.functional.interpolate(uint8, antialias=True)`` -- the very
kernel torchvision calls for uint8 images on the CPU -- and it is also about 3x faster per core
than PIL's resize (``benchmarks/bench_encode.py``). Equality with transformers' torchvision
processors is checked by ``benchmarks/crosscheck_processor_backends.py`` (``make crosscheck``, in
the venv where torchvision loads).
"""

from __future__ import annotations

import platform
import warnings

import numpy as np

# PIL filter name -> torch.nn.functional.interpolate mode, as transformers maps PIL resample ids to
# torchvision InterpolationModes (pil_torch_interpolation_mapping: NEAREST -> NEAREST_EXACT) and
# torchvision to torch modes.
_TORCH_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


def check_torchvision_resample(resample: str) -> str:
    """The torch interpolation mode of a PIL filter name; filters this has no kernel for
    (lanczos, box, hamming) are an error rather than a silent substitute."""
    mode = _TORCH_MODES.get(resample)
    if mode is None:
        raise ValueError(
            f"the torchvision backend has no '{resample}' resize here (torch interpolates "
            f"{', '.join(_TORCH_MODES)}); use backend='pil' for this model"
        )
    return mode


def _native_uint8(mode: str) -> bool:
    """Whether torchvision resizes a uint8 CPU tensor in uint8 with this mode (its
    ``_do_native_uint8_resize_on_cpu``): bicubic always, bilinear only with AVX2/AVX512 or on
    ARM; otherwise it resizes in float32 and rounds."""
    if mode != "bilinear":
        return True
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in (
        "aarch64",
        "arm64",
    )


def resize_uint8(array: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """HxWx3 uint8 -> (h, w, 3) uint8 resized as transformers' torchvision backend does on the
    CPU (torchvision's ``resize_image``, antialias on): torch's native uint8 interpolate where
    torchvision uses it, else float32 interpolate, clamp (bicubic), round, uint8."""
    import torch
    import torch.nn.functional as F

    mode = check_torchvision_resample(resample)
    array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        # np.asarray(PIL image) is read-only; nothing here writes to it.
        warnings.simplefilter("ignore", UserWarning)
        image = torch.from_numpy(array)
    h, w = array.shape[:2]
    # A channels-last (1, 3, H, W) view with an unambiguous batch stride (as torchvision restrides
    # it): torch then allocates the output channels-last too, so the HWC result needs no copy.
    image = image.as_strided((1, 3, h, w), (h * w * 3, 1, w * 3, 3))
    if mode == "nearest-exact":  # no antialiasing, uint8 throughout
        out = F.interpolate(image, size=size, mode=mode)
    elif _native_uint8(mode):
        out = F.interpolate(image, size=size, mode=mode, antialias=True, align_corners=False)
    else:
        out = F.interpolate(
            image.to(torch.float32), size=size, mode=mode, antialias=True, align_corners=False
        )
        out = out.round_().to(torch.uint8)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def center_crop_torchvision(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """transformers' torchvision-backend centre crop of an HxWxC array: when the crop is larger
    than the image, zero padding with the smaller half before (left/top), then the crop at offsets
    ``int((side - crop) / 2.0)``. (The PIL backend pads the larger half before.)"""
    crop_h, crop_w = size
    h, w = array.shape[:2]
    if crop_h > h or crop_w > w:
        top = (crop_h - h) // 2 if crop_h > h else 0
        left = (crop_w - w) // 2 if crop_w > w else 0
        new_h, new_w = max(h, crop_h), max(w, crop_w)
        padded = np.zeros((new_h, new_w, *array.shape[2:]), dtype=array.dtype)
        padded[top : top + h, left : left + w] = array
        array, h, w = padded, new_h, new_w
    top, left = int((h - crop_h) / 2.0), int((w - crop_w) / 2.0)
    return array[top : top + crop_h, left : left + crop_w]


def torchvision_table(
    rescale_factor: float | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> np.ndarray:
    """(3, 256) float32: the torchvision backend's output for each uint8 value of each channel,
    computed with its own operations: with rescale and normalise, the two are fused into
    ``(float32(x) - mean / rescale) / (std / rescale)`` with float32 tensors; rescale alone is
    ``x * rescale``; neither, ``float32(x)``."""
    import torch

    values = torch.arange(256, dtype=torch.float32).expand(3, 256)
    if mean is not None and rescale_factor is not None:
        mean_t = torch.tensor(mean) * (1.0 / rescale_factor)
        std_t = torch.tensor(std) * (1.0 / rescale_factor)
        out = (values - mean_t[:, None]) / std_t[:, None]
    elif mean is not None:
        out = (values - torch.tensor(mean)[:, None]) / torch.tensor(std)[:, None]
    elif rescale_factor is not None:
        out = values * rescale_factor
    else:
        out = values.clone()
    return out.to(torch.float32).numpy()
