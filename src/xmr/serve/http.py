"""The HTTP layer: reading bodies within limits, parsing JSON and forms, the write token, JSON
error answers for everything, security headers and ``HEAD``.

Every error a client can cause is a 4xx JSON body ``{"error": {"status", "code", "message",
"field"}, "detail": message}``; a failure of the service itself is a JSON 500 of the same shape
(never a plain-text page). Nothing here knows about searching.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xmr.errors import XmrError
from xmr.serve.limits import ApiError, ServeSettings

log = logging.getLogger("xmr.serve")

# The page loads only its own script, style and images; nothing inline, nothing remote.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

# A search's JSON body is a few short fields; anything bigger is not a search.
MAX_JSON_BYTES = 64 * 1024


async def read_body(request: Request, limit: int) -> bytes:
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


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise ApiError(400, "bad_json", "the request body is empty; send a JSON object")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise ApiError(400, "bad_json", f"the request body is not valid JSON{where}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "bad_json", "the JSON body must be an object {q, k, ...}")
    return payload


async def parse_form(request: Request, body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse a multipart body already read (and size-checked) by :func:`read_body`: the text
    fields, and the file fields as ``{name: (filename, bytes)}``."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=2, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's bad upload
        raise ApiError(400, "bad_upload", f"cannot parse the multipart form ({exc})") from None
    fields: dict[str, Any] = {}
    files: dict[str, Any] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value
            else:
                files[name] = ((value.filename or "upload")[:200], await value.read())
    finally:
        await form.close()
    return fields, files


def authorise_write(request: Request, settings: ServeSettings) -> None:
    if not settings.allow_writes or not settings.token:
        raise ApiError(403, "read_only", "this service is read-only (start it with --allow-writes)")
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), settings.token.encode()
    ):
        raise ApiError(403, "forbidden", "a valid 'Authorization: Bearer TOKEN' header is required")


def install_error_handlers(app: FastAPI) -> None:
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

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Logged in full here; the client learns only that the service failed.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        err = ApiError(500, "internal_error", f"the service failed ({type(exc).__name__})")
        return JSONResponse(err.body(), status_code=500)


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


class HeadAsGet:
    """Answer ``HEAD`` wherever ``GET`` is answered (health checks and caches send HEAD; FastAPI
    routes declare GET only and said 405): the request runs as a GET and only its status and
    headers are sent, ``Content-Length`` included."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
