"""The second stage on top of a Searcher: a cross-encoder rescores each query's first-stage top K.

The algorithm and its formulas are :mod:`xmr.rerank`; this module feeds it a Searcher's results
(item images for text queries, item captions for image queries) and turns what it returns back
into :class:`~xmr.search.results.SearchResult` lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xmr.errors import XmrError
from xmr.models.cross_encoders import create_cross_encoder
from xmr.rerank import DEFAULT_RERANK_K, RERANK_MODES, rerank_many
from xmr.search.results import SearchResult

if TYPE_CHECKING:
    from xmr.search.searcher import Searcher


@dataclass(frozen=True)
class Reranker:
    """A cross-encoder and how it rescores the first stage (formulas in :mod:`xmr.rerank`).

    Attributes:
        cross_encoder: a loaded :class:`~xmr.models.cross_encoders.CrossEncoder`.
        k: how many first-stage results are rescored unless a call asks for another depth.
        mode: ``itm`` (match probability) or ``itm+sim`` (ITM logit + alpha * similarity).
        alpha: the weight of the first-stage similarity in ``itm+sim``.
        batch_size: (image, text) pairs per cross-encoder forward pass.
    """

    cross_encoder: Any
    k: int = DEFAULT_RERANK_K
    mode: str = "itm"
    alpha: float = 1.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if int(self.k) < 1:
            raise XmrError(f"the reranking depth k must be at least 1, not {self.k}")
        if self.mode not in RERANK_MODES:
            raise XmrError(
                f"unknown rerank mode '{self.mode}' (choose from {', '.join(RERANK_MODES)})"
            )
        if int(self.batch_size) < 1:
            raise XmrError(f"the rerank batch size must be at least 1, not {self.batch_size}")

    @classmethod
    def create(cls, cross_encoder: Any, *, device: str | None = None, **options: Any) -> Reranker:
        """A Reranker from a cross-encoder spec (loaded here) or a loaded cross-encoder."""
        if isinstance(cross_encoder, str | Path):
            cross_encoder = create_cross_encoder(str(cross_encoder), device=device)
        return cls(cross_encoder, **options)

    @property
    def spec(self) -> str:
        return getattr(self.cross_encoder, "spec", "") or type(self.cross_encoder).__name__


def searcher_lookup(searcher: Searcher, *, text_queries: bool) -> Callable[[str], Any]:
    """id -> the item's image (text queries) or its first caption (image queries)."""

    def image(item_id: str) -> Any:
        ref = searcher.image_ref(item_id)
        if ref is None:
            raise XmrError(f"rerank: item '{item_id}' has no image for the cross-encoder to read")
        return ref

    def caption(item_id: str) -> str:
        captions = searcher.item(item_id).get("captions") or []
        if not captions:
            raise XmrError(
                f"rerank: item '{item_id}' has no caption; an image query is reranked against "
                "item captions"
            )
        return captions[0]

    return image if text_queries else caption


def rerank_results(
    searcher: Searcher,
    queries: Sequence[Any],
    first_stage: Sequence[Sequence[SearchResult]],
    reranker: Reranker,
    depth: int | Sequence[int] | None = None,
) -> list[list[SearchResult]]:
    """:meth:`Searcher.rerank <xmr.search.Searcher.rerank>`: the queries of one kind (text or
    image) and depth go to :func:`xmr.rerank.rerank_many` together, so their pairs share
    cross-encoder batches."""
    if len(queries) != len(first_stage):
        raise XmrError(f"rerank: {len(queries)} queries but {len(first_stage)} result lists")
    if depth is None or isinstance(depth, int):
        depths = [int(depth if depth is not None else reranker.k)] * len(queries)
    else:
        depths = [int(d) for d in depth]
        if len(depths) != len(queries):
            raise XmrError(f"rerank: {len(queries)} queries but {len(depths)} depths")
    out: list[list[SearchResult]] = [[] for _ in queries]
    groups: dict[tuple[bool, int], list[int]] = {}
    for i, query in enumerate(queries):
        groups.setdefault((isinstance(query, str), depths[i]), []).append(i)
    for (text_queries, k), rows in groups.items():
        by_id = [{r.id: r for r in first_stage[i]} for i in rows]
        reranked = rerank_many(
            [queries[i] for i in rows],
            [[(r.id, r.score) for r in first_stage[i]] for i in rows],
            reranker.cross_encoder,
            lookup=searcher_lookup(searcher, text_queries=text_queries),
            k=k,
            mode=reranker.mode,
            alpha=reranker.alpha,
            batch_size=reranker.batch_size,
        )
        for i, results, row in zip(rows, by_id, reranked, strict=True):
            out[i] = [
                replace(
                    results[r["id"]],
                    score=r["score"],
                    rank=rank,
                    first_stage_score=r["first_stage_score"],
                    first_stage_rank=results[r["id"]].rank,
                    match_prob=r.get("match_prob"),
                    reranked=r["reranked"],
                )
                for rank, r in enumerate(row, 1)
            ]
    return out


def search_reranked(
    searcher: Searcher,
    queries: Sequence[Any],
    cross_encoder: Any,
    *,
    k: int = 10,
    rerank_k: int = DEFAULT_RERANK_K,
    mode: str = "itm",
    alpha: float = 1.0,
    category: str | None = None,
    batch_size: int = 32,
) -> list[list[SearchResult]]:
    """:meth:`Searcher.search_reranked` with a cross-encoder (loaded or a spec) given here."""
    reranker = Reranker.create(
        cross_encoder, k=rerank_k, mode=mode, alpha=alpha, batch_size=batch_size
    )
    return searcher.search_reranked(
        queries, k, rerank_k=rerank_k, category=category, reranker=reranker
    )
