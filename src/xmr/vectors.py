"""The one L2 normalisation of embedding rows (base layer: used by index, fusion and models).

``l2_normalize(v) = v / max(||v||, 1e-12)`` row by row, as ``torch.nn.functional.normalize``
computes it: zero rows stay zero, NaN rows stay NaN (fusion marks a missing side that way).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def l2_normalize(vectors: np.ndarray, *, eps: float = EPS) -> np.ndarray:
    """A C-contiguous float32 copy of ``vectors`` with every row (last axis) scaled to unit L2
    norm, dividing by at least ``eps``."""
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    x /= np.maximum(norms, eps)
    return x
