"""Indexes: vectors behind one backend interface (FAISS, Milvus), and lexical BM25 indexes beside them.

``build_index`` / ``load_index`` / ``Index`` are what callers use; a backend only stores vectors
at integer positions, and :class:`Index` adds string ids, item metadata and the manifest.
"""

from xmr.index.base import (
    AUTO_EXACT_MAX,
    INDEX_BACKENDS,
    IndexBackend,
    exact_search,
    get_backend,
    list_index_backends,
    register_index_backend,
)
from xmr.index.bm25_index import BM25Index, build_bm25_index, is_bm25_spec, load_bm25_index
from xmr.index.building import build_index, measure_recall
from xmr.index.faiss_index import resolve_auto_spec
from xmr.index.multivector import exact_item_search, search_items
from xmr.index.opening import is_lexical, open_index
from xmr.index.store import Hit, Index, check_same_model, load_index

__all__ = [
    "AUTO_EXACT_MAX",
    "BM25Index",
    "INDEX_BACKENDS",
    "Hit",
    "Index",
    "IndexBackend",
    "build_bm25_index",
    "build_index",
    "exact_item_search",
    "exact_search",
    "get_backend",
    "check_same_model",
    "is_bm25_spec",
    "is_lexical",
    "list_index_backends",
    "load_bm25_index",
    "load_index",
    "measure_recall",
    "open_index",
    "register_index_backend",
    "resolve_auto_spec",
    "search_items",
]
