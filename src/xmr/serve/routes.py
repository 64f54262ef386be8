"""The routes: each one parses its request (:mod:`xmr.serve.http`, :mod:`xmr.serve.models`),
calls the :class:`~xmr.serve.service.SearchService` and answers. No searching happens here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from xmr.serve.http import (
    MAX_JSON_BYTES,
    authorise_write,
    content_type,
    parse_form,
    parse_json_object,
    read_body,
)
from xmr.serve.limits import ApiError
from xmr.serve.models import AddItemForm, ImageSearchForm, SearchRequest, request_body_doc
from xmr.serve.service import SearchService

router = APIRouter()

_SEARCH_BODY = request_body_doc(
    "A JSON object (a text query `q`, or `item_id`: query by the example of an indexed item), "
    "or a multipart form with an image file field `image` (query by image). `rerank` turns "
    "the service's cross-encoder on or off for this query; `rerank_k` rescores fewer "
    "first-stage results than the service's; `mode` (dense, bm25, hybrid) picks the text "
    "search where a BM25 index is served.",
    {"application/json": SearchRequest, "multipart/form-data": ImageSearchForm},
)
_ADD_BODY = request_body_doc(
    "A multipart form: the image file `image`, its `id`, an optional `caption` and `category`.",
    {"multipart/form-data": AddItemForm},
)


def service(request: Request) -> SearchService:
    return request.app.state.service


# --- the service ------------------------------------------------------------------------------


@router.get("/api/health", tags=["service"])
async def health(svc: SearchService = Depends(service)) -> dict[str, Any]:
    """Liveness: the index is loaded and answers."""
    return svc.health()


@router.get("/api/info", tags=["service"])
async def info(svc: SearchService = Depends(service)) -> dict[str, Any]:
    """The model (a name and fingerprint), index type, size and dimension, categories, the
    service's limits, batching and reranker."""
    return await run_in_threadpool(svc.info)


# --- searching --------------------------------------------------------------------------------


@router.get("/api/search", tags=["search"])
async def search_get(
    q: str | None = Query(None, description="The query text."),
    k: str | None = Query(None, description="How many results (1..max_k)."),
    category: str | None = Query(None, description="Only items of this category."),
    rerank: str | None = Query(
        None,
        description="true/false: rerank with the service's cross-encoder (default: on when the "
        "service was started with --rerank).",
    ),
    rerank_k: str | None = Query(
        None, description="How many first-stage results to rerank (1..the service's)."
    ),
    mode: str | None = Query(
        None,
        description="dense (the model and the vector index), bm25 (the BM25 index) or hybrid "
        "(both, fused); the default is the first the service can do.",
    ),
    svc: SearchService = Depends(service),
) -> JSONResponse:
    """Search the images by a text query."""
    params = {"q": q, "k": k, "category": category, "rerank": rerank, "rerank_k": rerank_k}
    if mode is not None:
        params["mode"] = mode
    request = SearchRequest.parse(params, svc.context())
    # A Response skips FastAPI's per-field encoding: a few thousand results stay cheap.
    return JSONResponse(await svc.search(request))


@router.post("/api/search", tags=["search"], openapi_extra=_SEARCH_BODY)
async def search_post(request: Request, svc: SearchService = Depends(service)) -> JSONResponse:
    """Search by text, by an uploaded image, or by the example of an indexed item."""
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        body = await read_body(request, svc.settings.max_upload_bytes)
        fields, files = await parse_form(request, body)
        if set(fields) & {"q", "item_id"}:
            raise ApiError(
                400, "ambiguous_query", "an image upload is the query: send no q or item_id"
            )
        upload = files.pop("image", None) or files.pop("file", None)
        filename, data = upload if upload is not None else ("upload", None)
        # As for JSON bodies: a misspelt field (or file field) is an error, not ignored.
        form = ImageSearchForm.parse({**fields, **files, "image": data}, svc.context())
        return JSONResponse(await svc.search_image(form, filename))
    if ctype not in ("application/json", ""):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send application/json or multipart/form-data (an image upload)",
        )
    payload = parse_json_object(await read_body(request, MAX_JSON_BYTES))
    return JSONResponse(await svc.search(SearchRequest.parse(payload, svc.context())))


# --- items ------------------------------------------------------------------------------------


@router.get("/api/items/{item_id:path}/image", tags=["items"])
async def item_image(
    request: Request, item_id: str, size: str | None = None, svc: SearchService = Depends(service)
) -> Response:
    """The item's image (``?size=thumb`` for a thumbnail)."""
    if size not in (None, "", "full", "original", "thumb", "thumbnail"):
        raise ApiError(400, "bad_size", "size must be 'thumb' or 'full'", field="size")
    return await _image(request, svc, item_id, thumb=size in ("thumb", "thumbnail"))


@router.get("/api/items/{item_id:path}/thumbnail", tags=["items"])
async def item_thumbnail(
    request: Request, item_id: str, svc: SearchService = Depends(service)
) -> Response:
    """A JPEG thumbnail of the item's image, at most ``thumb_size`` pixels on a side."""
    return await _image(request, svc, item_id, thumb=True)


async def _image(request: Request, svc: SearchService, item_id: str, *, thumb: bool) -> Response:
    body = await svc.item_image(item_id, thumb=thumb)
    headers = {"ETag": body.etag, "Cache-Control": "public, max-age=86400"}
    if request.headers.get("if-none-match") == body.etag:
        return Response(status_code=304, headers=headers)
    return Response(body.data, media_type=body.media_type, headers=headers)


@router.get("/api/items/{item_id:path}", tags=["items"])
async def item_info(item_id: str, svc: SearchService = Depends(service)) -> dict[str, Any]:
    """The item's metadata: captions, attribute, category and its image URLs."""
    return await run_in_threadpool(svc.item_json, item_id)


@router.delete("/api/items/{item_id:path}", tags=["items"])
async def delete_item(
    request: Request, item_id: str, svc: SearchService = Depends(service)
) -> dict[str, Any]:
    """Delete an item from the index (only with ``--allow-writes`` and the bearer token). All
    or nothing: a failed write is a 500 ``write_failed`` and leaves the index as it was."""
    authorise_write(request, svc.settings)
    return await svc.delete_item(item_id)


@router.post("/api/items", tags=["items"], openapi_extra=_ADD_BODY)
async def add_item(request: Request, svc: SearchService = Depends(service)) -> dict[str, Any]:
    """Add an image to the index (only with ``--allow-writes`` and the bearer token). All or
    nothing: a failed write is a 500 ``write_failed`` and leaves the index as it was."""
    authorise_write(request, svc.settings)
    body = await read_body(request, svc.settings.max_upload_bytes)
    fields, files = await parse_form(request, body)
    upload = files.pop("image", None)
    form = AddItemForm.parse(
        {"id": None, **fields, **files, "image": upload[1] if upload else None}, svc.context()
    )
    return await svc.add_item(form)
