"""The search service without HTTP: what every route does, callable (and tested) without an app.

:class:`SearchService` holds a :class:`~xmr.search.Searcher` (the one search of xmr: the service
never searches, looks up or converts results on its own), the micro-batchers that let concurrent
requests share encoder and cross-encoder calls, the image store, and the service's policy: when
a query is reranked, what a result looks like as JSON (:mod:`xmr.serve.result_json`), what is
shown of the models, how an upload is added. Its ``async`` methods take validated requests (:mod:`xmr.serve.models`) and
return JSON-ready dicts or raise :class:`~xmr.serve.limits.ApiError`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from starlette.concurrency import run_in_threadpool

from xmr.errors import DataError
from xmr.search import Reranker, Searcher, SearchResult, TextQuery
from xmr.serve.batching import MicroBatcher
from xmr.serve.images import ImageBody, ImageStore, decode_upload
from xmr.serve.limits import ApiError, ServeSettings, check_rerank, public_model_name
from xmr.serve.models import AddItemForm, ImageSearchForm, SearchRequest, ValidationContext
from xmr.serve.result_json import record_fields, result_json
from xmr.serve.writes import ItemWriter

log = logging.getLogger("xmr.serve")


class RerankJob(NamedTuple):
    """One query's second stage: ``query`` is a text (scored against item images) or a PIL
    image (scored against item captions); ``results`` the first stage, best first."""

    query: Any
    results: list[SearchResult]
    depth: int


class SearchService:
    """Searching, item lookups and writes, as the HTTP routes need them.

    Args:
        searcher: the Searcher to serve (its reranker is set here from ``settings.rerank``).
        settings: limits, batching, writes and reranking.
        reranker: a loaded cross-encoder to use instead of loading ``settings.rerank``.
    """

    def __init__(self, searcher: Searcher, settings: ServeSettings, *, reranker: Any = None):
        self.searcher = searcher
        self.settings = settings
        if settings.rerank:
            searcher.reranker = Reranker.create(
                reranker if reranker is not None else settings.rerank,
                device=settings.device,
                k=settings.rerank_k,
                mode=settings.rerank_mode,
                alpha=settings.rerank_alpha,
                batch_size=settings.rerank_batch_size,
            )
        batch = {"max_wait_ms": settings.batch_wait_ms, "enabled": settings.batching}
        self.text_batcher: MicroBatcher[TextQuery, list[SearchResult]] = MicroBatcher(
            searcher.search_text_batch,
            max_batch=settings.max_batch,
            threads=settings.encoder_threads,
            name="xmr-text",
            **batch,
        )
        self.image_batcher: MicroBatcher[Any, np.ndarray] = MicroBatcher(
            lambda images: list(searcher.encode_images(images)),
            max_batch=min(settings.max_batch, 16),
            threads=1,
            name="xmr-image",
            **batch,
        )
        # The cross-encoder runs in its own thread; the queries that wait together share batches.
        self.rerank_batcher: MicroBatcher[RerankJob, list[SearchResult]] = MicroBatcher(
            lambda jobs: searcher.rerank(
                [j.query for j in jobs], [j.results for j in jobs], depth=[j.depth for j in jobs]
            ),
            max_batch=settings.rerank_max_queries,
            threads=1,
            name="xmr-rerank",
            **batch,
        )
        self.images = ImageStore(
            thumb_size=settings.thumb_size, cache_bytes=settings.thumb_cache_bytes
        )
        self._writer = ItemWriter(searcher, settings)
        # The event loop never waits for the Searcher's index lock (held while a search runs or
        # an add saves the index): what it needs is kept here, lookups run in worker threads.
        self._refresh()

    @classmethod
    def create(
        cls, index: str | Path | Searcher, settings: ServeSettings | None = None, **kwargs: Any
    ) -> SearchService:
        """A service over an index directory (its model loaded on ``settings.device``) or a
        loaded Searcher."""
        settings = settings or ServeSettings()
        if isinstance(index, str | Path):
            index = Searcher.from_index_dir(
                index,
                device=settings.device,
                draft=settings.draft,
                runtime=settings.runtime,
                **text_search_options(settings),
            )
        if not isinstance(index, Searcher):
            raise TypeError(f"serve an index directory or a Searcher, not {type(index).__name__}")
        return cls(index, settings, **kwargs)

    def _draft_size(self) -> tuple[int, int] | None:
        """Uploads decode as the index's images were (JPEG draft mode only for a draft index)."""
        preprocess = getattr(self.searcher.encoder, "preprocess", None)
        return getattr(preprocess, "draft_size", None)

    def _refresh(self) -> None:
        """Recount what requests are checked against: categories, and which query kinds the
        reranker can take (both change only when an item is added)."""
        self._categories = self.searcher.categories()
        self._rerank_why = {kind: self.searcher.rerank_unavailable(kind) for kind in (True, False)}

    def close(self) -> None:
        for batcher in (self.text_batcher, self.image_batcher, self.rerank_batcher):
            batcher.close()

    def context(self) -> ValidationContext:
        """What requests are validated against (:mod:`xmr.serve.models`); the categories are
        kept here (refreshed after an add), so validating takes no index lock."""
        return ValidationContext(self.settings, self._categories, self.searcher.modes)

    # --- facts ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "items": len(self.searcher)}

    def model_name(self, spec: str | None, fingerprint: str | None = None) -> str | None:
        """How a model is shown to clients (:func:`~xmr.serve.limits.public_model_name`)."""
        return public_model_name(spec, fingerprint, show_path=self.settings.show_model_path)

    def info(self) -> dict[str, Any]:
        """The model, index type, size and dimension, categories and the service's limits."""
        s = self.settings
        info = self.searcher.info()
        info.pop("path", None)  # the server's file layout is nobody's business
        model = info.get("model") or {}
        if not isinstance(model, dict):  # a BM25 index alone: its spec, no neural model
            model = {"spec": model}
        name = self.model_name(model.get("spec"), model.get("fingerprint"))
        info["model"] = {**model, "spec": name}
        out = {
            "model": name,
            "model_fingerprint": model.get("fingerprint"),
            "index_type": (info.get("index") or {}).get("type") or info.get("requested_spec"),
            "size": len(self.searcher),
            "dim": getattr(self.searcher.index, "dim", None),
            "modes": self.searcher.modes,
            "exact": (info.get("index") or {}).get("exact"),
            "categories": self.searcher.categories(),
            "index": info,
            "limits": {
                "max_k": s.max_k,
                "default_k": s.default_k,
                "max_query_chars": s.max_query_chars,
                "max_upload_bytes": s.max_upload_bytes,
            },
            "batching": {
                "enabled": s.batching,
                "wait_ms": s.batch_wait_ms,
                "max_batch": s.max_batch,
                "text_calls": self.text_batcher.stats.as_dict(),
            },
            "writes": s.allow_writes,
            "attribute_names": s.attribute_names,
            "rerank": self.rerank_info(),
        }
        return out

    def rerank_info(self) -> dict[str, Any] | None:
        reranker = self.searcher.reranker
        if reranker is None:
            return None
        describe = getattr(reranker.cross_encoder, "describe", None)
        about = describe() if callable(describe) else {"spec": reranker.spec}
        text_why = self._rerank_why[True]
        image_why = self._rerank_why[False]
        out = {
            "model": self.model_name(about.get("spec") or reranker.spec),
            "backend": about.get("backend"),
            "device": about.get("device"),
            "mode": reranker.mode,
            "alpha": reranker.alpha,
            "batch_size": reranker.batch_size,
            "k": reranker.k,
            "max_k": reranker.k,
            "text_queries": text_why is None,
            "image_queries": image_why is None,
            "calls": self.rerank_batcher.stats.as_dict(),
        }
        if text_why:
            out["text_queries_reason"] = text_why
        if image_why:
            out["image_queries_reason"] = image_why
        return out

    # --- items ----------------------------------------------------------------------------------

    def known_item(self, item_id: Any) -> dict[str, Any]:
        record = self.searcher.get_item(item_id)
        if record is None:
            shown = item_id[:80] if isinstance(item_id, str) else item_id
            raise ApiError(404, "unknown_item", f"no item with id {shown!r}", field="item_id")
        return record

    def item_json(self, item_id: str) -> dict[str, Any]:
        """The item's metadata: captions, attribute, category and its image URLs."""
        record = self.known_item(item_id)
        out = self.result_json(SearchResult(item_id, 0.0, 0, **record_fields(record)))
        out.pop("score")
        return out

    async def item_image(self, item_id: str, *, thumb: bool) -> ImageBody:
        return await run_in_threadpool(self._read_image, item_id, thumb)

    def _read_image(self, item_id: str, thumb: bool) -> ImageBody:
        self.known_item(item_id)
        ref = self.searcher.image_ref(item_id)
        if ref is None:
            raise ApiError(404, "no_image", f"item {item_id!r} has no image")
        read = self.images.thumbnail if thumb else self.images.original
        try:
            return read(item_id, ref)
        except DataError as exc:
            log.warning("cannot serve the image of %r: %s", item_id, exc)
            raise ApiError(
                404, "image_unavailable", f"the image of {item_id!r} cannot be read"
            ) from None

    def _example_image(self, item_id: str) -> Any:
        self.known_item(item_id)
        return self.searcher.image_ref(item_id)

    def result_json(self, r: SearchResult) -> dict[str, Any]:
        """A result as the API shows it (see :func:`xmr.serve.result_json.result_json`)."""
        return result_json(r, self.settings.attribute_names)

    # --- queries --------------------------------------------------------------------------------

    def rerank_plan(
        self, request: Any, *, text_query: bool
    ) -> tuple[int | None, dict[str, Any] | None]:
        """The reranking depth of a query (None: first stage only) and what the response says
        about it (None when the service has no reranker)."""
        depth, explicit = check_rerank(request.rerank, request.rerank_k, self.settings)
        reranker = self.searcher.reranker
        if reranker is None:
            return None, None
        about: dict[str, Any] = {
            "model": self.model_name(reranker.spec),
            "mode": reranker.mode,
            "applied": False,
        }
        if depth is None:
            about["reason"] = "turned off by the request"
            return None, about
        why = self._rerank_why[text_query]
        if why is not None:
            if explicit:
                raise ApiError(400, "rerank_unavailable", why, field="rerank")
            about["reason"] = why
            return None, about
        about.update(applied=True, k=depth)
        return depth, about

    async def _second_stage(
        self, query: Any, first: list[SearchResult], k: int, depth: int | None
    ) -> list[dict[str, Any]]:
        if depth is not None:
            first = await self.rerank_batcher.submit(RerankJob(query, first, depth))
        return [self.result_json(r) for r in first[:k]]

    def _respond(self, query, request, results, started, rerank) -> dict[str, Any]:
        return {
            "results": results,
            "query": query,
            "k": request.k,
            "category": request.category,
            "count": len(results),
            "rerank": rerank,
            "took_ms": round((time.perf_counter() - started) * 1000.0, 3),
        }

    async def search(self, request: SearchRequest) -> dict[str, Any]:
        """A text query, or a query by the example of an indexed item."""
        started = time.perf_counter()
        if request.item_id is not None:
            return await self._search_item(request, started)
        depth, about = self.rerank_plan(request, text_query=True)
        # One batched call encodes the text and searches the index (no second thread hop).
        query = TextQuery(request.q, max(request.k, depth or 0), request.category, request.mode)
        first = await self.text_batcher.submit(query)
        results = await self._second_stage(request.q, first, request.k, depth)
        said: dict[str, Any] = {"type": "text", "text": request.q}
        modes = self.searcher.modes
        if request.mode is not None or modes != ["dense"]:  # say which ran where there is a choice
            said["mode"] = request.mode or modes[0]
        return self._respond(said, request, results, started, about)

    async def _search_item(self, request: SearchRequest, started: float) -> dict[str, Any]:
        item_id = request.item_id
        ref = await run_in_threadpool(self._example_image, item_id)
        depth, about = self.rerank_plan(request, text_query=False)
        if depth is not None and ref is None:  # the example's own image is the second's query
            if request.rerank or request.rerank_k:
                raise ApiError(
                    400,
                    "rerank_unavailable",
                    f"item {item_id!r} has no image for the cross-encoder to read",
                    field="rerank",
                )
            depth, about = None, {**about, "applied": False, "reason": "the example has no image"}
            about.pop("k", None)
        fetch = max(request.k, depth or 0)
        vector = await run_in_threadpool(self.searcher.item_vector, item_id)
        if vector is None:
            if ref is None:
                raise ApiError(400, "no_example", f"item {item_id!r} has no stored vector or image")
            vector = await self.image_batcher.submit(await run_in_threadpool(ref.open))
        first = (
            await run_in_threadpool(
                self.searcher.search_vectors,
                vector[None, :],
                fetch,
                category=request.category,
                exclude=item_id,
            )
        )[0]
        query_image = await run_in_threadpool(ref.open) if depth is not None else None
        results = await self._second_stage(query_image, first, request.k, depth)
        query = {"type": "item", "item_id": item_id}
        return self._respond(query, request, results, started, about)

    async def search_image(self, form: ImageSearchForm, filename: str) -> dict[str, Any]:
        """A query by an uploaded image."""
        started = time.perf_counter()
        depth, about = self.rerank_plan(form, text_query=False)
        img = await run_in_threadpool(
            decode_upload, form.image, self.settings.max_upload_pixels, self._draft_size()
        )
        vector = await self.image_batcher.submit(img)
        fetch = max(form.k, depth or 0)
        first = (
            await run_in_threadpool(
                self.searcher.search_vectors, vector[None, :], fetch, category=form.category
            )
        )[0]
        results = await self._second_stage(img, first, form.k, depth)
        query = {"type": "image", "filename": filename, "width": img.width, "height": img.height}
        return self._respond(query, form, results, started, about)

    # --- writes ---------------------------------------------------------------------------------

    async def add_item(self, form: AddItemForm) -> dict[str, Any]:
        """Add an uploaded image to the index: all or nothing (see :mod:`xmr.serve.writes`)."""
        img = await run_in_threadpool(
            decode_upload, form.image, self.settings.max_upload_pixels, self._draft_size()
        )
        try:
            await run_in_threadpool(self._writer.add, form, img)
        finally:
            await run_in_threadpool(self._refresh)
        return {"added": form.id, "items": len(self.searcher)}

    async def delete_item(self, item_id: str) -> dict[str, Any]:
        """Delete an item from the index: all or nothing (see :mod:`xmr.serve.writes`)."""
        try:
            await run_in_threadpool(self._writer.delete, item_id)
        finally:
            await run_in_threadpool(self._refresh)
        return {"deleted": item_id, "items": len(self.searcher)}


def text_search_options(settings: ServeSettings) -> dict[str, Any]:
    """The Searcher's BM25 / hybrid keywords from the settings."""
    out: dict[str, Any] = {"hybrid": settings.hybrid, "rrf_k": settings.rrf_k}
    if settings.bm25_index:
        out["bm25_index"] = settings.bm25_index
    if settings.hybrid_weights is not None:
        out["hybrid_weights"] = list(settings.hybrid_weights)
    return out
