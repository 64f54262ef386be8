"""The interface every vector index backend implements, and the registry that names them.

A backend stores float32 vectors at consecutive integer *positions* (0, 1, 2, ... in insertion
order) and searches them by inner product. It knows nothing of string ids or metadata: those
belong to :class:`xmr.index.Index`, which maps positions to ids and writes the index directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from xmr.registry import Registry
from xmr.vectors import l2_normalize

INDEX_BACKENDS: Registry = Registry("index backend")
register_index_backend = INDEX_BACKENDS.register

# Below this many vectors `auto` builds an exact (Flat) index: brute force over 50k x 512 floats
# takes a few milliseconds a query, and exact search costs no recall.
AUTO_EXACT_MAX = 50_000


class IndexBackend(ABC):
    """Vectors at positions ``0..ntotal-1``, searched by inner product.

    Subclasses are registered with ``@register_index_backend(name)`` and created through
    :meth:`create` (a new, empty index) or :meth:`load` (from a directory written by :meth:`save`).
    """

    name: str = ""

    @classmethod
    @abstractmethod
    def create(cls, dim: int, spec: str, *, n_expected: int = 0, **options: Any) -> IndexBackend:
        """A new empty index of type ``spec`` (``auto`` is resolved for ``n_expected`` vectors)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> IndexBackend:
        """Read the files :meth:`save` wrote into ``directory``."""

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

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the manifest records: the resolved type, search parameters, device."""


def resolve_auto_spec(n: int, *, exact_max: int = AUTO_EXACT_MAX) -> tuple[str, str]:
    """The index type ``auto`` picks for ``n`` vectors, and why, in words.

    Exact search up to ``exact_max`` vectors; above, an inverted file with ~4*sqrt(n) lists,
    which trains in seconds and appends new vectors without a rebuild (faiss' own guidance for
    1M-scale collections). Past 5M vectors the lists hold 8-bit scalar-quantised codes so the
    index fits in memory (4x smaller, recall barely changes on CLIP embeddings).
    """
    if n < exact_max:
        return "Flat", f"{n} vectors < {exact_max}: exact search (Flat)"
    nlist = max(16, int(round(4 * np.sqrt(n))))
    if n >= 5_000_000:
        spec = f"IVF{nlist},SQ8"
        why = f"{n} vectors >= 5000000: inverted file with {nlist} lists of 8-bit codes ({spec})"
    else:
        spec = f"IVF{nlist},Flat"
        why = f"{n} vectors >= {exact_max}: inverted file with {nlist} lists ({spec})"
    return spec, why


def normalise(vectors: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy with each row scaled to unit L2 norm (zero rows stay zero)."""
    x = l2_normalize(vectors)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    return x
