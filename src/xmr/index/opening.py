"""Open any xmr index directory: a vector :class:`~xmr.index.Index` or a lexical
:class:`~xmr.index.bm25_index.BM25Index`, told apart by the manifest's ``backend``."""

from __future__ import annotations

from pathlib import Path

from xmr.index.bm25_index import BACKEND as BM25_BACKEND
from xmr.index.bm25_index import BM25Index, load_bm25_index
from xmr.index.layout import MANIFEST
from xmr.index.store import Index, load_index
from xmr.io.jsonio import read_json


def is_lexical(index: object) -> bool:
    """True for a text-searched (BM25) index."""
    return isinstance(index, BM25Index)


def open_index(directory: str | Path, *, gpu: bool | None = None) -> Index | BM25Index:
    """Read an index directory of either kind (errors name the directory)."""
    path = Path(directory)
    manifest_file = path / MANIFEST
    if manifest_file.is_file() and read_json(manifest_file).get("backend") == BM25_BACKEND:
        return load_bm25_index(path)
    return load_index(path, gpu=gpu)
