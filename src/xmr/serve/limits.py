"""The service's settings and the checks that turn bad input into clear 4xx JSON errors."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class ServeSettings:
    """What ``xmr serve`` and :func:`xmr.serve.create_app` are configured with.

    Attributes:
        max_k: the largest number of results one query may ask for.
        default_k: the number of results when a query names none.
        max_query_chars: the longest text query accepted (after stripping whitespace).
        max_upload_bytes: the largest request body (an uploaded image, a JSON body).
        max_upload_pixels: the largest uploaded image (width * height) that is decoded.
        batching: collect concurrent text queries into one encoder call.
        batch_wait_ms: how long the first query of a batch waits for company.
        max_batch: the most queries one encoder call takes.
        encoder_threads: threads that run encoder calls off the event loop.
        thumb_size: the longest side of a thumbnail, in pixels.
        thumb_cache_bytes: memory for encoded thumbnails kept for reuse.
        device: where the query encoder runs (``cpu``, ``cuda``).
        allow_writes: accept requests that add to the index (needs ``token``).
        token: the bearer token a write request must carry.
        upload_dir: where added images are stored (default: ``INDEX_DIR.uploads`` beside it).
    """

    max_k: int = 100
    default_k: int = 20
    max_query_chars: int = 512
    max_upload_bytes: int = 10 * 1024 * 1024
    max_upload_pixels: int = 40_000_000
    batching: bool = True
    batch_wait_ms: float = 5.0
    max_batch: int = 64
    encoder_threads: int = 1
    thumb_size: int = 256
    thumb_cache_bytes: int = 64 * 1024 * 1024
    device: str = "cpu"
    allow_writes: bool = False
    token: str | None = None
    upload_dir: str | None = None

    def __post_init__(self) -> None:
        from xmr.errors import XmrError

        if self.max_k < 1:
            raise XmrError(f"max_k must be at least 1, not {self.max_k}")
        self.default_k = max(1, min(self.default_k, self.max_k))
        if self.max_batch < 1 or self.batch_wait_ms < 0:
            raise XmrError("max_batch must be >= 1 and batch_wait_ms >= 0")
        if self.allow_writes and not self.token:
            raise XmrError("--allow-writes needs a token (--token T or XMR_SERVE_TOKEN)")
        if self.token is not None and len(self.token) < 8:
            raise XmrError("the write token must be at least 8 characters long")

    def public(self) -> dict[str, Any]:
        """The settings a client may see (never the token)."""
        out = asdict(self)
        out.pop("token")
        return out

    def to_env(self) -> str:
        import json

        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> ServeSettings:
        import json

        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


SETTINGS_ENV = "XMR_SERVE_SETTINGS"
INDEX_ENV = "XMR_SERVE_INDEX"
TOKEN_ENV = "XMR_SERVE_TOKEN"


def token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


class ApiError(Exception):
    """A client error: HTTP status, a machine-readable code, a message, the field at fault."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field:
            err["field"] = self.field
        # ``detail`` too, as FastAPI's own errors carry one.
        return {"error": err, "detail": self.message}


def check_k(k: Any, settings: ServeSettings) -> int:
    if k is None or k == "":
        return settings.default_k
    if isinstance(k, bool):
        raise ApiError(400, "bad_k", "k must be an integer", field="k")
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, str):
        try:
            k = int(k.strip())
        except ValueError:
            raise ApiError(400, "bad_k", f"k must be an integer, not {k!r}", field="k") from None
    if not isinstance(k, int):
        raise ApiError(400, "bad_k", "k must be an integer", field="k")
    if k < 1:
        raise ApiError(400, "k_too_small", f"k must be at least 1, not {k}", field="k")
    if k > settings.max_k:
        raise ApiError(
            400, "k_too_large", f"k must be at most {settings.max_k}, not {k}", field="k"
        )
    return k


def check_query(q: Any, settings: ServeSettings, *, required: bool = True) -> str | None:
    if q is None:
        if required:
            raise ApiError(400, "empty_query", "the query text q is missing", field="q")
        return None
    if not isinstance(q, str):
        raise ApiError(400, "bad_query", "the query text q must be a string", field="q")
    text = q.strip()
    if not text:
        if required:
            raise ApiError(400, "empty_query", "the query text q is empty", field="q")
        return None
    if "\x00" in text:
        raise ApiError(400, "bad_query", "the query text contains a NUL character", field="q")
    if len(text) > settings.max_query_chars:
        raise ApiError(
            400,
            "query_too_long",
            f"the query is {len(text)} characters long; the limit is {settings.max_query_chars}",
            field="q",
        )
    return text


def check_category(category: Any, known: dict[str, int]) -> str | None:
    if category is None or category == "":
        return None
    if not isinstance(category, str):
        raise ApiError(400, "bad_category", "category must be a string", field="category")
    if category not in known:
        choices = ", ".join(sorted(known)) if known else "none: this index has no categories"
        raise ApiError(
            400,
            "unknown_category",
            f"unknown category {category[:80]!r} (known: {choices})",
            field="category",
        )
    return category
