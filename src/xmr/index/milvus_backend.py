"""The Milvus backend: a collection in milvus-lite (embedded, a ``milvus.db`` inside the index
directory) or on a Milvus server / cluster (``uri``), through the one pymilvus ``MilvusClient``.

The collection holds one row per item: ``id`` (VARCHAR primary key, the item's string id),
``category`` (nullable VARCHAR, so a category search is a Milvus filter expression) and
``vector`` (FLOAT_VECTOR, inner product on normalised vectors). xmr's index directory keeps the
manifest, ``ids.json`` and ``items.jsonl`` as for FAISS; the backend's position ``i`` is
``ids[i]``, mirrored here to turn search hits (primary keys) back into positions.

Atomicity. Milvus applies each insert / upsert / delete request on its own; there is no
transaction across requests and no rollback. What xmr adds:

- a build goes into ``NAME__xmr_partial`` (dropped first if an interrupted build left it) and
  only :meth:`MilvusBackend.save` drops the old ``NAME`` and renames the new one in, just before
  the manifest is written: an interrupted build leaves the old collection and manifest working;
- rows are upserted by id, so re-running an interrupted ``xmr index add`` does not duplicate;
- the directory's files are written one by one atomically, manifest last; rows an interrupted
  add left in the collection but not in ``ids.json`` are never returned (and logged at load).

Connections, the token (from ``$XMR_MILVUS_TOKEN``, never written) and filter escaping are in
:mod:`xmr.index.milvus_connect`, index types and deployments in
:mod:`xmr.index.milvus_capabilities`. What is left here (about 440 lines) is one cohesive thing,
kept whole on purpose: the :class:`~xmr.index.base.IndexBackend` methods over one collection,
which share its position <-> primary-key mirror and the partial-collection protocol above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.index.base import AUTO_EXACT_MAX, IndexBackend, register_index_backend
from xmr.index.milvus_capabilities import (
    MilvusSpec,
    check_deployment,
    parse_spec,
    resolve_auto,
    search_params,
)
from xmr.index.milvus_connect import (
    DEFAULT_COLLECTION,
    TOKEN_ENV,
    category_filter,
    check_collection_name,
    collection_for,
    connect,
    error_message,
    import_pymilvus,
    is_lite,
    string_literal,
)
from xmr.io.jsonio import read_json

__all__ = [
    "BACKEND",
    "DEFAULT_COLLECTION",
    "LITE_FILE",
    "PARTIAL_SUFFIX",
    "MilvusBackend",
    "category_filter",
    "collection_for",
    "connect",
    "string_literal",
]

log = logging.getLogger(__name__)

BACKEND = "milvus"
LITE_FILE = "milvus.db"
PARTIAL_SUFFIX = "__xmr_partial"
BATCH_ROWS = 1000
MAX_ID_CHARS = 4096
MAX_TOPK = 16384  # Milvus' limit on k


@register_index_backend(BACKEND)
class MilvusBackend(IndexBackend):
    """Vectors in a Milvus collection; see the module docstring for layout and atomicity."""

    name = BACKEND
    # Index.search hands this backend the category (a filter expression), not positions.
    filters_by_category = True
    # The vectors live in the database, not in files swapped with the index directory.
    stores_externally = True

    def __init__(
        self,
        client: Any,
        *,
        uri: str,
        collection: str,
        spec: MilvusSpec,
        dim: int,
        keys: Sequence[str] = (),
        nprobe: int | None = None,
        ef_search: int | None = None,
        building: bool = False,
        database: str | None = None,
    ) -> None:
        self.client = client
        self.uri = uri
        self.database = database  # the lite file's name inside the index directory, if there
        self.collection = collection
        self.spec = spec
        self._dim = int(dim)
        self._keys = [str(k) for k in keys]
        self._pos = {k: i for i, k in enumerate(self._keys)}
        self._params = search_params(spec, nprobe=nprobe, ef=ef_search)
        self._building = building
        self._extra_rows = 0

    @property
    def deployment(self) -> str:
        return "lite" if is_lite(self.uri) else "server"

    @property
    def target(self) -> str:
        """The collection rows are written to now (the partial one during a build)."""
        return self.collection + PARTIAL_SUFFIX if self._building else self.collection

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def auto_spec(cls, n: int, *, exact_max: int = AUTO_EXACT_MAX) -> tuple[str, str]:
        spec, why = resolve_auto(n, exact_max=exact_max)
        return str(spec), why

    @classmethod
    def create(cls, dim: int, spec: str, *, n_expected: int = 0, **options: Any) -> MilvusBackend:
        """A new empty collection (built as ``NAME__xmr_partial`` until :meth:`save`).

        Options: ``uri`` (a server) or ``lite_path`` (a milvus-lite ``.db``), ``collection``,
        ``timeout``, ``token_env``, ``nprobe``, ``ef_search``; ``gpu`` is the server's business.
        """
        if spec == "auto":
            parsed, _ = resolve_auto(
                n_expected, exact_max=options.get("exact_max") or AUTO_EXACT_MAX
            )
        else:
            parsed = parse_spec(spec)
        uri = options.get("uri") or options.get("lite_path")
        if not uri:
            raise XmrError("a Milvus index needs uri= (a server) or lite_path= (a .db file)")
        uri = str(uri)
        database = Path(uri).name if options.get("lite_path") else None
        check_deployment(parsed, "lite" if is_lite(uri) else "server", dim)
        collection = check_collection_name(options.get("collection") or DEFAULT_COLLECTION)
        if database:  # the index directory, created only once the spec has been checked
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        client = connect(
            uri, timeout=options.get("timeout"), token_env=options.get("token_env") or TOKEN_ENV
        )
        backend = cls(
            client,
            uri=uri,
            collection=collection,
            spec=parsed,
            dim=dim,
            nprobe=options.get("nprobe"),
            ef_search=options.get("ef_search"),
            building=True,
            database=database,
        )
        backend._create_collection(backend.target)
        return backend

    def _create_collection(self, name: str) -> None:
        pymilvus = import_pymilvus()
        client = self.client
        if self._call("look up", client.has_collection, name):
            log.info("milvus: dropping %s, left by an interrupted build", name)
            self._call("drop", client.drop_collection, name)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.VARCHAR, is_primary=True, max_length=MAX_ID_CHARS)
        schema.add_field(
            "category", pymilvus.DataType.VARCHAR, max_length=MAX_ID_CHARS, nullable=True
        )
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self._dim)
        params = client.prepare_index_params()
        params.add_index(
            field_name="vector",
            index_type=self.spec.index_type,
            metric_type="IP",
            params=dict(self.spec.params),
        )
        self._call(
            "create",
            client.create_collection,
            name,
            schema=schema,
            index_params=params,
            consistency_level="Strong",  # a search right after an upsert sees it
        )

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any] | None = None) -> MilvusBackend:
        """Connect to the collection the manifest names; positions come from ``ids.json``."""
        config = config or {}
        directory = Path(directory)
        database = config.get("database")
        uri = str(directory / database) if database else config.get("uri")
        if not uri or not config.get("collection"):
            raise XmrError(f"{directory}: the manifest names no Milvus URI or collection")
        if database and not (directory / database).exists():
            raise XmrError(f"{directory / database}: the milvus-lite database is missing")
        ids_file = directory / "ids.json"
        keys = read_json(ids_file, list) if ids_file.is_file() else []
        spec = parse_spec(config.get("type", "FLAT"))
        client = connect(
            uri, timeout=config.get("timeout"), token_env=config.get("token_env") or TOKEN_ENV
        )
        backend = cls(
            client,
            uri=uri,
            collection=config["collection"],
            spec=spec,
            dim=int(config.get("dim", 0)),
            keys=keys,
            nprobe=config.get("nprobe"),
            ef_search=config.get("efSearch"),
            database=database,
        )
        if not backend._call("look up", client.has_collection, backend.collection):
            partial = backend.collection + PARTIAL_SUFFIX
            left = client.has_collection(partial)
            raise XmrError(
                f"{directory}: collection '{backend.collection}' is missing at {uri}"
                + (
                    f" (a build was interrupted while swapping '{partial}' in; build again)"
                    if left
                    else ""
                )
            )
        # A collection is "released" in a new process (or after a server restart) until loaded.
        backend._call("load", client.load_collection, backend.collection)
        backend._check_rows(directory)
        return backend

    def _check_rows(self, where: Any) -> None:
        rows = self.row_count()
        self._extra_rows = max(0, rows - len(self._keys))
        if rows != len(self._keys):
            log.warning(
                "%s: collection '%s' holds %d rows, the index %d ids (an interrupted add or "
                "delete; rows not in ids.json are never returned: re-run it)",
                where,
                self.collection,
                rows,
                len(self._keys),
            )

    def row_count(self) -> int:
        """Rows in the collection now (a count query)."""
        res = self._call(
            "count", self.client.query, self.target, filter="", output_fields=["count(*)"]
        )
        return int(res[0]["count(*)"]) if res else 0

    def save(self, directory: Path) -> list[Path]:
        """Make the built collection the live one (drop the old, rename the partial in) and
        flush; the index directory's files are Index's. Returns the files of a lite database
        inside ``directory`` (none on a server)."""
        client = self.client
        if self.database and Path(self.uri).parent.resolve() != Path(directory).resolve():
            raise XmrError(
                f"this milvus-lite index lives in {Path(self.uri).parent}; it cannot be saved to "
                f"{directory} (copy the whole directory instead)"
            )
        if self._building:
            partial = self.target
            self._call("flush", client.flush, partial)
            if self._call("look up", client.has_collection, self.collection):
                self._call("drop", client.drop_collection, self.collection)
            self._call("rename", client.rename_collection, partial, self.collection)
            self._building = False
            self._call("load", client.load_collection, self.collection)
        else:
            self._call("flush", client.flush, self.collection)
        return [Path(directory) / self.database] if self.database else []

    # --- properties -----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        return len(self._keys)

    @property
    def is_exact(self) -> bool:
        return self.spec.is_exact

    @property
    def needs_training(self) -> bool:
        return False  # Milvus trains its own IVF quantisers when it builds a segment's index

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": str(self.spec),
            "exact": self.is_exact,
            "device": f"milvus-{self.deployment}",
            "deployment": self.deployment,
            "collection": self.collection,
            "dim": self._dim,
        }
        if self.database:
            out["database"] = self.database
        else:
            out["uri"] = self.uri
        if "nlist" in self.spec.params:
            out["nlist"] = self.spec.params["nlist"]
        if "nprobe" in self._params:
            out["nprobe"] = self._params["nprobe"]
        if "ef" in self._params:
            out["efSearch"] = self._params["ef"]
        return out

    # --- operations -----------------------------------------------------------------------------

    def train(self, sample: np.ndarray) -> None:
        return None

    def add(self, vectors: np.ndarray) -> None:
        raise XmrError("the Milvus backend stores item ids with their vectors: use add_records")

    def add_records(
        self, vectors: np.ndarray, ids: Sequence[str], categories: Sequence[str | None]
    ) -> None:
        """Upsert rows by id in batches of 1000 (re-running an interrupted add is harmless)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise XmrError(
                f"Milvus stores one vector per item; got vectors of shape {x.shape} (multi-vector "
                "items are searched by max-sim in the FAISS backend only)"
            )
        for id_ in ids:
            if len(str(id_)) > MAX_ID_CHARS:
                raise XmrError(
                    f"item id '{str(id_)[:40]}...' is longer than {MAX_ID_CHARS} characters"
                )
        for start in range(0, len(x), BATCH_ROWS):
            rows = [
                {
                    "id": str(i),
                    "category": None if c in (None, "") else str(c),
                    "vector": v.tolist(),
                }
                for i, c, v in zip(
                    ids[start : start + BATCH_ROWS],
                    categories[start : start + BATCH_ROWS],
                    x[start : start + BATCH_ROWS],
                    strict=True,
                )
            ]
            self._call("upsert into", self.client.upsert, self.target, rows)
        # A flush seals the rows into segments, which is when Milvus builds their index.
        self._call("flush", self.client.flush, self.target)
        start = len(self._keys)
        self._keys.extend(str(i) for i in ids)
        self._pos.update({str(k): start + j for j, k in enumerate(ids)})

    def remove(self, positions: np.ndarray) -> None:
        """Delete the rows at ``positions``; the rest keep their order, renumbered."""
        drop = sorted({int(p) for p in positions})
        ids = [self._keys[p] for p in drop]
        for start in range(0, len(ids), BATCH_ROWS):
            self._call(
                "delete from", self.client.delete, self.target, ids=ids[start : start + BATCH_ROWS]
            )
        self._call("flush", self.client.flush, self.target)
        gone = set(drop)
        self._keys = [k for i, k in enumerate(self._keys) if i not in gone]
        self._pos = {k: i for i, k in enumerate(self._keys)}

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        category: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = int(k)
        scores = np.full((len(q), max(k, 0)), -np.inf, dtype=np.float32)
        positions = np.full((len(q), max(k, 0)), -1, dtype=np.int64)
        if k <= 0 or not self._keys or len(q) == 0:
            return scores, positions
        if k > MAX_TOPK:
            raise XmrError(f"Milvus returns at most {MAX_TOPK} hits a query, asked for {k}")
        expr = category_filter(category)
        if allowed is not None:
            allowed_ids = ", ".join(string_literal(self._keys[int(p)]) for p in allowed)
            expr = " and ".join(filter(None, [expr, f"id in [{allowed_ids}]"]))
        # Rows an interrupted add left behind are skipped, so ask for that many more.
        limit = min(MAX_TOPK, k + self._extra_rows)
        result = self._call(
            "search",
            self.client.search,
            self.target,
            data=q.tolist(),
            limit=limit,
            filter=expr,
            output_fields=["id"],
            search_params={"metric_type": "IP", "params": dict(self._params)},
        )
        for row, hits in enumerate(result):
            col = 0
            for hit in hits:
                pos = self._pos.get(str(hit["id"]))
                if pos is None:
                    continue
                scores[row, col], positions[row, col] = float(hit["distance"]), pos
                col += 1
                if col == k:
                    break
        return scores, positions

    def reconstruct(self, position: int) -> np.ndarray:
        key = self._keys[int(position)]
        rows = self._call(
            "get from", self.client.get, self.target, ids=[key], output_fields=["vector"]
        )
        if not rows:
            raise XmrError(
                f"item '{key}' is in the index but not in collection '{self.collection}'"
            )
        return np.asarray(rows[0]["vector"], dtype=np.float32)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One client call; any Milvus or transport failure is an XmrError naming it."""
        try:
            return fn(*args, **kwargs)
        except XmrError:
            raise
        except Exception as exc:  # noqa: BLE001 - MilvusException, grpc errors, timeouts
            name = args[0] if args and isinstance(args[0], str) else self.collection
            raise XmrError(
                f"Milvus {what} collection '{name}' at {self.uri} failed: {error_message(exc)}"
            ) from None
