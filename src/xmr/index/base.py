"""The interface every vector index backend implements, and the registry that names them.

A backend stores float32 vectors at consecutive integer *positions* (0, 1, 2, ... in insertion
order) and searches them by inner product. It knows nothing of string ids or metadata: those
belong to :class:`xmr.index.Index`, which maps positions to ids and writes the index directory.
Everything specific to one engine (its index type strings, what ``auto`` means for it, how
much it trains on, its files) stays inside its backend; what is shared (exact search, recall
measurement against it) lives here and in :mod:`xmr.index.building`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.registry import Registry
from xmr.vectors import l2_normalize

INDEX_BACKENDS: Registry = Registry("index backend")
register_index_backend = INDEX_BACKENDS.register

# Below this many vectors `auto` builds an exact index: brute force over 50k x 512 floats takes a
# few milliseconds a query, and exact search costs no recall.
AUTO_EXACT_MAX = 50_000

# Built-in backends, imported on first use so that naming one never loads another's engine.
BUILTIN_BACKENDS = {"faiss": "xmr.index.faiss_index", "milvus": "xmr.index.milvus_backend"}


def get_backend(name: str) -> type[IndexBackend]:
    """The backend class registered as ``name`` (importing a built-in one on first use)."""
    if name not in INDEX_BACKENDS and name in BUILTIN_BACKENDS:
        importlib.import_module(BUILTIN_BACKENDS[name])
    return INDEX_BACKENDS.get(name)


def list_index_backends() -> list[str]:
    """Names of the registered and built-in backends."""
    return sorted(set(INDEX_BACKENDS.names()) | set(BUILTIN_BACKENDS))


class IndexBackend(ABC):
    """Vectors at positions ``0..ntotal-1``, searched by inner product.

    Subclasses are registered with ``@register_index_backend(name)`` and created through
    :meth:`create` (a new, empty index) or :meth:`load` (from a directory written by :meth:`save`).
    """

    name: str = ""
    # True when search takes ``category=`` itself (a database filter) instead of ``allowed``.
    filters_by_category: bool = False
    # True when the vectors live outside the index directory (a database): Index.save then
    # writes its files in place instead of swapping the whole directory.
    stores_externally: bool = False

    @classmethod
    @abstractmethod
    def create(cls, dim: int, spec: str, *, n_expected: int = 0, **options: Any) -> IndexBackend:
        """A new empty index of type ``spec`` (``auto`` is resolved for ``n_expected`` vectors)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, config: dict[str, Any] | None = None) -> IndexBackend:
        """Read the files :meth:`save` wrote into ``directory``; ``config`` is what
        :meth:`describe` returned when it was saved (with ``gpu_override`` when the caller
        asks for a device)."""

    @classmethod
    def auto_spec(cls, n: int, *, exact_max: int = AUTO_EXACT_MAX) -> tuple[str, str]:
        """The index type ``auto`` means for ``n`` vectors, and why in words. A backend with
        no approximate types always answers its exact one."""
        return "exact", f"{n} vectors: exact search"

    def training_size(self, n: int, requested: int | None = None) -> int:
        """How many of ``n`` vectors :meth:`train` should see (``requested`` when given); an
        XmrError when ``n`` is too few for this index type."""
        return n if requested is None else min(n, requested)

    @abstractmethod
    def save(self, directory: Path) -> list[Path]:
        """Write the index into ``directory`` (an existing empty folder); return the files written."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    @abstractmethod
    def ntotal(self) -> int: ...

    @property
    @abstractmethod
    def is_exact(self) -> bool:
        """True when search returns the exact top-k (brute force)."""

    @property
    @abstractmethod
    def needs_training(self) -> bool: ...

    @abstractmethod
    def train(self, sample: np.ndarray) -> None: ...

    @abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Append vectors at positions ``ntotal..ntotal+len(vectors)-1``."""

    def add_records(
        self, vectors: np.ndarray, ids: Sequence[str], categories: Sequence[str | None]
    ) -> None:
        """Append vectors with their item ids and categories (what :class:`xmr.index.Index`
        calls). A backend that keeps only vectors ignores the rest; a database stores them."""
        self.add(vectors)

    def remove(self, positions: np.ndarray) -> None:
        """Delete the vectors at ``positions`` (sorted, unique); the others keep their order
        and are renumbered ``0..ntotal-1``."""
        raise XmrError(f"the {self.name or type(self).__name__} index cannot delete vectors")

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, positions), each ``[n_queries, k]``; missing hits are position -1.

        ``allowed`` (sorted int64 positions) restricts the search to those positions.
        """

    @abstractmethod
    def reconstruct(self, position: int) -> np.ndarray:
        """The stored vector at ``position`` (approximate for compressed indexes)."""

    def reconstruct_many(self, positions: np.ndarray) -> np.ndarray:
        """The stored vectors at ``positions``, ``[len(positions), dim]`` (a backend with a
        batched read overrides this loop)."""
        rows = [self.reconstruct(int(p)) for p in positions]
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), self.dim)

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the manifest records: the resolved type, search parameters, device."""


def normalise(vectors: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy with each row scaled to unit L2 norm (zero rows stay zero)."""
    x = l2_normalize(vectors)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    return x


def exact_search(
    base: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` inner products (scores, positions), the reference every approximate
    backend is measured against; ties go to the lower position, queries are done ``chunk`` at a
    time so memory stays ``chunk x len(base)``."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(int(k), len(base))
    scores = np.empty((len(q), k), dtype=np.float32)
    positions = np.empty((len(q), k), dtype=np.int64)
    n = len(base)
    for start in range(0, len(q), chunk):
        sim = q[start : start + chunk] @ base.T
        # Every item scoring at least the k-th best is a candidate, so ties at the cut are all
        # seen and the stable sort keeps the lower positions among them.
        kth = np.partition(sim, n - k, axis=1)[:, n - k] if k else np.full(len(sim), np.inf)
        for row, (s_row, t) in enumerate(zip(sim, kth, strict=True)):
            cand = np.flatnonzero(s_row >= t)
            best = cand[np.argsort(-s_row[cand], kind="stable")][:k]
            positions[start + row] = best
            scores[start + row] = s_row[best]
    return scores, positions
