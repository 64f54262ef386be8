"""SigLIP2's NaFlex geometry: the aspect-preserving target size and the patch layout
(transformers' ``Siglip2ImageProcessor``, reproduced; used by :mod:`xmr.models.preprocess`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def naflex_size(height: int, width: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    """SigLIP2's target size: the largest aspect-preserving scale, rounded up to whole patches,
    that gives at most ``max_num_patches`` patches (transformers' binary search, reproduced)."""

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    eps = 1e-5
    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        if (scaled(mid, height) / patch_size) * (
            scaled(mid, width) / patch_size
        ) <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return scaled(lo, height), scaled(lo, width)


def patchify_uint8(array: np.ndarray, patch_size: int, max_num_patches: int) -> dict[str, Any]:
    """(H, W, C) uint8 -> SigLIP2 inputs before normalisation: patches (max_num_patches, p*p*C)
    uint8 zero-padded (channel fastest, as transformers lays them out), their mask and the
    (rows, cols) patch grid."""
    h, w, c = array.shape
    rows, cols = h // patch_size, w // patch_size
    patches = array[: rows * patch_size, : cols * patch_size].reshape(
        rows, patch_size, cols, patch_size, c
    )
    patches = patches.transpose(0, 2, 1, 3, 4).reshape(rows * cols, patch_size * patch_size * c)
    n = patches.shape[0]
    padded = np.zeros((max_num_patches, patches.shape[1]), dtype=np.uint8)
    padded[:n] = patches
    mask = np.zeros(max_num_patches, dtype=np.int32)
    mask[:n] = 1
    return {
        "pixel_values": padded,
        "pixel_attention_mask": mask,
        "spatial_shapes": np.array([rows, cols], dtype=np.int64),
    }
