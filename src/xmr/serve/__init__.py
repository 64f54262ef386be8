"""The search service: an HTTP API and a web page over an index (behind the ``[serve]`` extra).

``create_app(index_dir_or_searcher, settings)`` returns a FastAPI application; ``xmr serve``
runs it on uvicorn. FastAPI is imported only when an app is built.
"""

from __future__ import annotations

import os
from typing import Any

from xmr.serve.limits import INDEX_ENV, SETTINGS_ENV, ServeSettings

__all__ = ["ServeSettings", "app_from_env", "create_app"]


def create_app(index: Any, settings: ServeSettings | None = None, *, reranker: Any = None) -> Any:
    """Build the FastAPI app; see :func:`xmr.serve.app.create_app`."""
    from xmr.serve.app import create_app as _create_app

    return _create_app(index, settings, reranker=reranker)


def app_from_env() -> Any:
    """The app of one ``xmr serve --processes N`` process, configured through the environment."""
    settings = ServeSettings.from_env(os.environ.get(SETTINGS_ENV, "{}"))
    return create_app(os.environ[INDEX_ENV], settings)
