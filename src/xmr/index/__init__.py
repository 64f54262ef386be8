"""Vector indexes: one interface, backends in a registry (FAISS is the default and only one yet).

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
from xmr.index.faiss_index import resolve_auto_spec
from xmr.index.store import Hit, Index, build_index, check_same_model, load_index, measure_recall

__all__ = [
    "AUTO_EXACT_MAX",
    "INDEX_BACKENDS",
    "Hit",
    "Index",
    "IndexBackend",
    "build_index",
    "exact_search",
    "get_backend",
    "check_same_model",
    "list_index_backends",
    "load_index",
    "measure_recall",
    "register_index_backend",
    "resolve_auto_spec",
]
