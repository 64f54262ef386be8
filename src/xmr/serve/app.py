"""The application: a :class:`~xmr.serve.service.SearchService` behind FastAPI.

``create_app(index_dir_or_searcher, settings)`` builds it; ``xmr serve`` runs it on uvicorn. The
layers: :mod:`xmr.serve.http` (bodies, errors, headers), :mod:`xmr.serve.models` (request
bodies, which also make the OpenAPI schema), :mod:`xmr.serve.routes` (one function per
endpoint), :mod:`xmr.serve.service` (what the endpoints do, usable without an app). The index
is only read unless writes were explicitly allowed.
"""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from xmr.search import Searcher
from xmr.serve.docs import install_docs
from xmr.serve.http import HeadAsGet, SecurityHeaders, install_error_handlers
from xmr.serve.limits import ServeSettings
from xmr.serve.routes import router
from xmr.serve.service import SearchService

STATIC_DIR = Path(str(resources.files("xmr.serve") / "static"))


def create_app(
    index: str | Path | Searcher | SearchService,
    settings: ServeSettings | None = None,
    *,
    reranker: Any = None,
) -> FastAPI:
    """Build the search service.

    Args:
        index: an index directory written by ``xmr index build``, a loaded
            :class:`xmr.search.Searcher`, or a :class:`~xmr.serve.service.SearchService`
            (whose own settings then apply).
        settings: limits, batching and write permission; defaults are safe for a public host.
            ``settings.rerank`` (a cross-encoder spec) turns on two-stage search.
        reranker: a loaded :class:`~xmr.models.cross_encoders.CrossEncoder` to use instead of
            loading ``settings.rerank``.

    Returns:
        A FastAPI application; run it with uvicorn or test it with ``TestClient``. Its
        ``state.service`` is the SearchService.
    """
    if isinstance(index, SearchService):
        svc = index
    else:
        settings = settings or ServeSettings()
        if reranker is not None:
            name = getattr(reranker, "spec", "") or type(reranker).__name__
            settings = dataclasses.replace(settings, rerank=name)
        svc = SearchService.create(index, settings, reranker=reranker)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        svc.close()

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
    app.state.service = svc
    app.state.settings = svc.settings
    install_error_handlers(app)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HeadAsGet)
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    install_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _version() -> str:
    from xmr import __version__

    return __version__
