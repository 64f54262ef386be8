"""API docs that work offline: Swagger UI served from the package, under a CSP made for it.

FastAPI's own ``/docs`` loads Swagger UI from a CDN, which leaves a blank page on an air-gapped
machine. Here the page is FastAPI's ``get_swagger_ui_html`` pointed at the copy of
``swagger-ui-dist`` vendored in ``static/vendor/swagger-ui`` (version and checksums in its
README.md). Its one inline script is allowed by its hash, nothing else inline, nothing remote.
ReDoc has no local copy: ``/redoc`` redirects to ``/docs`` instead of showing a blank page.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse

SWAGGER_UI_VERSION = "5.35.0"
SWAGGER_UI_ASSETS = "/static/vendor/swagger-ui"

# Images: the stylesheet's data: icons, and blob: for image responses shown by "Try it out".
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self' {hashes}; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def install_docs(app: FastAPI) -> None:
    """Add ``GET /docs`` (Swagger UI from local files) and ``GET /redoc`` (a redirect to it).

    The app must be created with ``docs_url=None, redoc_url=None`` so that these replace
    FastAPI's CDN pages.
    """

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        html, csp = docs_page(root, app.openapi_url or "/openapi.json", f"{app.title} - API docs")
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> RedirectResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}/docs", status_code=307)


@functools.lru_cache(maxsize=8)
def docs_page(root: str, openapi_url: str, title: str) -> tuple[str, str]:
    """The Swagger UI page for a root path, and the CSP that lets exactly its scripts run."""
    page = get_swagger_ui_html(
        openapi_url=root + openapi_url,
        title=title,
        swagger_js_url=f"{root}{SWAGGER_UI_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{SWAGGER_UI_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{SWAGGER_UI_ASSETS}/favicon-32x32.png",
        # The validator badge would send the schema to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode("utf-8")
    hashes = " ".join(f"'sha256-{_sha256(s)}'" for s in _INLINE_SCRIPT.findall(html))
    return html, DOCS_CSP.format(hashes=hashes)


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
