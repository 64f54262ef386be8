"""The Searcher's second stage: which queries can be reranked, rescoring first-stage lists
with a cross-encoder, and two-stage search (the composition is in :mod:`xmr.search.reranking`).

A mixin of :class:`xmr.search.Searcher`: it uses the Searcher's index, reranker, locks and
first-stage search methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xmr.errors import XmrError
from xmr.search.modes import check_k
from xmr.search.reranking import Reranker, rerank_results
from xmr.search.results import SearchResult


class SearcherSecondStage:
    """:meth:`rerank`, :meth:`search_reranked` and the side counts of :class:`xmr.search.Searcher`."""

    def missing_sides(self) -> dict[str, int]:
        """How many items have no image and how many no caption: a text query is reranked
        against item images, an image query against item captions, so each direction needs
        every item to have that side. Counted once, then kept up to date by :meth:`add_item`."""
        with self._index_lock:
            if self._missing is None:
                no_image = sum(not rec.get("image") for rec in self.index.items)
                no_caption = sum(not rec.get("captions") for rec in self.index.items)
                self._missing = {"image": no_image, "caption": no_caption}
            return dict(self._missing)

    def rerank_unavailable(self, text_queries: bool) -> str | None:
        """Why queries of this kind (texts, or images) cannot be reranked, or None."""
        if self.reranker is None:
            return "no reranker is set"
        side = "image" if text_queries else "caption"
        missing = self.missing_sides()[side]
        if not missing:
            return None
        kind, pairs = ("text", "images") if text_queries else ("image", "captions")
        return (
            f"{kind} queries cannot be reranked: the cross-encoder reads item {pairs}, and "
            f"{missing} of the {len(self)} indexed items have no {side}"
        )

    def rerank(
        self,
        queries: Sequence[Any],
        first_stage: Sequence[Sequence[SearchResult]],
        *,
        depth: int | Sequence[int] | None = None,
        reranker: Reranker | None = None,
    ) -> list[list[SearchResult]]:
        """Rescore the first ``depth`` results of each query's first-stage list.

        Args:
            queries: texts (scored against item images) or images (PIL, path, bytes, ImageRef:
                scored against item captions); the two kinds may be mixed.
            first_stage: each query's results, best first (from a search of this Searcher).
            depth: how many to rescore, one for all or one per query (default: the reranker's
                ``k``).
            reranker: instead of the Searcher's own.

        Returns:
            New result lists in the final order (``rank`` renumbered, second-stage fields set);
            the queries of one kind and depth share cross-encoder batches.
        """
        second = reranker or self.reranker
        if second is None:
            raise XmrError("no reranker: give the Searcher one, or pass reranker=")
        with self._reranker_lock:
            return rerank_results(self, queries, first_stage, second, depth)

    def search_reranked(
        self,
        queries: Sequence[Any],
        k: int = 10,
        *,
        rerank_k: int | None = None,
        category: str | None = None,
        reranker: Reranker | None = None,
        mode: str | None = None,
    ) -> list[list[SearchResult]]:
        """Two-stage search: retrieve ``max(k, rerank_k)`` per query (text queries in ``mode``:
        dense, bm25 or hybrid), rescore the first ``rerank_k`` with the cross-encoder, return
        the best ``k``. ``queries`` are all texts or all images; a text cross-encoder (``ce:``)
        reads the items' texts."""
        second = reranker or self.reranker
        if second is None:
            raise XmrError("no reranker: give the Searcher one, or pass reranker=")
        if not queries:
            return []
        text_queries = all(isinstance(q, str) for q in queries)
        if not text_queries and any(isinstance(q, str) for q in queries):
            raise XmrError("rerank: queries must be all texts or all images")
        depth = int(rerank_k if rerank_k is not None else second.k)
        fetch = max(check_k(k), depth)
        if text_queries:
            first = self.search_texts(list(queries), fetch, category=category, mode=mode)
        else:
            first = self.search_images(list(queries), fetch, category=category)
        reranked = self.rerank(queries, first, depth=depth, reranker=second)
        return [row[:k] for row in reranked]
