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

Building is in :mod:`xmr.index.building`, file names and directory checks in
:mod:`xmr.index.layout`, input checks shared by building and adding in :mod:`xmr.index.item_vectors`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from xmr.errors import ModelMismatchError, XmrError
from xmr.index.base import IndexBackend, get_backend
from xmr.index.item_vectors import add_records, check_inputs, vectors_per_item
from xmr.index.layout import (
    IDS_FILE,
    ITEMS_FILE,
    MANIFEST,
    check_replaceable,
    is_index_dir,
    read_manifest,
)
from xmr.index.multivector import as_query_sets, item_positions, search_items
from xmr.io.atomic import atomic_replace_dir, atomic_write, atomic_write_json, check_output_dir
from xmr.io.failures import writing
from xmr.io.jsonio import read_json, read_jsonl, write_jsonl
from xmr.io.provenance import now
from xmr.vectors import l2_normalize


class Hit(NamedTuple):
    """One result: the item's id, its (max-sim) score and its item position (row of ``items``)."""

    id: str
    score: float
    position: int


@dataclass
class Index:
    """Vectors with string ids and metadata. Build with :func:`~xmr.index.building.build_index`, read with
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
        x, ids, items = check_inputs(embeddings, ids, items, dim=self.dim)
        pooled = self.manifest.get("pooled_vectors")
        if pooled and x.ndim == 3 and x.shape[1] == pooled:  # a --multi-vector mean index
            x = l2_normalize(x.mean(axis=1))
        if vectors_per_item(x) != self.item_vectors:
            raise XmrError(
                f"the embeddings to add have {vectors_per_item(x)} vector(s) per item, the index "
                f"holds {self.item_vectors} per item"
            )
        dup = [i for i in ids if i in self._positions]
        if dup and not upsert:
            raise XmrError(
                f"{len(dup)} id(s) already in the index (first: '{dup[0]}'); ids must be unique "
                "(upsert=True replaces them)"
            )
        if dup:
            self.remove(dup)
        add_records(self.backend, x, ids, items)
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
            # what the items are: the embeddings kind indexed, and its fusion when fused
            "items": (m.get("source") or {}).get("kind"),
            "fusion": (m.get("source") or {}).get("fusion"),
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

        atomic_replace_dir(dest, fill, may_replace=is_index_dir)
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


# --- loading ---------------------------------------------------------------------------------


def load_index(directory: str | Path, *, gpu: bool | None = None) -> Index:
    """Read an index directory written by :meth:`Index.save`."""
    path = Path(directory)
    if not path.is_dir():
        backups = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f"; an interrupted save left the previous index at {backups[-1]}" if backups else ""
        raise XmrError(f"{path}: no such index directory{hint}")
    manifest = read_manifest(path)
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
