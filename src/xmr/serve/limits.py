"""The service's settings and the checks that turn bad input into clear 4xx JSON errors."""

from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from xmr.errors import DataError, XmrError
from xmr.rerank import RERANK_MODES


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
        rerank: a cross-encoder spec (``xmr.models.cross_encoders``) that rescores the first
            ``rerank_k`` results of every query, or None for one-stage search.
        rerank_k: how many first-stage results are rescored by default; also the most a request
            may ask for (``rerank_k`` in the request can only lower it).
        rerank_mode: ``itm`` (match probability) or ``itm+sim`` (see :mod:`xmr.rerank`).
        rerank_alpha: the weight of the first-stage similarity in ``itm+sim``.
        rerank_batch_size: (image, text) pairs per cross-encoder forward pass.
        rerank_max_queries: the most queries whose pairs share one cross-encoder call.
        bm25_index: a BM25 index directory of the same items, loaded beside a vector index so
            that ``?mode=bm25|hybrid`` work (a BM25 index given as the index needs none).
        hybrid: ``rrf`` or ``weighted`` (:mod:`xmr.fusion.hybrid`); ``hybrid_weights`` (dense,
            bm25) and ``rrf_k`` its parameters.
        show_model_path: name the models in ``/api/info`` and on the page by their full spec,
            which for a local model is its absolute path on the server. Off by default: a
            local model is shown by its directory name and a short weights fingerprint.
        attribute_names: what each position of a 0/1 attribute vector means (Track2
            pedestrians), so results show the names of the set attributes instead of the bits.
        draft: JPEG draft decoding of query and uploaded images: None follows the index
            (``source.preprocessing.jpeg_draft``); True or False must agree with it.
        runtime: the query encoder's text tower runtime, ``eager`` (PyTorch) or ``onnx`` (ONNX
            Runtime on the CPU, :func:`xmr.models.create_encoder`).
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
    rerank: str | None = None
    rerank_k: int = 16
    rerank_mode: str = "itm"
    rerank_alpha: float = 1.0
    rerank_batch_size: int = 32
    rerank_max_queries: int = 8
    bm25_index: str | None = None
    hybrid: str = "rrf"
    hybrid_weights: tuple[float, float] | None = None
    rrf_k: int = 60
    show_model_path: bool = False
    attribute_names: list[str] | None = None
    draft: bool | None = None
    runtime: str = "eager"

    def __post_init__(self) -> None:
        if self.max_k < 1:
            raise XmrError(f"max_k must be at least 1, not {self.max_k}")
        self.default_k = max(1, min(self.default_k, self.max_k))
        if self.max_batch < 1 or self.batch_wait_ms < 0:
            raise XmrError("max_batch must be >= 1 and batch_wait_ms >= 0")
        if self.allow_writes and not self.token:
            raise XmrError(f"allow_writes needs a token (or set {TOKEN_ENV})")
        if self.token is not None and len(self.token) < 8:
            raise XmrError("the write token must be at least 8 characters long")
        if self.rerank_k < 1:
            raise XmrError(f"rerank_k must be at least 1, not {self.rerank_k}")
        if self.rerank_mode not in RERANK_MODES:
            raise XmrError(
                f"unknown rerank mode '{self.rerank_mode}' (choose from {', '.join(RERANK_MODES)})"
            )
        if self.rerank_batch_size < 1 or self.rerank_max_queries < 1:
            raise XmrError("rerank_batch_size and rerank_max_queries must be at least 1")
        if self.attribute_names is not None:
            names = list(self.attribute_names)
            if not names or not all(isinstance(n, str) and n.strip() for n in names):
                raise XmrError("attribute_names must be a non-empty list of names")
            self.attribute_names = [n.strip() for n in names]

    def public(self) -> dict[str, Any]:
        """The settings a client may see (never the token)."""
        out = asdict(self)
        out.pop("token")
        return out

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> ServeSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def public_model_name(
    spec: str | None, fingerprint: str | None = None, *, show_path: bool = False
) -> str | None:
    """A model as clients see it: its spec, except that a local path is cut to its last
    component and a short weights fingerprint (``hf:model@3f2a9c1b0d4e``) unless ``show_path``
    (the operator's ``--show-model-path``): the server's file layout is nobody's business."""
    if not spec or show_path:
        return spec
    prefix, sep, rest = spec.rpartition(":") if ":" in spec else ("", "", spec)
    if not (rest.startswith(("/", "./", "../", "~")) or Path(rest).exists()):
        return spec  # a hub id or a registered name says nothing about the server
    name = Path(rest.rstrip("/")).name or "model"
    short = (fingerprint or "").rpartition(":")[2][:12]
    return f"{prefix}{sep}{name}@{short}" if short else f"{prefix}{sep}{name}"


SETTINGS_ENV = "XMR_SERVE_SETTINGS"
INDEX_ENV = "XMR_SERVE_INDEX"
TOKEN_ENV = "XMR_SERVE_TOKEN"


def check_listen_address(host: str, port: int) -> None:
    """Fail before the model loads when the service could not listen on ``host:port``: a port
    out of range (uvicorn would wrap it), an unknown host, an address in use. Binds a socket
    the way uvicorn does (SO_REUSEADDR) and closes it again."""
    if not 0 <= int(port) <= 65535:
        raise XmrError(f"the port must be between 0 and 65535, not {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise XmrError(f"cannot listen on {host}:{port}: {reason}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = " (another server runs there: choose another port)"
            reason = (exc.strerror or str(exc)) + (hint if exc.errno == errno.EADDRINUSE else "")
            raise XmrError(f"cannot listen on {host}:{port}: {reason}") from None


def read_attribute_names(path: str | os.PathLike) -> list[str]:
    """The names of an attribute vector's positions from ``path``: a JSON list of names, a JSON
    object holding one under ``pedestrian_vector`` or ``attribute_names`` (the synth.json of
    ``xmr data synth`` declares its layout so), or a text file with one name per line."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})", file=path, line=exc.lineno) from None
        if isinstance(data, dict):
            data = data.get("attribute_names", data.get("pedestrian_vector"))
        names = data if isinstance(data, list) else None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(
            "expected a list of attribute names (a JSON list, an object with "
            "'pedestrian_vector', or one name per line)",
            file=path,
        )
    return [n.strip() for n in names]


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
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a JSON "\\ud800" escape
        raise ApiError(
            400, "bad_query", "the query text is not valid Unicode (lone surrogate)", field="q"
        ) from None
    if "\ufffd" in text:
        # The server decodes a URL's bytes with errors="replace": U+FFFD means the client sent
        # bytes that are not UTF-8 (e.g. ?q=%FF), and searching the replacement finds nonsense.
        raise ApiError(
            400,
            "bad_query",
            "the query text is not valid UTF-8 (it holds U+FFFD replacement characters)",
            field="q",
        )
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


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_rerank(rerank: Any) -> bool | None:
    """A request's ``rerank``: a JSON boolean or a form/query string (true/false, 1/0, yes/no,
    on/off); None or an empty string means "as the service is configured"."""
    if isinstance(rerank, str):
        word = rerank.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        if word == "":
            return None
        raise ApiError(
            400, "bad_rerank", f"rerank must be true or false, not {rerank[:20]!r}", field="rerank"
        )
    if rerank is not None and not isinstance(rerank, bool):
        raise ApiError(400, "bad_rerank", "rerank must be true or false", field="rerank")
    return rerank


def parse_rerank_k(rerank_k: Any) -> int | None:
    return None if rerank_k in (None, "") else _positive_int(rerank_k, "rerank_k")


def check_rerank(
    rerank: bool | None, rerank_k: int | None, settings: ServeSettings
) -> tuple[int | None, bool]:
    """``(depth, explicit)``: the reranking depth a request asks for (None: one stage, else
    ``1..settings.rerank_k``) and whether the request asked for reranking itself. ``rerank_k``
    may lower the service's depth (and asks for reranking)."""
    if rerank_k is not None and rerank is None:
        rerank = True  # asking for a depth is asking for reranking
    if rerank is False:
        return None, False
    if not settings.rerank:
        if rerank:
            field = "rerank" if rerank_k is None else "rerank_k"
            raise ApiError(
                400,
                "no_reranker",
                "this service has no reranker (start it with --rerank MODEL)",
                field=field,
            )
        return None, False
    if rerank_k is None:
        return settings.rerank_k, bool(rerank)
    if rerank_k > settings.rerank_k:
        raise ApiError(
            400,
            "rerank_k_too_large",
            f"rerank_k must be at most {settings.rerank_k}, not {rerank_k}",
            field="rerank_k",
        )
    return rerank_k, True


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ApiError(400, f"bad_{field}", f"{field} must be an integer", field=field)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ApiError(
                400, f"bad_{field}", f"{field} must be an integer, not {value[:20]!r}", field=field
            ) from None
    if not isinstance(value, int):
        raise ApiError(400, f"bad_{field}", f"{field} must be an integer", field=field)
    if value < 1:
        raise ApiError(400, f"bad_{field}", f"{field} must be at least 1, not {value}", field=field)
    return value


def check_mode(mode: Any, available: list[str]) -> str | None:
    """A text search mode the service can do (``dense``, ``bm25``, ``hybrid``) or None."""
    if mode is None or mode == "":
        return None
    if not isinstance(mode, str) or mode not in ("dense", "bm25", "hybrid"):
        raise ApiError(400, "bad_mode", "mode must be dense, bm25 or hybrid", field="mode")
    if mode not in available:
        raise ApiError(
            400,
            "mode_unavailable",
            f"mode {mode!r} is not available here (this service does: {', '.join(available)})",
            field="mode",
        )
    return mode
