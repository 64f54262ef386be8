"""Building an index: option checks, the backend's training sample, adding every item, the
manifest, and recall@10 of an approximate index measured against exact max-sim search."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.index.base import IndexBackend, get_backend
from xmr.index.item_vectors import add_records, check_inputs, vectors_per_item
from xmr.index.layout import FORMAT, FORMAT_VERSION
from xmr.index.multivector import exact_item_search, search_items
from xmr.index.store import Index
from xmr.io.provenance import now, xmr_version
from xmr.vectors import l2_normalize

log = logging.getLogger(__name__)

RECALL_K = 10
RECALL_QUERIES = 1000
MULTI_VECTOR_MODES = ("all", "mean")


def build_index(
    embeddings: np.ndarray,
    ids: Sequence[str],
    spec: str = "auto",
    *,
    items: Sequence[dict[str, Any]] | None = None,
    model: dict[str, Any] | None = None,
    backend: str = "faiss",
    exact_max: int | None = None,
    train_size: int | None = None,
    recall_queries: np.ndarray | None = None,
    recall_query_source: str = "queries",
    nprobe: int | None = None,
    ef_search: int | None = None,
    gpu: bool | None = None,
    source: dict[str, Any] | None = None,
    seed: int = 0,
    multi_vector: str = "all",
    backend_options: dict[str, Any] | None = None,
) -> Index:
    """Build an index over L2-normalised ``embeddings`` with string ``ids``.

    Args:
        embeddings: ``[n, dim]`` float array, or ``[n, K, dim]`` for multi-vector items (BLIP-2
            images: K query embeddings each). Every vector is normalised here; the metric is
            the inner product (cosine similarity), and an item scores the max over its vectors
            (:mod:`xmr.index.multivector`).
        ids: one unique string id per row; the backend's position i is ``ids[i]``.
        spec: ``auto``, ``Flat``, ``HNSW32``, ``IVF4096,PQ64`` or any faiss ``index_factory``
            string. ``auto`` builds Flat below ``exact_max`` vectors (50k) and an IVF index above.
        items: metadata records aligned with ``ids`` (see :mod:`xmr.data.records`).
        model: the manifest of the model that produced the embeddings; searching with another
            model is then a :class:`~xmr.errors.ModelMismatchError`.
        train_size: vectors sampled to train IVF/PQ indexes (default: 40 per list, at least 64k).
        recall_queries: query vectors for measuring an approximate index's recall@10 against
            exact search (default: up to 1000 vectors sampled from the embeddings themselves).
        multi_vector: for ``[n, K, dim]`` embeddings, ``all`` stores every vector (exact
            max-sim, K times the memory) and ``mean`` one vector per item, the normalised mean
            of its K (K times smaller and faster, at a recall cost measured in
            ``benchmarks/RESULTS.md``). Recorded in the manifest.
        backend_options: what only one backend takes (Milvus: ``uri`` or ``lite_path``,
            ``collection``, ``timeout``, ``token_env``).
    """
    _check_build_options(nprobe=nprobe, ef_search=ef_search, train_size=train_size)
    if exact_max is not None and exact_max < 0:
        raise XmrError(f"exact_max must be >= 0, got {exact_max}")
    if multi_vector not in MULTI_VECTOR_MODES:
        raise XmrError(
            f"multi_vector must be one of {', '.join(MULTI_VECTOR_MODES)}, got {multi_vector!r}"
        )
    x, ids, items = check_inputs(embeddings, ids, items, dim=None)
    pooled = None
    if x.ndim == 3 and multi_vector == "mean":
        pooled = int(x.shape[1])
        x = l2_normalize(x.mean(axis=1))
    n, dim = x.shape[0], x.shape[-1]
    per_item = vectors_per_item(x)
    flat = x.reshape(-1, dim)
    opts: dict[str, Any] = {"nprobe": nprobe, "ef_search": ef_search, "gpu": gpu}
    opts.update(backend_options or {})
    auto_reason = None
    resolved = spec
    backend_cls = get_backend(backend)
    if spec == "auto":
        resolved, auto_reason = backend_cls.auto_spec(
            len(flat), **({"exact_max": exact_max} if exact_max is not None else {})
        )
        log.info("index: auto picked %s", auto_reason)
    index_backend = backend_cls.create(dim, resolved, n_expected=len(flat), **opts)
    started = time.perf_counter()
    trained_on = 0
    if index_backend.needs_training:
        trained_on = _train(index_backend, flat, resolved, train_size, seed)
    add_records(index_backend, x, ids, items)
    build_s = time.perf_counter() - started
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xmr_version": xmr_version(),
        "created": now(),
        "updated": now(),
        "backend": backend,
        "requested_spec": spec,
        "auto_reason": auto_reason,
        "index": index_backend.describe(),
        "metric": "inner_product",
        "normalized": True,
        "dim": dim,
        "count": n,
        "item_vectors": per_item,
        "multi_vector": None if pooled is None and per_item == 1 else multi_vector,
        **({"pooled_vectors": pooled} if pooled else {}),
        "trained_on": trained_on,
        "build_seconds": round(build_s, 3),
        "model": model,
        "source": source,
        "recall": None,
    }
    index = Index(index_backend, ids, items, manifest)
    if not index_backend.is_exact:
        if recall_queries is None:
            recall_queries, recall_query_source = flat, "collection"
        manifest["recall"] = measure_recall(
            index_backend, x, recall_queries, source=recall_query_source, seed=seed
        )
        log.info("index: recall@%d vs exact = %.4f", RECALL_K, manifest["recall"]["value"])
    return index


def measure_recall(
    backend: IndexBackend,
    base: np.ndarray,
    queries: np.ndarray,
    *,
    k: int = RECALL_K,
    n_queries: int = RECALL_QUERIES,
    source: str = "queries",
    seed: int = 0,
) -> dict[str, Any]:
    """Recall@k of ``backend`` against exact search over ``base``: the items ``[n, dim]`` or
    ``[n, K, dim]`` it holds (item i at positions ``[i*K, (i+1)*K)``), ranked by max-sim
    (:func:`~xmr.index.multivector.exact_item_search`, the same reference for every backend;
    for single-vector items, exact inner-product search). ``queries``: ``(Q, dim)`` or
    ``(Q, Kq, dim)``."""
    q = l2_normalize(queries)
    if len(q) > n_queries:
        q = q[np.sort(np.random.default_rng(seed).choice(len(q), n_queries, replace=False))]
    k = min(k, len(base))
    _, exact = exact_item_search(base, q, k)
    _, approx = search_items(backend, q, k, item_vectors=vectors_per_item(base))
    hits = sum(len(set(a[a >= 0]) & set(e)) for a, e in zip(approx, exact, strict=True))
    return {
        "k": k,
        "value": round(hits / (k * len(q)), 4),
        "queries": len(q),
        "query_source": source,
    }


def _train(
    backend: IndexBackend, x: np.ndarray, spec: str, train_size: int | None, seed: int
) -> int:
    size = backend.training_size(len(x), train_size)
    sample = x
    if len(x) > size:
        sample = x[np.sort(np.random.default_rng(seed).choice(len(x), size, replace=False))]
    log.info("index: training %s on %d vectors", spec, len(sample))
    backend.train(sample)
    return len(sample)


def _check_build_options(**options: int | None) -> None:
    for name, value in options.items():
        if value is not None and value < 1:
            raise XmrError(f"{name} must be at least 1, got {value}")
