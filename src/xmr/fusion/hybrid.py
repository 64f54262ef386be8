"""Hybrid retrieval: fuse the ranked lists of several retrievers (dense + BM25) into one.

Two modes, over ranked lists ``L_1..L_m`` (best first) with weights ``w_i`` (default all 1 for
``rrf``, all ``1/m`` for ``weighted``):

* ``rrf`` (reciprocal rank fusion, Cormack et al. 2009)::

      score(d) = sum_i  w_i / (k + rank_i(d))        (rank 1-based; k = 60 by default)

  a list that does not hold ``d`` adds nothing. Only ranks matter, so scores of different
  scales (cosine in [-1, 1], BM25 unbounded) need no calibration.
* ``weighted`` (convex combination of normalised scores)::

      norm_i(d) = (s_i(d) - min L_i) / (max L_i - min L_i)     (1 when the list's scores are all equal)
      score(d)  = sum_i  w_i * norm_i(d)                        (0 for a list that lacks d)

  min and max are over what the list returned (its top candidates), as in most hybrid
  search engines' min-max normalisation.

The fused list is sorted by score descending; ties keep the order in which documents first
appear when the lists are read rank by rank, first list first (dense before BM25 as xmr passes
them). Each fused hit keeps every list's rank and score (None where it was not retrieved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xmr.errors import XmrError

HYBRID_MODES = ("rrf", "weighted")
RRF_K = 60
# How many candidates each retriever contributes before fusion (at least the k asked for).
HYBRID_DEPTH = 100


@dataclass
class FusedHit:
    id: str
    score: float
    ranks: list[int | None] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)


def _check(lists: Sequence[Sequence[tuple[str, float]]], weights: Sequence[float] | None, m: str):
    if not lists:
        raise XmrError("hybrid fusion needs at least one ranked list")
    if weights is None:
        return [1.0 if m == "rrf" else 1.0 / len(lists)] * len(lists)
    weights = [float(w) for w in weights]
    if len(weights) != len(lists) or any(w < 0 for w in weights):
        raise XmrError(
            f"hybrid fusion needs one weight >= 0 per ranked list ({len(lists)}), got {weights}"
        )
    return weights


def _first_seen(lists: Sequence[Sequence[tuple[str, float]]]) -> dict[str, int]:
    order: dict[str, int] = {}
    for rank in range(max((len(x) for x in lists), default=0)):
        for ranked in lists:
            if rank < len(ranked):
                order.setdefault(ranked[rank][0], len(order))
    return order


def fuse_ranked_lists(
    lists: Sequence[Sequence[tuple[str, float]]],
    *,
    mode: str = "rrf",
    weights: Sequence[float] | None = None,
    rrf_k: int = RRF_K,
    k: int | None = None,
) -> list[FusedHit]:
    """Fuse ranked ``(id, score)`` lists (best first) by ``mode`` (see the module docstring);
    the best ``k`` (all when None)."""
    if mode not in HYBRID_MODES:
        raise XmrError(f"unknown hybrid mode '{mode}' (choose from {', '.join(HYBRID_MODES)})")
    if rrf_k < 0:
        raise XmrError(f"rrf_k must be >= 0, got {rrf_k}")
    weights = _check(lists, weights, mode)
    order = _first_seen(lists)
    hits = {d: FusedHit(d, 0.0, [None] * len(lists), [None] * len(lists)) for d in order}
    for i, (ranked, w) in enumerate(zip(lists, weights, strict=True)):
        if not ranked:
            continue
        values = [float(s) for _, s in ranked]
        lo, hi = min(values), max(values)
        for rank, (doc, score) in enumerate(ranked, 1):
            hit = hits[doc]
            if hit.ranks[i] is not None:
                continue  # a repeated id counts at its first rank
            hit.ranks[i], hit.scores[i] = rank, float(score)
            if mode == "rrf":
                hit.score += w / (rrf_k + rank)
            else:
                hit.score += w * ((float(score) - lo) / (hi - lo) if hi > lo else 1.0)
    fused = sorted(hits.values(), key=lambda h: (-h.score, order[h.id]))
    return fused if k is None else fused[:k]
