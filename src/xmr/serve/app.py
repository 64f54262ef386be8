"""The HTTP API and the web page: FastAPI routes over a :class:`~xmr.serve.backend.SearchBackend`.

``create_app(index_dir_or_searcher, settings)`` builds the application; ``xmr serve`` runs it on
uvicorn. Every client error is a 4xx JSON body ``{"error": {"status", "code", "message",
"field"}, "detail": message}``; the index is only read unless writes were explicitly allowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from xmr.errors import DataError, XmrError
from xmr.serve.backend import RerankJob, SearchBackend, TextQuery
from xmr.serve.batching import MicroBatcher
from xmr.serve.docs import install_docs
from xmr.serve.images import ImageStore
from xmr.serve.limits import (
    ApiError,
    ServeSettings,
    check_category,
    check_k,
    check_mode,
    check_query,
    check_rerank,
)

log = logging.getLogger("xmr.serve")

STATIC_DIR = Path(str(resources.files("xmr.serve") / "static"))

# The page loads only its own script, style and images; nothing inline, nothing remote.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

# A search's JSON body is a few short fields; anything bigger is not a search.
MAX_JSON_BYTES = 64 * 1024

_SEARCH_BODY_DOC = {
    "requestBody": {
        "description": (
            "A JSON body {q, k, category, item_id, rerank, rerank_k} (text query, or query by "
            "the example of an indexed item), or a multipart form with an image file field "
            "`image` (query by image) and optional `k`, `category`, `rerank` and `rerank_k` "
            "fields. `rerank` (true/false) turns the service's cross-encoder on or off for this "
            "query; `rerank_k` rescores fewer first-stage results than the service's --rerank-k."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "q": {"type": "string"},
                        "k": {"type": "integer", "minimum": 1},
                        "category": {"type": "string"},
                        "item_id": {"type": "string"},
                        "rerank": {"type": "boolean"},
                        "rerank_k": {"type": "integer", "minimum": 1},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "k": {"type": "integer"},
                        "category": {"type": "string"},
                        "rerank": {"type": "string"},
                        "rerank_k": {"type": "integer"},
                    },
                    "required": ["image"],
                }
            },
        },
    }
}


def _text_search_options(settings: ServeSettings) -> dict[str, Any]:
    """The Searcher's BM25 / hybrid keywords from the settings."""
    out: dict[str, Any] = {"hybrid": settings.hybrid, "rrf_k": settings.rrf_k}
    if settings.bm25_index:
        out["bm25_index"] = settings.bm25_index
    if settings.hybrid_weights is not None:
        out["hybrid_weights"] = list(settings.hybrid_weights)
    return out


def create_app(
    index: str | Path | Any,
    settings: ServeSettings | None = None,
    *,
    reranker: Any = None,
) -> FastAPI:
    """Build the search service.

    Args:
        index: an index directory written by ``xmr index build``, or a loaded
            :class:`xmr.search.Searcher` (or a :class:`~xmr.serve.backend.SearchBackend`).
        settings: limits, batching and write permission; defaults are safe for a public host.
            ``settings.rerank`` (a cross-encoder spec) turns on two-stage search.
        reranker: a loaded :class:`~xmr.models.cross_encoders.CrossEncoder` to use instead of
            loading ``settings.rerank``.

    Returns:
        A FastAPI application; run it with uvicorn or test it with ``TestClient``.
    """
    settings = settings or ServeSettings()
    if reranker is not None:
        settings = dataclasses.replace(
            settings, rerank=getattr(reranker, "spec", "") or type(reranker).__name__
        )
    if isinstance(index, SearchBackend):
        backend = index
    elif isinstance(index, (str, Path)):
        backend = SearchBackend.load(
            index, device=settings.device, **_text_search_options(settings)
        )
    else:
        backend = SearchBackend.from_searcher(index)
    backend.writable = settings.allow_writes
    if settings.rerank:
        backend.set_reranker(
            reranker if reranker is not None else settings.rerank,
            mode=settings.rerank_mode,
            alpha=settings.rerank_alpha,
            batch_size=settings.rerank_batch_size,
            device=settings.device,
        )

    text_batcher: MicroBatcher[TextQuery, list[tuple[str, float]]] = MicroBatcher(
        backend.search_texts,
        max_batch=settings.max_batch,
        max_wait_ms=settings.batch_wait_ms,
        enabled=settings.batching,
        threads=settings.encoder_threads,
        name="xmr-text",
    )
    image_batcher: MicroBatcher[Any, np.ndarray] = MicroBatcher(
        lambda images: list(backend.encode_images(images)),
        max_batch=min(settings.max_batch, 16),
        max_wait_ms=settings.batch_wait_ms,
        enabled=settings.batching,
        threads=1,
        name="xmr-image",
    )
    # The cross-encoder runs in its own thread; the queries that wait together share its batches.
    rerank_batcher: MicroBatcher[RerankJob, list[dict[str, Any]]] = MicroBatcher(
        backend.rerank,
        max_batch=settings.rerank_max_queries,
        max_wait_ms=settings.batch_wait_ms,
        enabled=settings.batching,
        threads=1,
        name="xmr-rerank",
    )
    images = ImageStore(thumb_size=settings.thumb_size, cache_bytes=settings.thumb_cache_bytes)
    write_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        text_batcher.close()
        image_batcher.close()
        rerank_batcher.close()

    app = FastAPI(
        title="xmr search",
        version=_version(),
        description="Cross-modal retrieval: find images from text, images or examples.",
        lifespan=lifespan,
        # FastAPI's own pages load Swagger UI / ReDoc from a CDN: blank offline. See docs.py.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.settings = settings
    app.state.backend = backend
    app.state.text_batcher = text_batcher
    app.state.image_batcher = image_batcher
    app.state.rerank_batcher = rerank_batcher

    _install_error_handlers(app)

    app.add_middleware(SecurityHeaders)

    # -- helpers ---------------------------------------------------------------------------

    def result_of(item_id: str, score: float) -> dict[str, Any]:
        rec = backend.item(item_id) or {"id": item_id}
        captions = list(rec.get("captions") or [])
        attribute = rec.get("attribute")
        enc = quote(item_id, safe="")
        has_image = bool(rec.get("image"))
        return {
            "id": item_id,
            "score": round(float(score), 6),
            "image_url": f"/api/items/{enc}/image" if has_image else None,
            "thumbnail_url": f"/api/items/{enc}/thumbnail" if has_image else None,
            "caption": captions[0] if captions else attribute,
            "captions": captions,
            "attribute": attribute,
            "category": rec.get("category"),
        }

    async def run_search(
        vector: np.ndarray, k: int, category: str | None, *, exclude: str | None = None
    ) -> list[tuple[str, float]]:
        fetch = k + 1 if exclude is not None else k
        rows = await run_in_threadpool(
            backend.search_vectors, vector[None, :], fetch, category=category
        )
        return [(i, s) for i, s in rows[0] if i != exclude][:k]

    def rerank_plan(
        rerank: Any, rerank_k: Any, *, text_query: bool
    ) -> tuple[int | None, dict[str, Any] | None]:
        """The reranking depth of a query (None: first stage only) and what the response says
        about it (None when the service has no reranker)."""
        depth, explicit = check_rerank(rerank, rerank_k, settings)
        if not settings.rerank:
            return None, None
        about: dict[str, Any] = {
            "model": getattr(backend.reranker, "spec", None) or settings.rerank,
            "mode": settings.rerank_mode,
            "applied": False,
        }
        if depth is None:
            about["reason"] = "turned off by the request"
            return None, about
        why = backend.rerank_unavailable(text_query)
        if why is not None:
            if explicit:
                raise ApiError(400, "rerank_unavailable", why, field="rerank")
            about["reason"] = why
            return None, about
        about.update(applied=True, k=depth)
        return depth, about

    async def second_stage(
        query: Any, hits: list[tuple[str, float]], k: int, depth: int | None
    ) -> list[dict[str, Any]]:
        """Results for ``hits`` (the first stage, at least ``k`` deep, and ``depth`` deep when
        reranking): the cross-encoder rescores the first ``depth``, off the event loop."""
        if depth is None:
            return [result_of(i, s) for i, s in hits[:k]]
        rows = await rerank_batcher.submit(RerankJob(query, hits, depth))
        results = []
        for row in rows[:k]:
            out = result_of(row["id"], row["score"])
            out["first_stage_score"] = round(float(row["first_stage_score"]), 6)
            out["first_stage_rank"] = row["first_stage_rank"]
            prob = row.get("match_prob")
            out["match_prob"] = None if prob is None else round(float(prob), 6)
            out["reranked"] = bool(row["reranked"])
            results.append(out)
        return results

    def respond(
        query: dict[str, Any],
        k: int,
        category,
        results,
        started: float,
        rerank: dict[str, Any] | None = None,
    ) -> JSONResponse:
        # A Response skips FastAPI's per-field encoding: a few thousand results stay cheap.
        return JSONResponse(
            {
                "results": results,
                "query": query,
                "k": k,
                "category": category,
                "count": len(results),
                "rerank": rerank,
                "took_ms": round((time.perf_counter() - started) * 1000.0, 3),
            }
        )

    def known_item(item_id: Any) -> str:
        if not isinstance(item_id, str) or not item_id or backend.item(item_id) is None:
            shown = item_id[:80] if isinstance(item_id, str) else item_id
            raise ApiError(404, "unknown_item", f"no item with id {shown!r}", field="item_id")
        return item_id

    async def example_vector(item_id: str) -> np.ndarray:
        vec = await run_in_threadpool(backend.item_vector, item_id)
        if vec is not None:
            return vec
        ref = backend.image_ref(item_id)
        if ref is None:
            raise ApiError(
                400,
                "no_example",
                f"item {item_id!r} has no stored vector or image",
                field="item_id",
            )
        img = await run_in_threadpool(ref.open)
        return await image_batcher.submit(img)

    async def text_search(
        q: Any,
        k: Any,
        category: Any,
        started: float,
        rerank: Any = None,
        rerank_k: Any = None,
        mode: Any = None,
    ) -> JSONResponse:
        k = check_k(k, settings)
        text = check_query(q, settings)
        category = check_category(category, backend.categories())
        mode = check_mode(mode, backend.modes)
        depth, about = rerank_plan(rerank, rerank_k, text_query=True)
        # One batched call encodes the text and searches the index (no second thread hop).
        hits = await text_batcher.submit(TextQuery(text, max(k, depth or 0), category, mode))
        results = await second_stage(text, hits, k, depth)
        query = {"type": "text", "text": text}
        if mode is not None or backend.modes != ["dense"]:  # say which ran where there is a choice
            query["mode"] = mode or backend.modes[0]
        return respond(query, k, category, results, started, about)

    # -- routes: API -----------------------------------------------------------------------

    @app.get("/api/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness: the index is loaded and answers."""
        return {"status": "ok", "items": len(backend)}

    @app.get("/api/info", tags=["service"])
    async def info() -> dict[str, Any]:
        """The model spec, index type, size and dimension, categories and the service's limits."""
        out = backend.info()
        out["limits"] = {
            "max_k": settings.max_k,
            "default_k": settings.default_k,
            "max_query_chars": settings.max_query_chars,
            "max_upload_bytes": settings.max_upload_bytes,
        }
        out["batching"] = {
            "enabled": settings.batching,
            "wait_ms": settings.batch_wait_ms,
            "max_batch": settings.max_batch,
            "text_calls": text_batcher.stats.as_dict(),
        }
        out["writes"] = settings.allow_writes
        rerank = backend.rerank_info()
        if rerank is not None:
            rerank["k"] = settings.rerank_k
            rerank["max_k"] = settings.rerank_k
            rerank["calls"] = rerank_batcher.stats.as_dict()
        out["rerank"] = rerank
        return out

    @app.get("/api/search", tags=["search"])
    async def search_get(
        q: str | None = Query(None, description="The query text."),
        k: str | None = Query(None, description="How many results (1..max_k)."),
        category: str | None = Query(None, description="Only items of this category."),
        rerank: str | None = Query(
            None,
            description="true/false: rerank with the service's cross-encoder (default: on "
            "when the service was started with --rerank).",
        ),
        rerank_k: str | None = Query(
            None, description="How many first-stage results to rerank (1..the service's)."
        ),
        mode: str | None = Query(
            None,
            description="dense (the model and the vector index), bm25 (the BM25 index) or "
            "hybrid (both, fused); the default is the first the service can do.",
        ),
    ) -> JSONResponse:
        """Search the images by a text query."""
        return await text_search(q, k, category, time.perf_counter(), rerank, rerank_k, mode)

    @app.post("/api/search", tags=["search"], openapi_extra=_SEARCH_BODY_DOC)
    async def search_post(request: Request) -> JSONResponse:
        """Search by text, by an uploaded image, or by the example of an indexed item."""
        started = time.perf_counter()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            body = await _read_body(request, settings.max_upload_bytes)
            return await image_search(request, body, started)
        if ctype not in ("application/json", ""):
            raise ApiError(
                415,
                "unsupported_media_type",
                "send application/json or multipart/form-data (an image upload)",
            )
        body = await _read_body(request, MAX_JSON_BYTES)
        payload = _parse_json(body)
        if not isinstance(payload, dict):
            raise ApiError(400, "bad_json", "the JSON body must be an object {q, k, ...}")
        unknown = set(payload) - {"q", "k", "category", "item_id", "rerank", "rerank_k", "mode"}
        if unknown:
            raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
        if payload.get("item_id") is not None:
            if payload.get("q") not in (None, ""):
                raise ApiError(400, "ambiguous_query", "send either q or item_id, not both")
            k = check_k(payload.get("k"), settings)
            category = check_category(payload.get("category"), backend.categories())
            item_id = known_item(payload["item_id"])
            # The example's own image is the query of the second stage.
            has_image = backend.image_ref(item_id) is not None
            depth, about = rerank_plan(
                payload.get("rerank"), payload.get("rerank_k"), text_query=False
            )
            if depth is not None and not has_image:
                if payload.get("rerank") or payload.get("rerank_k"):
                    raise ApiError(
                        400,
                        "rerank_unavailable",
                        f"item {item_id!r} has no image for the cross-encoder to read",
                        field="rerank",
                    )
                depth = None
                about = {**about, "applied": False, "reason": "the example has no image"}
                about.pop("k", None)
            vector = await example_vector(item_id)
            hits = await run_search(vector, max(k, depth or 0), category, exclude=item_id)
            query_image = None
            if depth is not None:
                query_image = await run_in_threadpool(backend.image_ref(item_id).open)
            results = await second_stage(query_image, hits, k, depth)
            query = {"type": "item", "item_id": item_id}
            return respond(query, k, category, results, started, about)
        return await text_search(
            payload.get("q"),
            payload.get("k"),
            payload.get("category"),
            started,
            payload.get("rerank"),
            payload.get("rerank_k"),
            payload.get("mode"),
        )

    async def image_search(request: Request, body: bytes, started: float) -> JSONResponse:
        form = await _parse_form(request, body)
        try:
            unknown = set(form.keys()) - {"image", "file", "k", "category", "rerank", "rerank_k"}
            if unknown & {"q", "item_id"}:
                raise ApiError(
                    400, "ambiguous_query", "an image upload is the query: send no q or item_id"
                )
            if unknown:  # as for JSON bodies: a misspelt field is an error, not ignored
                raise ApiError(
                    400, "unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}"
                )
            upload = form.get("image") or form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "bad_upload", "the form has no image file field 'image'")
            k = check_k(form.get("k"), settings)
            category = check_category(form.get("category"), backend.categories())
            depth, about = rerank_plan(form.get("rerank"), form.get("rerank_k"), text_query=False)
            data = await upload.read()
            filename = (upload.filename or "upload")[:200]
        finally:
            await form.close()
        if not data:
            raise ApiError(400, "bad_upload", "the uploaded image is empty", field="image")
        img = await run_in_threadpool(_decode_upload, data, settings.max_upload_pixels)
        vector = await image_batcher.submit(img)
        hits = await run_search(vector, max(k, depth or 0), category)
        results = await second_stage(img, hits, k, depth)
        query = {"type": "image", "filename": filename, "width": img.width, "height": img.height}
        return respond(query, k, category, results, started, about)

    @app.get("/api/items/{item_id:path}/image", tags=["items"])
    async def item_image(request: Request, item_id: str, size: str | None = None) -> Response:
        """The item's image (``?size=thumb`` for a thumbnail)."""
        if size not in (None, "", "full", "original", "thumb", "thumbnail"):
            raise ApiError(400, "bad_size", "size must be 'thumb' or 'full'", field="size")
        return await serve_image(request, item_id, thumb=size in ("thumb", "thumbnail"))

    @app.get("/api/items/{item_id:path}/thumbnail", tags=["items"])
    async def item_thumbnail(request: Request, item_id: str) -> Response:
        """A JPEG thumbnail of the item's image, at most ``thumb_size`` pixels on a side."""
        return await serve_image(request, item_id, thumb=True)

    async def serve_image(request: Request, item_id: str, *, thumb: bool) -> Response:
        known_item(item_id)
        ref = backend.image_ref(item_id)
        if ref is None:
            raise ApiError(404, "no_image", f"item {item_id!r} has no image")
        try:
            body = await run_in_threadpool(
                images.thumbnail if thumb else images.original, item_id, ref
            )
        except DataError as exc:
            log.warning("cannot serve the image of %r: %s", item_id, exc)
            raise ApiError(
                404, "image_unavailable", f"the image of {item_id!r} cannot be read"
            ) from None
        headers = {"ETag": body.etag, "Cache-Control": "public, max-age=86400"}
        if request.headers.get("if-none-match") == body.etag:
            return Response(status_code=304, headers=headers)
        return Response(body.data, media_type=body.media_type, headers=headers)

    @app.get("/api/items/{item_id:path}", tags=["items"])
    async def item_info(item_id: str) -> dict[str, Any]:
        """The item's metadata: captions, attribute, category and its image URLs."""
        known_item(item_id)
        out = result_of(item_id, 0.0)
        out.pop("score")
        return out

    @app.post("/api/items", tags=["items"])
    async def add_item(request: Request) -> dict[str, Any]:
        """Add an image to the index (only with ``--allow-writes`` and the bearer token)."""
        _authorise_write(request, settings)
        body = await _read_body(request, settings.max_upload_bytes)
        form = await _parse_form(request, body)
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "bad_upload", "the form has no image file field 'image'")
            item_id = str(form.get("id") or "").strip()
            caption = str(form.get("caption") or "").strip()
            category = str(form.get("category") or "").strip() or None
            data = await upload.read()
        finally:
            await form.close()
        if not item_id or len(item_id) > 200 or not item_id.isprintable():
            raise ApiError(400, "bad_id", "the form needs an 'id' (1-200 printable characters)")
        if backend.item(item_id) is not None:
            raise ApiError(409, "duplicate_id", f"an item with id {item_id!r} already exists")
        if len(caption) > settings.max_query_chars:
            raise ApiError(400, "caption_too_long", "the caption is too long", field="caption")
        img = await run_in_threadpool(_decode_upload, data, settings.max_upload_pixels)
        async with write_lock:
            await run_in_threadpool(
                backend.add_item,
                item_id,
                data,
                img,
                caption,
                category,
                upload_dir(backend, settings),
            )
        return {"added": item_id, "items": len(backend)}

    # -- routes: page ----------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    install_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def upload_dir(backend: SearchBackend, settings: ServeSettings) -> Path:
    """Where added images are kept: beside the index directory, never inside it (an index
    directory is replaced whole on save)."""
    if settings.upload_dir:
        return Path(settings.upload_dir)
    if backend.index.path is None:
        raise ApiError(409, "no_index_dir", "this index was not loaded from a directory")
    p = Path(backend.index.path)
    return p.parent / f"{p.name}.uploads"


class SecurityHeaders:
    """Plain ASGI middleware (cheaper per request than ``@app.middleware``): no MIME sniffing,
    no referrer, and a strict CSP and no framing for the page and its static files. ``/docs``
    sets its own CSP (it allows the docs page's inline script by hash) and gets no framing."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        page = path in ("/", "/index.html", "/docs") or path.startswith("/static/")

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if page:
                    extra += [
                        (b"content-security-policy", PAGE_CSP.encode()),
                        (b"x-frame-options", b"DENY"),
                    ]
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- request parsing ---------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (checked while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise ApiError(400, "bad_request", "bad Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the request body is over the limit of {limit} bytes")


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "bad_json", "the request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise ApiError(400, "bad_json", f"the request body is not valid JSON{where}") from None


async def _parse_form(request: Request, body: bytes):
    """Parse a multipart body already read (and size-checked) by :func:`_read_body`."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=2, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's bad upload
        if isinstance(exc, ApiError):
            raise
        raise ApiError(400, "bad_upload", f"cannot parse the multipart form ({exc})") from None


def _decode_upload(data: bytes, max_pixels: int):
    """Decode an uploaded image, refusing decompression bombs before any pixel is decoded."""
    import io
    import warnings

    from PIL import Image

    from xmr.data.images import decode_image

    try:
        # Only the header is read here; the size is checked before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
    except Exception:  # noqa: BLE001 - reported below by decode_image's clear message
        w = h = 0
    if w * h > max_pixels:
        raise ApiError(
            400,
            "bad_upload",
            f"the image is {w}x{h} pixels, over the limit of {max_pixels}",
            field="image",
        )
    try:
        return decode_image(data, source="upload")
    except DataError as exc:
        raise ApiError(400, "bad_upload", exc.message, field="image") from None


def _authorise_write(request: Request, settings: ServeSettings) -> None:
    if not settings.allow_writes or not settings.token:
        raise ApiError(403, "read_only", "this service is read-only (start it with --allow-writes)")
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), settings.token.encode()
    ):
        raise ApiError(403, "forbidden", "a valid 'Authorization: Bearer TOKEN' header is required")


# -- errors ------------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path"))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        err = ApiError(400, "bad_request", "; ".join(parts) or "bad request")
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        err = ApiError(exc.status_code, code, str(exc.detail))
        return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(XmrError)
    async def xmr_error(_request: Request, exc: XmrError) -> JSONResponse:
        err = ApiError(400, "bad_request", str(exc))
        return JSONResponse(err.body(), status_code=400)


def _version() -> str:
    from xmr import __version__

    return __version__
