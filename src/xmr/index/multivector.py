"""Items of K vectors in one vector backend, ranked by max-sim: exactly, for an exact backend.

An index whose items each have K vectors (BLIP-2 images: K=32 query embeddings) stores item
``i``'s vectors at the backend positions ``[i*K, (i+1)*K)``: the position -> item map is
``position // K``, with K recorded in the index manifest (``item_vectors``) and so saved
atomically with the index. Every item of an index has the same K (an encoder gives the same
number of vectors for every image); a single-vector index is K=1, where position = item.

The score of a query and an item is ``max over the query's vectors a and the item's vectors k of
<q_a, v_k>`` (:func:`xmr.vectors.max_sim`); a text query has one vector, an image query of a
multi-vector encoder K of them (image->text, or query by example).

:func:`search_items` ranks items with the backend's vector search (``k'`` nearest vectors per
query vector) and is provably exact when the backend is:

* Let ``tau_a`` be the lowest score among query vector ``a``'s ``k'`` hits (``-inf`` when the
  search returned every vector it may return). A vector not among ``a``'s hits scores at most
  ``tau_a``, so an item with no vector among any hits scores at most ``T = max_a tau_a``.
* For a one-vector query, an item with at least one vector among the hits has its best vector
  among them too (that vector scores >= the hit >= tau; on equality the scores are equal), so
  the best hit score per item *is* its exact max-sim. For a several-vector query, the candidate
  items' vectors are read back from the backend and scored in full with :func:`max_sim`.
* When the ``k``-th best candidate scores strictly above ``T`` (or nothing is unseen), no unseen
  item can be in the top ``k`` nor tie into it: the answer is exact, ties going to the lower
  item index as everywhere in xmr. Otherwise ``k'`` doubles and the search is repeated (at
  worst until it covers every vector).

For an approximate backend (IVF, HNSW, PQ, SQ) the same procedure runs on its approximate hits;
its recall against :func:`exact_item_search` is measured at build time.
"""

from __future__ import annotations

import numpy as np

from xmr.index.base import IndexBackend
from xmr.vectors import max_sim

# The first round asks each query vector for this many times k * K vectors: for K=1, twice the
# items asked for, so the k-th item scores strictly above the last hit and one round suffices
# unless scores tie; for K>1, room for each top item to bring several of its vectors.
FIRST_ROUND_FACTOR = 2


def item_positions(items: np.ndarray, item_vectors: int) -> np.ndarray:
    """The backend positions of the vectors of ``items`` (item indices), in item order."""
    items = np.asarray(items, dtype=np.int64)
    if item_vectors == 1:
        return items
    return (items[:, None] * item_vectors + np.arange(item_vectors, dtype=np.int64)).ravel()


def as_query_sets(queries: np.ndarray) -> np.ndarray:
    """Queries as ``(Q, Kq, D)``: one vector ``(D,)``, rows ``(Q, D)`` (one vector each) or
    ``(Q, Kq, D)`` (Kq vectors each, e.g. the images of a multi-vector encoder)."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        return q[None, None, :]
    if q.ndim == 2:
        return q[:, None, :]
    return q


def search_items(
    backend: IndexBackend,
    queries: np.ndarray,
    k: int,
    *,
    item_vectors: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items per query by max-sim (see the module docstring for why it is exact).

    Args:
        backend: holds ``n_items * item_vectors`` vectors, item ``i``'s at ``[i*K, (i+1)*K)``.
        queries: L2-normalised ``(Q, Kq, D)`` (see :func:`as_query_sets`).
        k: items per query.
        item_vectors: K.
        allowed: sorted int64 item indices the search is restricted to (None: all).

    Returns:
        ``(scores float32 [Q, k], items int64 [Q, k])`` best first; ``k`` is cut to the number of
        allowed items, and item -1 pads rows an approximate backend could not fill.
    """
    q = as_query_sets(queries)
    n_q, k_q, dim = q.shape
    n_items = backend.ntotal // item_vectors
    n_allowed = n_items if allowed is None else len(allowed)
    k = max(0, min(int(k), n_allowed))
    out_s = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_i = np.full((n_q, k), -1, dtype=np.int64)
    if k == 0 or n_q == 0:
        return out_s, out_i
    positions = None if allowed is None else item_positions(allowed, item_vectors)
    n_vectors = n_allowed * item_vectors
    want = int(min(n_vectors, FIRST_ROUND_FACTOR * k * item_vectors))
    pending = np.arange(n_q)
    while len(pending):
        flat = np.ascontiguousarray(q[pending].reshape(-1, dim))
        scores, hits = backend.search(flat, want, allowed=positions)
        scores = scores.reshape(len(pending), k_q, -1)
        hits = hits.reshape(len(pending), k_q, -1)
        redo = []
        for row, qi in enumerate(pending):
            done, s, items = _rank_candidates(
                backend, q[qi], scores[row], hits[row], k, want, n_vectors, item_vectors
            )
            if done:
                out_s[qi, : len(s)], out_i[qi, : len(items)] = s, items
            else:
                redo.append(qi)
        pending = np.asarray(redo, dtype=np.int64)
        want = min(n_vectors, want * 2)
    return out_s, out_i


def _rank_candidates(backend, query, scores, hits, k, want, n_vectors, item_vectors):
    """(exact?, top scores, top items) of one query from its query vectors' hits."""
    valid = hits >= 0
    # tau per query vector: its lowest hit, or -inf when it was given every vector it can get.
    full = valid.sum(axis=1) < want
    tau = np.where(
        full | (want >= n_vectors),
        -np.inf,
        np.where(valid, scores, np.inf).min(axis=1, initial=np.inf),
    )
    bound = float(tau.max(initial=-np.inf))
    owners = hits[valid] // item_vectors
    cand = np.unique(owners)
    if len(query) == 1:  # the best hit of each item is its exact score (module docstring)
        best = np.full(len(cand), -np.inf, dtype=np.float32)
        np.maximum.at(best, np.searchsorted(cand, owners), scores[valid])
    else:
        stored = backend.reconstruct_many(item_positions(cand, item_vectors))
        best = max_sim(query[None], stored.reshape(len(cand), item_vectors, -1))[0]
    order = np.lexsort((cand, -best))[:k]
    top_s, top_i = best[order], cand[order]
    exact = bound == -np.inf or (len(top_i) == k and float(top_s[-1]) > bound)
    return exact, top_s, top_i


def exact_item_search(
    items: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` items by :func:`xmr.vectors.max_sim`, the reference for
    :func:`search_items` and for recall: ``items`` is ``(N, D)`` or ``(N, K, D)``, ``queries``
    ``(Q, D)`` or ``(Q, Kq, D)``; ties go to the lower item index; ``allowed`` restricts to
    those item indices. Returns ``(scores [Q, k], items [Q, k])``."""
    items = np.asarray(items, dtype=np.float32)
    index = np.arange(len(items)) if allowed is None else np.asarray(allowed, dtype=np.int64)
    q = as_query_sets(queries)
    k = min(int(k), len(index))
    sim = max_sim(q, items[index]) if len(index) else np.zeros((len(q), 0), np.float32)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # stable: lower index first on ties
    return np.take_along_axis(sim, order, axis=1), index[order]
