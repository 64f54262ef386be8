"""The one L2 normalisation of embedding rows and the one max-sim score (base layer: used by
index, fusion, eval and models).

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


# Items scored per chunk in max_sim: bounds the (chunk * K, Q) intermediate.
MAX_SIM_ITEM_CHUNK = 4096


def max_sim(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(Q, D) x (N, D) -> (Q, N) dot products; (Q, D) x (N, K, D) -> (Q, N), max over K.

    ``score(q, i) = max_k <q, v_ik>``: the BLIP-2 ITC score of a text and an image's K query
    embeddings (LAVIS; transformers' ``Blip2ForImageTextRetrieval``); single-vector items are the
    K = 1 case of the same computation. float32 in and out, computed ``MAX_SIM_ITEM_CHUNK`` items
    at a time so memory stays bounded; a NaN item (one that failed to encode) scores NaN.
    """
    q = np.asarray(queries, dtype=np.float32)
    x = np.asarray(items, dtype=np.float32)
    if q.ndim != 2 or x.ndim not in (2, 3):
        raise ValueError(
            f"max_sim takes (Q, D) queries and (N, D) or (N, K, D) items, got {q.shape}, {x.shape}"
        )
    if x.ndim == 2:
        x = x[:, None, :]
    if q.shape[1] != x.shape[2]:
        raise ValueError(f"embedding sizes differ: queries {q.shape[1]}, items {x.shape[2]}")
    n, k, d = x.shape
    out = np.empty((q.shape[0], n), dtype=np.float32)
    for start in range(0, n, MAX_SIM_ITEM_CHUNK):
        block = x[start : start + MAX_SIM_ITEM_CHUNK]
        scores = (q @ block.reshape(-1, d).T).reshape(q.shape[0], block.shape[0], k)
        out[:, start : start + block.shape[0]] = scores.max(axis=2)
    return out
