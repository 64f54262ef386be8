"""Connecting to Milvus and writing its filter expressions safely (used by the Milvus backend).

The server's token comes from an environment variable (``XMR_MILVUS_TOKEN`` unless told
otherwise) and is never written anywhere; credentials inside the URI are refused. Every failure
to reach a server or open a milvus-lite database is one :class:`~xmr.errors.XmrError` naming
the URI.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from xmr.errors import XmrError

TOKEN_ENV = "XMR_MILVUS_TOKEN"
TIMEOUT_ENV = "XMR_MILVUS_TIMEOUT"
DEFAULT_TIMEOUT = 10.0
DEFAULT_COLLECTION = "xmr_items"
_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def import_pymilvus():
    try:
        import pymilvus
    except ImportError:  # pragma: no cover - depends on the environment
        raise XmrError(
            "the Milvus index needs pymilvus (and milvus-lite for an embedded database): "
            "pip install 'xmr[milvus]'"
        ) from None
    return pymilvus


def string_literal(value: str) -> str:
    """``value`` as a double-quoted Milvus string literal: backslashes, quotes and the line
    breaks the server's grammar forbids inside a literal are escaped, so no value can end the
    literal and add to the expression."""
    escaped = (
        str(value)
        .replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def category_filter(category: str | None) -> str:
    """The filter expression keeping one category ('' for none)."""
    return "" if category is None else f"category == {string_literal(category)}"


def connect(uri: str, *, timeout: float | None = None, token_env: str = TOKEN_ENV):
    """A ``MilvusClient`` on ``uri`` (a server URL or a milvus-lite ``.db`` path); a server that
    is down or refuses is one XmrError naming the URI."""
    pymilvus = import_pymilvus()
    lite = is_lite(uri)
    if not lite and urlsplit(uri).password is not None:
        raise XmrError(
            f"the Milvus URI carries a password; give it in ${token_env} (user:password or a "
            "token) instead, so that it is never written into the index manifest"
        )
    timeout = float(timeout or os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    # pymilvus logs every failed call with its traceback at ERROR; xmr raises one clear error
    # for it instead, so its log stays quiet unless a user turned it up on purpose.
    quiet = logging.getLogger("pymilvus")
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.CRITICAL)
    token = "" if lite else os.environ.get(token_env, "")
    try:
        return pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException and grpc errors
        what = "open the milvus-lite database" if lite else "connect to the Milvus server"
        hint = (
            " (milvus-lite lets one process at a time open a database: is another xmr command "
            "or service using this index? several processes need a Milvus server, --uri)"
            if lite
            else ""
        )
        raise XmrError(f"cannot {what} at {uri}: {error_message(exc)}{hint}") from None


def is_lite(uri: str) -> bool:
    """True for a milvus-lite database path (pymilvus' own rule: it ends in ``.db``)."""
    return str(uri).endswith(".db")


def check_collection_name(name: str) -> str:
    """Milvus' rule for collection names (letters, digits, underscores; not a digit first)."""
    if not _COLLECTION_NAME.match(str(name)):
        raise XmrError(
            f"'{name}' is not a Milvus collection name (letters, digits and underscores, "
            "starting with a letter or underscore, at most 255 characters)"
        )
    return str(name)


def collection_for(directory: str | Path) -> str:
    """A default collection name from an index directory's name (``xmr_`` + its letters)."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(directory).name) or "items"
    return check_collection_name(f"xmr_{stem}"[:200])


def error_message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(msg).strip().splitlines()[0]
