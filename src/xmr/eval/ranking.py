"""Top-k rankings from a score matrix or two embedding matrices, chunk by chunk, with torch.

Neither the full ``[Q, N]`` score matrix nor a full sort is ever built: queries are taken in
chunks, items in chunks within them, ``torch.topk`` is run per block and the running top-k of
each query is merged with the block's. Memory is ``O(query_chunk * item_chunk)``, so 50k queries
x 200k items run in bounded memory on a CPU or a GPU.

Ordering (deterministic, the same on every device and for every chunking): higher score first;
equal scores rank the lower item index first, as a stable sort of ``-score`` does. Scores are
compared as float32 (``-0.0 == 0.0``); NaN ranks below everything, ``-inf`` included. This is
done exactly by ranking an int64 key: the score's order-preserving int32 image in the high 32
bits and the reversed item index in the low 32 bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.errors import XmrError
from xmr.vectors import max_sim

if TYPE_CHECKING:
    import torch

# Elements of one score block (float32 scores plus their int64 keys: ~12 bytes each).
DEFAULT_BLOCK_ELEMENTS = 1 << 24
DEFAULT_ITEM_CHUNK = 1 << 16
_LOW_MASK = (1 << 32) - 1


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the [models] extra
        raise XmrError(
            "ranking from scores or embeddings needs torch: pip install 'xmr[models]'"
        ) from None
    return torch


def _device(device: Any) -> torch.device:
    torch = _torch()
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_tensor(x: Any, device: torch.device) -> torch.Tensor:
    torch = _torch()
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device, dtype=torch.float32)


def ranking_keys(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """int64 keys whose descending order is the ranking order (see the module docstring).

    ``values`` are float32 scores, ``indices`` the global item index of each (same shape).
    """
    torch = _torch()
    v = values + 0.0  # a copy, and -0.0 becomes +0.0
    bits = v.view(torch.int32)
    # Negative floats: flip the magnitude bits so that the signed int order is the float order.
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    ordered.masked_fill_(torch.isnan(v), torch.iinfo(torch.int32).min)
    return ordered.to(torch.int64) * (1 << 32) + (_LOW_MASK - indices)


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(item indices int64, scores float32)`` back from :func:`ranking_keys` keys."""
    torch = _torch()
    ordered = torch.div(keys, 1 << 32, rounding_mode="floor").to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return _LOW_MASK - (keys & _LOW_MASK), bits.view(torch.float32)


def _block_topk(block: torch.Tensor, item_offset: int, k: int) -> torch.Tensor:
    """Keys of the exact top-``k`` of each row of a float32 score block (unsorted).

    A float ``topk`` of ``k + 1`` is exact wherever the ``k + 1``-th score is strictly below the
    ``k``-th (no tie crosses the cut) and no NaN is involved; only the other rows, rare with
    real-valued scores, are ranked again by their int64 keys.
    """
    torch = _torch()
    n = block.shape[1]
    if n <= k:
        index = torch.arange(item_offset, item_offset + n, device=block.device)
        return ranking_keys(block, index.expand_as(block))
    vals, pos = torch.topk(block, k + 1, dim=1)
    keys = ranking_keys(vals[:, :k], pos[:, :k] + item_offset)
    exact = (vals[:, k] < vals[:, k - 1]) & ~torch.isnan(vals).any(dim=1)
    redo = torch.nonzero(~exact).flatten()
    if redo.numel():
        index = torch.arange(item_offset, item_offset + n, device=block.device)
        sub = block[redo]
        keys[redo] = torch.topk(ranking_keys(sub, index.expand_as(sub)), k, dim=1).values
    return keys


def _chunks(n_queries: int, n_items: int, query_chunk: int | None, item_chunk: int | None):
    item_chunk = max(1, min(n_items, item_chunk or DEFAULT_ITEM_CHUNK))
    query_chunk = max(1, min(n_queries, query_chunk or DEFAULT_BLOCK_ELEMENTS // item_chunk))
    return query_chunk, item_chunk


def topk_blocks(
    block_scores: Callable[[int, int, int, int], torch.Tensor],
    n_queries: int,
    n_items: int,
    k: int,
    *,
    query_chunk: int | None = None,
    item_chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item indices and scores per query from a block-score function.

    Args:
        block_scores: ``(q0, q1, i0, i1) -> float32 tensor [q1 - q0, i1 - i0]`` of scores.
        n_queries, n_items: the full matrix's shape.
        k: ranking depth; ``min(k, n_items)`` columns are returned.
        query_chunk, item_chunk: block sizes (defaults keep a block near 16M elements).

    Returns:
        ``(indices int64 [Q, k], scores float32 [Q, k])``, best first, as numpy arrays.
    """
    torch = _torch()
    k = min(k, n_items)
    query_chunk, item_chunk = _chunks(n_queries, n_items, query_chunk, item_chunk)
    out_idx = np.zeros((n_queries, k), dtype=np.int64)
    out_val = np.zeros((n_queries, k), dtype=np.float32)
    if k == 0:
        return out_idx, out_val
    for q0 in range(0, n_queries, query_chunk):
        q1 = min(q0 + query_chunk, n_queries)
        best = None
        for i0 in range(0, n_items, item_chunk):
            i1 = min(i0 + item_chunk, n_items)
            keys = _block_topk(block_scores(q0, q1, i0, i1).to(torch.float32), i0, k)
            if best is not None:  # merge: the keys carry the global index, so this is exact
                keys = torch.cat([best, keys], dim=1)
                keys = torch.topk(keys, min(k, keys.shape[1]), dim=1).values
            best = keys
        index, values = decode_keys(torch.sort(best, dim=1, descending=True).values)
        out_idx[q0:q1] = index.cpu().numpy()
        out_val[q0:q1] = values.cpu().numpy()
    return out_idx, out_val


def topk_from_scores(
    scores: Any,
    k: int,
    *,
    rows: np.ndarray | None = None,
    device: Any = None,
    query_chunk: int | None = None,
    item_chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` per row of a ``[Q, N]`` score matrix (numpy array or tensor), chunk by chunk.

    ``rows`` selects (and orders) the rows to rank; only a chunk of rows is copied to ``device``
    at a time. Returns ``(indices, scores)`` as in :func:`topk_blocks`.
    """
    dev = _device(device)
    rows = np.arange(scores.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)

    def block(q0: int, q1: int, i0: int, i1: int) -> torch.Tensor:
        return _as_tensor(scores[rows[q0:q1], i0:i1], dev)

    return topk_blocks(
        block, len(rows), scores.shape[1], k, query_chunk=query_chunk, item_chunk=item_chunk
    )


def topk_from_embeddings(
    query_emb: Any,
    item_emb: Any,
    k: int,
    *,
    rows: np.ndarray | None = None,
    device: Any = None,
    query_chunk: int | None = None,
    item_chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items per query by inner product (cosine for L2-normalised embeddings).

    The similarity is computed one ``[query_chunk, item_chunk]`` block at a time; the item
    embeddings are moved to ``device`` once, the query embeddings a chunk at a time.
    """
    if np.ndim(query_emb) == 3 or np.ndim(item_emb) == 3:
        return _topk_max_sim(query_emb, item_emb, k, rows, query_chunk, item_chunk)
    dev = _device(device)
    if query_emb.shape[1] != item_emb.shape[1]:
        raise XmrError(
            f"embedding sizes differ: queries {query_emb.shape[1]}, items {item_emb.shape[1]}"
        )
    items = _as_tensor(item_emb, dev)
    rows = np.arange(query_emb.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    cache: dict[int, torch.Tensor] = {}

    def block(q0: int, q1: int, i0: int, i1: int) -> torch.Tensor:
        if q0 not in cache:  # one query chunk is reused across its item chunks
            cache.clear()
            cache[q0] = _as_tensor(query_emb[rows[q0:q1]], dev)
        return cache[q0] @ items[i0:i1].T

    return topk_blocks(
        block, len(rows), item_emb.shape[0], k, query_chunk=query_chunk, item_chunk=item_chunk
    )


def _topk_max_sim(query_emb, item_emb, k, rows, query_chunk, item_chunk):
    """Top-``k`` when one side is multi-vector (N, K, D) (BLIP-2 images): scores are
    ``xmr.vectors.max_sim``, the max over an image's vectors, in either direction."""
    torch = _torch()
    query_emb = np.asarray(query_emb, dtype=np.float32)
    item_emb = np.asarray(item_emb, dtype=np.float32)
    if query_emb.ndim == item_emb.ndim:
        raise XmrError("max-sim ranks single-vector queries against multi-vector items or back")
    rows = np.arange(query_emb.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)

    def block(q0: int, q1: int, i0: int, i1: int) -> torch.Tensor:
        queries, items = query_emb[rows[q0:q1]], item_emb[i0:i1]
        if items.ndim == 3:  # texts -> images
            return torch.from_numpy(max_sim(queries, items))
        return torch.from_numpy(np.ascontiguousarray(max_sim(items, queries).T))

    return topk_blocks(
        block, len(rows), item_emb.shape[0], k, query_chunk=query_chunk, item_chunk=item_chunk
    )
