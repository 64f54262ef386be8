"""The search service: an HTTP API and a web page over an index (behind the ``[serve]`` extra).

``create_app(index_dir_or_searcher, settings)`` returns a FastAPI application; ``xmr serve``
runs it on uvicorn. :class:`~xmr.serve.service.SearchService` is what its routes call, usable
without an app. FastAPI is imported only when one of them is used.
"""

from __future__ import annotations

import os
from typing import Any

from xmr.serve.limits import INDEX_ENV, SETTINGS_ENV, ServeSettings

__all__ = ["SearchService", "ServeSettings", "app_from_env", "create_app"]


def create_app(index: Any, settings: ServeSettings | None = None, *, reranker: Any = None) -> Any:
    """Build the FastAPI app; see :func:`xmr.serve.app.create_app`."""
    from xmr.serve.app import create_app as _create_app

    return _create_app(index, settings, reranker=reranker)


def app_from_env() -> Any:
    """The app of one ``xmr serve --processes N`` process, configured through the environment."""
    settings = ServeSettings.from_env(os.environ.get(SETTINGS_ENV, "{}"))
    return create_app(os.environ[INDEX_ENV], settings)


def __getattr__(name: str) -> Any:
    # PEP 562: SearchService needs starlette, so it loads on first use.
    if name == "SearchService":
        from xmr.serve.service import SearchService

        return SearchService
    raise AttributeError(f"module 'xmr.serve' has no attribute {name!r}")
