"""The index backend interface carries a second engine without FAISS specifics leaking: a small
numpy backend registered here builds, saves, loads and searches through the same Index code, and
the shared exact search agrees with a plain argsort (ties to the lower position)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xmr.index import (
    IndexBackend,
    build_index,
    exact_search,
    get_backend,
    list_index_backends,
    load_index,
    register_index_backend,
)


class NumpyBackend(IndexBackend):
    """Exact inner-product search over an in-memory array, saved as ``vectors.npy``."""

    name = "numpy-test"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    @classmethod
    def create(cls, dim: int, spec: str, *, n_expected: int = 0, **options: Any):
        assert spec == "exact", spec  # what auto_spec answers for a backend without ANN types
        return cls(np.zeros((0, dim), dtype=np.float32))

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any] | None = None):
        assert config is not None and config["type"] == "exact"
        return cls(np.load(Path(directory) / "vectors.npy"))

    def save(self, directory: Path) -> list[Path]:
        path = Path(directory) / "vectors.npy"
        np.save(path, self.vectors)
        return [path]

    dim = property(lambda self: int(self.vectors.shape[1]))
    ntotal = property(lambda self: int(self.vectors.shape[0]))
    is_exact = property(lambda self: True)
    needs_training = property(lambda self: False)

    def train(self, sample: np.ndarray) -> None:  # pragma: no cover - never needs it
        raise AssertionError("an exact backend is never trained")

    def add(self, vectors: np.ndarray) -> None:
        self.vectors = np.concatenate([self.vectors, vectors.astype(np.float32)])

    def search(self, queries, k, *, allowed=None):
        if allowed is None:
            return exact_search(self.vectors, queries, k)
        scores, pos = exact_search(self.vectors[allowed], queries, k)
        return scores, np.asarray(allowed)[pos]

    def reconstruct(self, position: int) -> np.ndarray:
        return self.vectors[position]

    def describe(self) -> dict[str, Any]:
        return {"type": "exact", "exact": True}


if "numpy-test" not in list_index_backends():
    register_index_backend("numpy-test")(NumpyBackend)


def _reference_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sim = queries @ base.T
    # stable sort of -sim: equal scores keep the lower position first
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def test_exact_search_matches_argsort_with_ties():
    rng = np.random.default_rng(0)
    base = rng.integers(-2, 3, size=(300, 8)).astype(np.float32)  # many exact ties
    queries = rng.integers(-2, 3, size=(50, 8)).astype(np.float32)
    for k in (1, 7, 300):
        scores, positions = exact_search(base, queries, k, chunk=16)
        np.testing.assert_array_equal(positions, _reference_topk(base, queries, k))
        np.testing.assert_allclose(
            scores, np.take_along_axis(queries @ base.T, positions, axis=1), rtol=0, atol=0
        )


def test_second_backend_builds_saves_loads_and_searches(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    ids = [f"item{i}" for i in range(40)]
    items = [{"id": i, "category": "a" if n % 2 else "b"} for n, i in enumerate(ids)]
    index = build_index(x, ids, "auto", items=items, backend="numpy-test")
    assert index.manifest["backend"] == "numpy-test"
    assert index.manifest["index"] == {"type": "exact", "exact": True}
    assert index.manifest["recall"] is None  # exact: nothing to measure
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "vectors.npy").is_file()
    assert not (tmp_path / "idx" / "index.faiss").exists()

    loaded = load_index(tmp_path / "idx")
    assert type(loaded.backend) is NumpyBackend
    faiss_index = build_index(x, ids, "Flat", items=items)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    for category in (None, "a"):
        got = [[h.id for h in row] for row in loaded.search(q, 5, category=category)]
        want = [[h.id for h in row] for row in faiss_index.search(q, 5, category=category)]
        assert got == want


def test_unknown_backend_is_a_clear_error():
    from xmr.errors import XmrError

    with pytest.raises(XmrError, match="unknown index backend 'nope'.*faiss"):
        get_backend("nope")
