"""The one L2 normalisation of embedding rows, and the one max-sim score of multi-vector items
(base layer: used by index, eval, fusion and models).

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


# Elements of one (queries x item vectors) block of dot products in max_sim (~64 MB of float32).
MAX_SIM_BLOCK = 1 << 24


def max_sim(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(Q, D) x (N, D) -> (Q, N) dot products; (Q, D) x (N, K, D) -> (Q, N), max over K.

    The score of a query and a multi-vector item is the best dot product of the query with any
    of the item's K vectors, ``max_k <q, v_k>``: BLIP-2's image-text contrastive score (LAVIS,
    transformers' ``Blip2ForImageTextRetrieval(use_image_text_matching_head=False)``) when both
    are L2-normalised. Single-vector items are the K=1 case. A (Q, Kq, D) query (an image with
    Kq vectors asking a text index, image->text) scores ``max_{a,k} <q_a, v_k>``, the same
    matrix transposed. Items are taken a block at a time, so memory stays bounded whatever N;
    NaN rows (items that failed to encode) give NaN scores.

    Args:
        queries: float (Q, D) or (Q, Kq, D).
        items: float (N, D) or (N, K, D).

    Returns:
        float32 (Q, N).
    """
    q = np.asarray(queries, dtype=np.float32)
    x = np.asarray(items, dtype=np.float32)
    q3 = q[:, None, :] if q.ndim == 2 else q
    x3 = x[:, None, :] if x.ndim == 2 else x
    if q3.ndim != 3 or x3.ndim != 3:
        raise ValueError(f"max_sim takes 2-d or 3-d arrays, got {q.shape} and {x.shape}")
    if q3.shape[-1] != x3.shape[-1]:
        raise ValueError(f"vector sizes differ: queries {q3.shape[-1]}, items {x3.shape[-1]}")
    n_q, k_q, dim = q3.shape
    n, k_i = x3.shape[0], x3.shape[1]
    flat_q = np.ascontiguousarray(q3.reshape(n_q * k_q, dim))
    out = np.empty((n_q, n), dtype=np.float32)
    step = max(1, MAX_SIM_BLOCK // max(1, n_q * k_q * k_i))
    for start in range(0, n, step):
        block = x3[start : start + step]
        sim = flat_q @ block.reshape(-1, dim).T  # (Q*Kq, b*K)
        sim = sim.reshape(n_q, k_q, len(block), k_i)
        # np.max propagates NaN, so an item of NaN rows scores NaN (ranked last by callers).
        out[:, start : start + len(block)] = (
            sim.max(axis=(1, 3)) if k_q * k_i > 1 else sim[:, 0, :, 0]
        )
    return out
