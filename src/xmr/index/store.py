"""An index directory: vectors (any backend), their string ids, item metadata and a manifest.

Layout of ``INDEX_DIR``::

    BACKEND FILES   what the backend writes (FAISS: index.faiss; Milvus: milvus.db on lite)
    ids.json        string ids of the items; the backend's position p holds a vector of item
                    ids[p // K], K = the manifest's ``item_vectors`` (1 unless the items are
                    multi-vector: see :mod:`xmr.index.multivector`)
    items.jsonl     one metadata record per position (see xmr.data.records)
    manifest.json   model manifest, index type and parameters, counts, dim, recall, times

The directory is always written whole into a temporary sibling and swapped in atomically,
except for a backend whose vectors live in a database (Milvus): its files are then written in
place one by one, manifest last (see :mod:`xmr.index.milvus_backend` for what that guarantees).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from xmr.errors import ModelMismatchError, XmrError
from xmr.index.base import IndexBackend, get_backend
from xmr.index.multivector import as_query_sets, exact_item_search, item_positions, search_items
from xmr.io.atomic import atomic_replace_dir, atomic_write, atomic_write_json, check_output_dir
from xmr.io.failures import writing
from xmr.io.jsonio import read_json, read_jsonl, write_jsonl
from xmr.io.provenance import now, xmr_version
from xmr.vectors import l2_normalize

log = logging.getLogger(__name__)

FORMAT = "xmr-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IDS_FILE = "ids.json"
ITEMS_FILE = "items.jsonl"
RECALL_K = 10
RECALL_QUERIES = 1000
MULTI_VECTOR_MODES = ("all", "mean")


class Hit(NamedTuple):
    """One result: the item's id, its (max-sim) score and its item position (row of ``items``)."""

    id: str
    score: float
    position: int


@dataclass
class Index:
    """Vectors with string ids and metadata. Build with :func:`build_index`, read with
    :func:`load_index`."""

    backend: IndexBackend
    ids: list[str]
    items: list[dict[str, Any]]
    manifest: dict[str, Any]
    path: Path | None = None
    _positions: dict[str, int] = field(default_factory=dict, repr=False)
    _by_category: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        k = self.item_vectors
        if not (len(self.ids) == len(self.items) and len(self.ids) * k == self.backend.ntotal):
            per = f" ({k} per item)" if k > 1 else ""
            raise XmrError(
                f"{self.path or 'index'}: inconsistent index ({self.backend.ntotal} vectors{per}, "
                f"{len(self.ids)} ids, {len(self.items)} metadata records)"
            )
        self._positions = {id_: i for i, id_ in enumerate(self.ids)}
        if len(self._positions) != len(self.ids):
            raise XmrError(f"{self.path or 'index'}: duplicate ids in the index")

    # --- facts ----------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def item_vectors(self) -> int:
        """Vectors per item, K (1 for single-vector items; indexes without the key are K=1)."""
        return int(self.manifest.get("item_vectors", 1) or 1)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def model(self) -> dict[str, Any] | None:
        """The manifest of the model that made the vectors (None when built from bare arrays)."""
        return self.manifest.get("model")

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    def position(self, item_id: str) -> int:
        try:
            return self._positions[item_id]
        except KeyError:
            raise XmrError(f"unknown item id '{item_id}'") from None

    def item(self, item_id: str) -> dict[str, Any]:
        """The metadata record of ``item_id`` (an unknown id is an XmrError)."""
        return self.items[self.position(item_id)]

    def vector(self, item_id: str) -> np.ndarray:
        """The stored vector of ``item_id`` (for query by example): ``(dim,)``, or ``(K, dim)``
        for multi-vector items."""
        k = self.item_vectors
        stored = self.backend.reconstruct_many(item_positions([self.position(item_id)], k))
        return stored[0] if k == 1 else stored

    def categories(self) -> dict[str, int]:
        """Category -> item count, most common first."""
        return {
            c: len(p)
            for c, p in sorted(
                self._category_positions().items(), key=lambda kv: (-len(kv[1]), kv[0])
            )
        }

    def _category_positions(self) -> dict[str, np.ndarray]:
        if self._by_category is None:
            groups: dict[str, list[int]] = {}
            for i, rec in enumerate(self.items):
                if rec.get("category"):
                    groups.setdefault(str(rec["category"]), []).append(i)
            self._by_category = {c: np.asarray(p, dtype=np.int64) for c, p in groups.items()}
        return self._by_category

    # --- search ---------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int = 10, *, category: str | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` items per query, best first, by max-sim (:mod:`xmr.index.multivector`:
        exact for an exact index); ``category`` keeps only that category.

        ``queries``: one vector ``(dim,)``, one per row ``(Q, dim)``, or several per query
        ``(Q, Kq, dim)`` (the images of a multi-vector encoder), scored by the max over the
        query's and the item's vectors."""
        q = as_query_sets(queries)
        if q.ndim != 3 or q.shape[-1] != self.dim:
            raise XmrError(
                f"query vectors have dimension {q.shape[-1]}, the index has {self.dim} "
                "(was it built with another model?)"
            )
        allowed = None
        if category is not None:
            by_cat = self._category_positions()
            if category not in by_cat:
                known = ", ".join(sorted(by_cat)) or "none"
                raise XmrError(f"unknown category '{category}' (known: {known})")
            allowed = by_cat[category]
        k = min(int(k), len(self) if allowed is None else len(allowed))
        if self.backend.filters_by_category:  # a database filters by its category field itself
            if q.shape[1] != 1:
                raise XmrError(
                    f"the {self.backend.name} backend takes one vector per query, got {q.shape[1]}"
                )
            scores, positions = self.backend.search(l2_normalize(q[:, 0]), k, category=category)
        else:
            scores, positions = search_items(
                self.backend, l2_normalize(q), k, item_vectors=self.item_vectors, allowed=allowed
            )
        return [
            [Hit(self.ids[p], float(s), int(p)) for s, p in zip(srow, prow, strict=True) if p >= 0]
            for srow, prow in zip(scores, positions, strict=True)
        ]

    # --- changes --------------------------------------------------------------------------------

    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        items: Sequence[dict[str, Any]] | None = None,
        *,
        model: dict[str, Any] | None = None,
        upsert: bool = False,
    ) -> None:
        """Append items without a rebuild: ``embeddings`` ``(n, dim)``, or ``(n, K, dim)`` for an
        index of K-vector items. Another K or another model is an error; so is an id already in
        the index, unless ``upsert``: then its old vectors and record are replaced (the item
        moves to the end)."""
        if model is not None:
            check_same_model(self.model, model, what="the embeddings to add")
        x, ids, items = _check_inputs(embeddings, ids, items, dim=self.dim)
        pooled = self.manifest.get("pooled_vectors")
        if pooled and x.ndim == 3 and x.shape[1] == pooled:  # a --multi-vector mean index
            x = l2_normalize(x.mean(axis=1))
        if _vectors_per_item(x) != self.item_vectors:
            raise XmrError(
                f"the embeddings to add have {_vectors_per_item(x)} vector(s) per item, the index "
                f"holds {self.item_vectors} per item"
            )
        dup = [i for i in ids if i in self._positions]
        if dup and not upsert:
            raise XmrError(
                f"{len(dup)} id(s) already in the index (first: '{dup[0]}'); ids must be unique "
                "(--upsert replaces them)"
            )
        if dup:
            self.remove(dup)
        _add_records(self.backend, x, ids, items)
        start = len(self.ids)
        self.ids.extend(ids)
        self.items.extend(items)
        self._positions.update({id_: start + i for i, id_ in enumerate(ids)})
        self._by_category = None
        self.manifest["count"] = len(self.ids)
        self.manifest["updated"] = now()

    def remove(self, ids: Sequence[str], *, missing_ok: bool = False) -> list[str]:
        """Delete items by id (vector, id and record together); returns the ids deleted. An
        unknown id is an error (nothing is deleted) unless ``missing_ok``: then it is skipped."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        unknown = [i for i in wanted if i not in self._positions]
        if unknown and not missing_ok:
            raise XmrError(
                f"{len(unknown)} id(s) not in the index (first: '{unknown[0]}'); nothing deleted"
            )
        gone = {self._positions[i] for i in wanted if i in self._positions}
        if not gone:
            return []
        self.backend.remove(
            item_positions(np.asarray(sorted(gone), dtype=np.int64), self.item_vectors)
        )
        removed = [self.ids[p] for p in sorted(gone)]
        self.ids = [i for p, i in enumerate(self.ids) if p not in gone]
        self.items = [r for p, r in enumerate(self.items) if p not in gone]
        self._positions = {id_: i for i, id_ in enumerate(self.ids)}
        self._by_category = None
        self.manifest["count"] = len(self.ids)
        self.manifest["updated"] = now()
        return removed

    def info(self) -> dict[str, Any]:
        """What ``xmr index info`` prints: type, size, dim, model, recall, category counts."""
        m = self.manifest
        out = {
            "path": str(self.path) if self.path else None,
            "backend": m.get("backend"),
            "index": self.backend.describe(),
            "requested_spec": m.get("requested_spec"),
            "auto_reason": m.get("auto_reason"),
            "count": len(self),
            "dim": self.dim,
            "item_vectors": self.item_vectors,
            "vectors": self.backend.ntotal,
            "multi_vector": m.get("multi_vector"),
            "metric": m.get("metric"),
            "model": (self.model or {}).get("spec"),
            "recall": m.get("recall"),
            "created": m.get("created"),
            "updated": m.get("updated"),
            "xmr_version": m.get("xmr_version"),
        }
        cats = self.categories()
        if cats:
            out["categories"] = cats
        return out

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the index directory atomically (replacing an older index there)."""
        dest = Path(directory) if directory is not None else self.path
        if dest is None:
            raise XmrError("no directory to save the index to")
        self.manifest["count"] = len(self)
        if self.backend.stores_externally:
            self._save_beside_database(dest)
            self.path = dest
            return dest
        self.manifest["index"] = self.backend.describe()

        def fill(tmp: Path) -> None:
            self.backend.save(tmp)
            with writing(tmp / IDS_FILE):
                (tmp / IDS_FILE).write_text(
                    json.dumps(self.ids, ensure_ascii=False), encoding="utf-8"
                )
            write_jsonl(tmp / ITEMS_FILE, self.items)
            with writing(tmp / MANIFEST):
                (tmp / MANIFEST).write_text(
                    json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8",
                )

        atomic_replace_dir(dest, fill, may_replace=_is_index_dir)
        self.path = dest
        return dest

    def _save_beside_database(self, dest: Path) -> None:
        """The vectors are in a database (which may live inside ``dest``, so the directory is
        not swapped): commit the backend, then write ids, items and manifest, each atomically,
        the manifest last."""
        check_output_dir(dest)
        database = self.backend.describe().get("database")  # a lite database inside dest
        keep = [dest / database] if database else []
        check_replaceable(dest, self.manifest.get("backend"), keep=keep)
        dest.mkdir(parents=True, exist_ok=True)
        self.backend.save(dest)
        self.manifest["index"] = self.backend.describe()
        ids_text = json.dumps(self.ids, ensure_ascii=False)
        atomic_write(dest / IDS_FILE, lambda tmp: tmp.write_text(ids_text, encoding="utf-8"))
        atomic_write(dest / ITEMS_FILE, lambda tmp: write_jsonl(tmp, self.items))
        atomic_write_json(dest / MANIFEST, self.manifest)


# --- building and loading ---------------------------------------------------------------------


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
    x, ids, items = _check_inputs(embeddings, ids, items, dim=None)
    pooled = None
    if x.ndim == 3 and multi_vector == "mean":
        pooled = int(x.shape[1])
        x = l2_normalize(x.mean(axis=1))
    n, dim = x.shape[0], x.shape[-1]
    per_item = _vectors_per_item(x)
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
    _add_records(index_backend, x, ids, items)
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


def load_index(directory: str | Path, *, gpu: bool | None = None) -> Index:
    """Read an index directory written by :meth:`Index.save`."""
    path = Path(directory)
    if not path.is_dir():
        backups = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f"; an interrupted save left the previous index at {backups[-1]}" if backups else ""
        raise XmrError(f"{path}: no such index directory{hint}")
    manifest = _read_manifest(path)
    config = dict(manifest.get("index") or {})
    if gpu is not None:
        config["gpu_override"] = gpu
    backend = get_backend(manifest.get("backend", "faiss")).load(path, config)
    if not (path / IDS_FILE).is_file():
        raise XmrError(f"{path / IDS_FILE}: missing; the index directory is incomplete")
    ids = read_json(path / IDS_FILE, list)
    items = (
        list(read_jsonl(path / ITEMS_FILE))
        if (path / ITEMS_FILE).exists()
        else [{"id": i} for i in ids]
    )
    return Index(backend, [str(i) for i in ids], items, manifest, path)


def check_same_model(
    expected: dict[str, Any] | None, actual: dict[str, Any] | None, *, what: str = "the model"
) -> None:
    """Raise ModelMismatchError when two model manifests name different models.

    Models are compared by fingerprint when both have one, else by spec. An index built from
    bare arrays (no model manifest) accepts any model of the right dimension.
    """
    if not expected or not actual:
        return
    fe, fa = expected.get("fingerprint"), actual.get("fingerprint")
    same = fe == fa if (fe and fa) else expected.get("spec") == actual.get("spec")
    if not same:
        raise ModelMismatchError(
            f"{what} come from model {actual.get('spec')!r} (fingerprint {fa}), but the index was "
            f"built with {expected.get('spec')!r} (fingerprint {fe}); rebuild the index with this "
            "model or search with the model that built it"
        )


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
    _, approx = search_items(backend, q, k, item_vectors=_vectors_per_item(base))
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


def _add_records(
    backend: IndexBackend, x: np.ndarray, ids: Sequence[str], items: Sequence[dict[str, Any]]
) -> None:
    """Hand the backend every vector with its item's id and category (a database stores them;
    an item's K vectors sit at consecutive positions, see :mod:`xmr.index.multivector`)."""
    per_item = _vectors_per_item(x)
    categories = [rec.get("category") for rec in items]
    if per_item > 1:
        if backend.filters_by_category or backend.stores_externally:
            raise XmrError(
                f"the {backend.name} backend stores one vector per item; these items have "
                f"{per_item} each (build with --multi-vector mean, or use the faiss backend)"
            )
        ids = [i for i in ids for _ in range(per_item)]
        categories = [c for c in categories for _ in range(per_item)]
    backend.add_records(x.reshape(-1, x.shape[-1]), ids, categories)


def _vectors_per_item(x: np.ndarray) -> int:
    return int(x.shape[1]) if x.ndim == 3 else 1


def _check_inputs(embeddings, ids, items, *, dim: int | None):
    x = l2_normalize(embeddings)  # every vector, along the last axis
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[1] < 1):
        raise XmrError(
            f"expected embeddings of shape [n, dim] or [n, K, dim] (K vectors per item), "
            f"got {x.shape}"
        )
    ids = [str(i) for i in ids]
    if len(ids) != len(x):
        raise XmrError(f"{len(x)} items' vectors but {len(ids)} ids")
    if dim is not None and x.shape[-1] != dim:
        raise XmrError(f"vectors have dimension {x.shape[-1]}, the index has {dim}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise XmrError(f"duplicate id '{dup}'; ids must be unique")
    if items is None:
        items = [{"id": i} for i in ids]
    else:
        items = [dict(r) for r in items]
        if len(items) != len(ids):
            raise XmrError(f"{len(ids)} ids but {len(items)} metadata records")
        for i, (id_, rec) in enumerate(zip(ids, items, strict=True)):
            if str(rec.setdefault("id", id_)) != id_:
                raise XmrError(f"metadata record {i} has id '{rec['id']}', expected '{id_}'")
    return x, ids, items


def _check_build_options(**options: int | None) -> None:
    for name, value in options.items():
        if value is not None and value < 1:
            raise XmrError(f"{name} must be at least 1, got {value}")


def _read_manifest(path: Path) -> dict[str, Any]:
    if not (path / MANIFEST).exists():
        raise XmrError(f"{path}: no {MANIFEST} (not an xmr index directory)")
    manifest = read_json(path / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise XmrError(f"{path}: not an xmr index (manifest format {manifest.get('format')!r})")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise XmrError(f"{path}: index format {manifest['format_version']} is newer than this xmr")
    return manifest


def check_replaceable(dest: Path, backend: str | None, *, keep: Sequence[Path] = ()) -> None:
    """Refuse to write a ``backend`` index into ``dest`` in place when ``dest`` holds anything
    but an index of that backend (or the files in ``keep``, e.g. its own new database)."""
    if not dest.is_dir():
        return
    if (dest / MANIFEST).exists():
        found = read_json(dest / MANIFEST).get("backend", "faiss") if _is_index_dir(dest) else None
        if found == backend:
            return
        what = f"a {found} index" if found else "something that is not an xmr index"
        raise XmrError(f"{dest}: holds {what}; refusing to write a {backend} index into it")
    others = [p for p in dest.iterdir() if p not in set(keep)]
    if others:
        raise XmrError(
            f"{dest}: exists and is not an xmr index (holds {others[0].name}); refusing to "
            "write an index into it"
        )


def _is_index_dir(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
