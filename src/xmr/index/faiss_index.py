"""The FAISS backend: any ``index_factory`` string, inner product, on the GPU when there is one."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.index.base import AUTO_EXACT_MAX, IndexBackend, register_index_backend
from xmr.io.failures import writing

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
DEFAULT_EF_SEARCH = 128


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the environment
        raise XmrError(
            "the FAISS index needs the faiss package: pip install 'xmr[faiss]'"
        ) from None
    return faiss


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/16 of them within [8, 256] (recall ~0.95+ on CLIP features)."""
    return int(min(nlist, max(8, min(256, nlist // 16))))


def _gpu_supported(spec: str) -> bool:
    # faiss' GPU build covers flat and IVF indexes; HNSW and pre-transforms stay on the CPU.
    head = spec.split(",")[0].strip()
    return head in ("Flat", "IDMap,Flat") or (head.startswith("IVF") and "_" not in head)


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


def ivf_lists(spec: str) -> int:
    """The number of inverted lists an ``index_factory`` string asks for (0: not an IVF)."""
    for part in spec.split(","):
        if part.startswith("IVF"):
            digits = "".join(ch for ch in part[3:].split("_")[0] if ch.isdigit())
            return int(digits or 0)
    return 0


@register_index_backend("faiss")
class FaissBackend(IndexBackend):
    """A faiss index searched by inner product.

    Search parameters (``nprobe`` for IVF, ``efSearch`` for HNSW) are passed per call, so one
    index object is safe to search from several threads at once.
    """

    name = "faiss"

    def __init__(
        self,
        index,
        spec: str,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        gpu: bool | None = None,
    ) -> None:
        faiss = _faiss()
        self.spec = spec
        self._cpu_index = index
        self._ivf = _extract_ivf(index)
        self._hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if self._ivf is not None:
            self.nprobe = int(nprobe or default_nprobe(self._ivf.nlist))
            self._ivf.nprobe = self.nprobe
        else:
            self.nprobe = None
        self.ef_search = int(ef_search or DEFAULT_EF_SEARCH) if self._hnsw is not None else None
        if gpu is None:
            gpu = _num_gpus() > 0 and _gpu_supported(spec)
        self.on_gpu = bool(gpu) and _num_gpus() > 0
        self._index = faiss.index_cpu_to_all_gpus(index) if self.on_gpu else index
        if self.on_gpu and self._ivf is not None:
            faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self.nprobe)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def auto_spec(cls, n: int, *, exact_max: int = AUTO_EXACT_MAX) -> tuple[str, str]:
        return resolve_auto_spec(n, exact_max=exact_max)

    def training_size(self, n: int, requested: int | None = None) -> int:
        """40 vectors per inverted list, at least 64k (faiss warns below ~39 per list)."""
        nlist = ivf_lists(self.spec)
        if nlist and n < nlist:
            raise XmrError(
                f"index type '{self.spec}' needs at least {nlist} vectors to train, got {n}; "
                "use the auto index type or a smaller IVF"
            )
        return min(n, requested or max(40 * nlist, 65_536))

    @classmethod
    def create(cls, dim: int, spec: str, *, n_expected: int = 0, **options: Any) -> FaissBackend:
        faiss = _faiss()
        if spec == "auto":
            spec, _ = resolve_auto_spec(n_expected, **_auto_options(options))
        try:
            index = faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1]
            raise XmrError(
                f"cannot build a faiss index of type '{spec}' ({first}); use auto, Flat, HNSW32, "
                "IVF4096,Flat, IVF4096,PQ64 or another faiss index_factory string"
            ) from None
        return cls(
            index,
            spec,
            nprobe=options.get("nprobe"),
            ef_search=options.get("ef_search"),
            gpu=options.get("gpu"),
        )

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any] | None = None) -> FaissBackend:
        faiss = _faiss()
        config = config or {}
        path = Path(directory) / INDEX_FILE
        if not path.is_file():
            raise XmrError(f"{directory}: no {INDEX_FILE} (not an xmr index directory?)")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:  # faiss's C++ errors: truncated, empty or not an index
            reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(exc).strip()) or "unreadable"
            raise XmrError(f"{path}: not a readable faiss index ({reason})") from None
        return cls(
            index,
            config.get("type", "unknown"),
            nprobe=config.get("nprobe"),
            ef_search=config.get("efSearch"),
            gpu=config.get("gpu_override"),
        )

    def save(self, directory: Path) -> list[Path]:
        """Write ``index.faiss`` through a Python file: faiss' own file writer reports a full
        disk only when a write call fails, and ignores a failed ``fclose``, so a small index
        on a full disk came out truncated without an error. Here every failure, the final
        flush included, raises an OSError naming the file."""
        faiss = _faiss()
        path = Path(directory) / INDEX_FILE
        index = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
        with writing(path), open(path, "wb") as fh:
            faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
        return [path]

    # --- properties -----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def is_exact(self) -> bool:
        # isinstance, not the class name: index_factory("Flat", IP) makes an IndexFlat, but
        # read_index returns the IndexFlatIP subclass for the same index.
        return isinstance(_faiss().downcast_index(self._cpu_index), _faiss().IndexFlat)

    @property
    def needs_training(self) -> bool:
        return not self._index.is_trained

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.spec,
            "exact": self.is_exact,
            "device": "gpu" if self.on_gpu else "cpu",
        }
        if self.nprobe is not None:
            out["nprobe"] = self.nprobe
            out["nlist"] = int(self._ivf.nlist)
        if self.ef_search is not None:
            out["efSearch"] = self.ef_search
        return out

    # --- operations -----------------------------------------------------------------------------

    def train(self, sample: np.ndarray) -> None:
        self._index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def add(self, vectors: np.ndarray) -> None:
        if self.needs_training:
            raise XmrError(f"the {self.spec} index must be trained before vectors are added")
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def remove(self, positions: np.ndarray) -> None:
        """Delete vectors by position, the others renumbered in order: a flat (or flat-coded PQ,
        SQ) index compacts itself (``remove_ids``), an IVF index drops the entries and its lists' ids are shifted
        down in place, an HNSW graph (no removal in faiss) is rebuilt from its exact vectors.
        Compressed non-IVF types cannot be rebuilt without loss and are refused."""
        faiss = _faiss()
        drop = np.unique(np.asarray(positions, dtype=np.int64))
        cpu = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._cpu_index
        inner = faiss.downcast_index(cpu)
        ivf = _extract_ivf(cpu)
        if isinstance(inner, getattr(faiss, "IndexFlatCodes", faiss.IndexFlat)):  # Flat, PQ, SQ
            cpu.remove_ids(faiss.IDSelectorBatch(drop))
        elif ivf is not None:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # an array map refuses removal
            cpu.remove_ids(faiss.IDSelectorBatch(drop))
            invlists = ivf.invlists
            for lst in range(ivf.nlist):
                size = invlists.list_size(lst)
                if size:
                    # A writable view of the list's ids: new position = old - removed before it.
                    ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
                    ids -= np.searchsorted(drop, ids)
        elif self._hnsw is not None and isinstance(
            faiss.downcast_index(inner.storage), faiss.IndexFlat
        ):
            keep = np.setdiff1d(np.arange(cpu.ntotal), drop)
            vectors = cpu.reconstruct_n(0, cpu.ntotal)[keep]
            fresh = faiss.index_factory(self.dim, self.spec, faiss.METRIC_INNER_PRODUCT)
            fresh.hnsw.efConstruction = inner.hnsw.efConstruction
            fresh.add(np.ascontiguousarray(vectors))
            cpu = fresh
            self._hnsw = faiss.downcast_index(fresh).hnsw
        else:
            raise XmrError(
                f"deleting from a faiss '{self.spec}' index is not supported (only Flat, IVF and "
                "HNSW ones); rebuild it without those items (xmr index build)"
            )
        self._cpu_index = cpu
        self._ivf = _extract_ivf(cpu)
        self._index = faiss.index_cpu_to_all_gpus(cpu) if self.on_gpu else cpu
        if self.on_gpu and self._ivf is not None:
            faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self.nprobe)

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = int(k)
        if k <= 0 or self.ntotal == 0:
            n = len(q)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        if allowed is None:
            return self._search(q, k, None)
        if self.on_gpu:
            return _oversample_filter(self._search, q, k, allowed, self.ntotal)
        sel = _faiss().IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        return self._search(q, k, sel)

    def _search(self, q: np.ndarray, k: int, selector) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        if self.on_gpu:
            scores, pos = self._index.search(q, k)
        else:
            if self._ivf is not None:
                params = faiss.SearchParametersIVF(nprobe=self.nprobe)
            elif self._hnsw is not None:
                params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
            else:
                params = faiss.SearchParameters()
            if selector is not None:
                params.sel = selector
            scores, pos = self._index.search(q, k, params=params)
        return scores, pos.astype(np.int64, copy=False)

    def reconstruct(self, position: int) -> np.ndarray:
        return self.reconstruct_many(np.asarray([position], dtype=np.int64))[0]

    def reconstruct_many(self, positions: np.ndarray) -> np.ndarray:
        index = _faiss().index_gpu_to_cpu(self._index) if self.on_gpu else self._cpu_index
        ivf = _extract_ivf(index)
        if ivf is not None and ivf.direct_map.type == 0:  # no id -> list map yet: build it once
            ivf.make_direct_map()
        keys = np.ascontiguousarray(positions, dtype=np.int64)
        return np.asarray(index.reconstruct_batch(keys), dtype=np.float32).reshape(len(keys), -1)


def _extract_ivf(index):
    try:
        return _faiss().extract_index_ivf(index)
    except (RuntimeError, ValueError):
        return None


def _num_gpus() -> int:
    if os.environ.get("XMR_FAISS_CPU") == "1":
        return 0
    get = getattr(_faiss(), "get_num_gpus", None)
    return int(get()) if get else 0


def _auto_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"exact_max": options["exact_max"]} if options.get("exact_max") is not None else {}


def _oversample_filter(search, q, k, allowed, ntotal):
    """Filtered search where the index takes no selector: ask for more, keep allowed, repeat."""
    allowed_set = np.asarray(allowed, dtype=np.int64)
    want = min(k, len(allowed_set))
    kk = min(ntotal, max(4 * k, 64))
    while True:
        scores, pos = search(q, kk, None)
        keep = np.isin(pos, allowed_set)
        if kk >= ntotal or keep.sum(axis=1).min(initial=want) >= want:
            break
        kk = min(ntotal, kk * 4)
    out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    out_p = np.full((len(q), k), -1, dtype=np.int64)
    for i in range(len(q)):
        s, p = scores[i][keep[i]][:k], pos[i][keep[i]][:k]
        out_s[i, : len(s)], out_p[i, : len(p)] = s, p
    return out_s, out_p
