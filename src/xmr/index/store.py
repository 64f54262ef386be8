"""An index directory: vectors (any backend), their string ids, item metadata and a manifest.

Layout of ``INDEX_DIR``::

    BACKEND FILES   what the backend writes (FAISS: index.faiss; Milvus: milvus.db on lite)
    ids.json        string ids; the backend's integer position i is ids[i]
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

from xmr.errors import ModelMismatchError, XmrError, writing
from xmr.index.base import IndexBackend, exact_search, get_backend, normalise
from xmr.io.atomic import atomic_replace_dir, atomic_write, atomic_write_json, check_output_dir
from xmr.io.jsonio import read_json, read_jsonl, write_jsonl
from xmr.io.provenance import now, xmr_version

log = logging.getLogger(__name__)

FORMAT = "xmr-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IDS_FILE = "ids.json"
ITEMS_FILE = "items.jsonl"
RECALL_K = 10
RECALL_QUERIES = 1000


class Hit(NamedTuple):
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
        if not (len(self.ids) == len(self.items) == self.backend.ntotal):
            raise XmrError(
                f"{self.path or 'index'}: inconsistent index ({self.backend.ntotal} vectors, "
                f"{len(self.ids)} ids, {len(self.items)} metadata records)"
            )
        self._positions = {id_: i for i, id_ in enumerate(self.ids)}
        if len(self._positions) != len(self.ids):
            raise XmrError(f"{self.path or 'index'}: duplicate ids in the index")

    # --- facts ----------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.backend.dim

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
        """The stored vector of ``item_id`` (for query by example)."""
        return self.backend.reconstruct(self.position(item_id))

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
        """Top-``k`` hits per query row, best first; ``category`` keeps only that category."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
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
            scores, positions = self.backend.search(normalise(q), k, category=category)
        else:
            scores, positions = self.backend.search(normalise(q), k, allowed=allowed)
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
        """Append vectors without a rebuild. Another model is an error; so is an id already in
        the index, unless ``upsert``: then its old vector and record are replaced (the item
        moves to the end)."""
        if model is not None:
            check_same_model(self.model, model, what="the embeddings to add")
        x, ids, items = _check_inputs(embeddings, ids, items, dim=self.dim)
        dup = [i for i in ids if i in self._positions]
        if dup and not upsert:
            raise XmrError(
                f"{len(dup)} id(s) already in the index (first: '{dup[0]}'); ids must be unique "
                "(--upsert replaces them)"
            )
        if dup:
            self.remove(dup)
        self.backend.add_records(x, ids, [rec.get("category") for rec in items])
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
        self.backend.remove(np.asarray(sorted(gone), dtype=np.int64))
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
    backend_options: dict[str, Any] | None = None,
) -> Index:
    """Build an index over L2-normalised ``embeddings`` with string ``ids``.

    Args:
        embeddings: ``[n, dim]`` float array (rows are normalised here; the metric is the inner
            product, i.e. cosine similarity).
        ids: one unique string id per row; the backend's position i is ``ids[i]``.
        spec: ``auto``, ``Flat``, ``HNSW32``, ``IVF4096,PQ64`` or any faiss ``index_factory``
            string. ``auto`` builds Flat below ``exact_max`` vectors (50k) and an IVF index above.
        items: metadata records aligned with ``ids`` (see :mod:`xmr.data.records`).
        model: the manifest of the model that produced the embeddings; searching with another
            model is then a :class:`~xmr.errors.ModelMismatchError`.
        train_size: vectors sampled to train IVF/PQ indexes (default: 40 per list, at least 64k).
        recall_queries: query vectors for measuring an approximate index's recall@10 against
            exact search (default: up to 1000 rows sampled from the embeddings themselves).
        backend_options: what only one backend takes (Milvus: ``uri`` or ``lite_path``,
            ``collection``, ``timeout``, ``token_env``).
    """
    _check_build_options(nprobe=nprobe, ef_search=ef_search, train_size=train_size)
    if exact_max is not None and exact_max < 0:
        raise XmrError(f"exact_max must be >= 0, got {exact_max}")
    x, ids, items = _check_inputs(embeddings, ids, items, dim=None)
    n, dim = x.shape
    opts: dict[str, Any] = {"nprobe": nprobe, "ef_search": ef_search, "gpu": gpu}
    opts.update(backend_options or {})
    auto_reason = None
    resolved = spec
    backend_cls = get_backend(backend)
    if spec == "auto":
        resolved, auto_reason = backend_cls.auto_spec(
            n, **({"exact_max": exact_max} if exact_max is not None else {})
        )
        log.info("index: auto picked %s", auto_reason)
    index_backend = backend_cls.create(dim, resolved, n_expected=n, **opts)
    started = time.perf_counter()
    trained_on = 0
    if index_backend.needs_training:
        trained_on = _train(index_backend, x, resolved, train_size, seed)
    index_backend.add_records(x, ids, [rec.get("category") for rec in items])
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
        "trained_on": trained_on,
        "build_seconds": round(build_s, 3),
        "model": model,
        "source": source,
        "recall": None,
    }
    index = Index(index_backend, ids, items, manifest)
    if not index_backend.is_exact:
        if recall_queries is None:
            recall_queries, recall_query_source = x, "collection"
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
    """Recall@k of ``backend`` against exact inner-product search over ``base``
    (:func:`~xmr.index.base.exact_search`, the same reference for every backend)."""
    q = normalise(queries)
    if len(q) > n_queries:
        q = q[np.sort(np.random.default_rng(seed).choice(len(q), n_queries, replace=False))]
    k = min(k, len(base))
    _, exact = exact_search(base, q, k)
    _, approx = backend.search(q, k)
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


def _check_inputs(embeddings, ids, items, *, dim: int | None):
    x = normalise(embeddings)
    ids = [str(i) for i in ids]
    if len(ids) != len(x):
        raise XmrError(f"{len(x)} vectors but {len(ids)} ids")
    if dim is not None and x.shape[1] != dim:
        raise XmrError(f"vectors have dimension {x.shape[1]}, the index has {dim}")
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
