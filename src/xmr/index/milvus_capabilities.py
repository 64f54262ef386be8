"""Which Milvus index types and parameters each deployment really builds, checked before a build.

A Milvus server validates ``create_index`` itself. milvus-lite (3.x, the embedded pure-Python
engine) does not: it accepts any ``index_type`` string, reports it back from ``describe_index``
as ``Finished``, and only when a segment is sealed does its background builder fail, log the
traceback and leave the segment searched by brute force. Tried on milvus-lite 3.2.2 with 3000 x
32 vectors and a flush: ``IVF_PQ`` (``NotImplementedError: reserved for a future phase``),
``DISKANN``, ``SCANN``, ``GPU_CAGRA``, ``IVF_RABITQ`` and a made-up ``BOGUS`` all "built" and
searched with recall 1.0, i.e. exactly; ``IVF_FLAT`` with ``nprobe=1`` gave recall 0.28, so the
types in :data:`LITE_TYPES` are real. xmr therefore refuses, on lite, every type lite would
silently replace, rather than record an index the collection does not have.

A spec is ``TYPE`` or ``TYPE:key=value,key=value`` with Milvus' own parameter names, e.g.
``HNSW:M=16,efConstruction=200`` or ``IVF_FLAT:nlist=1024``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xmr.errors import XmrError

# Build parameters per type, with their allowed integer ranges (Milvus' documented ranges).
_IVF = {"nlist": (1, 65536)}
_HNSW = {"M": (2, 2048), "efConstruction": (1, 2**31 - 1)}
PARAMS: dict[str, dict[str, tuple[int, int]]] = {
    "FLAT": {},
    "AUTOINDEX": {},
    "IVF_FLAT": _IVF,
    "IVF_SQ8": _IVF,
    "IVF_PQ": {**_IVF, "m": (1, 65536), "nbits": (1, 24)},
    "IVF_RABITQ": _IVF,
    "HNSW": _HNSW,
    "HNSW_SQ": {**_HNSW, "sq_type": (0, 0)},  # sq_type is a string; see _STRING_PARAMS
    "HNSW_PQ": {**_HNSW, "m": (1, 65536), "nbits": (1, 24)},
    "HNSW_PRQ": {**_HNSW, "m": (1, 65536), "nbits": (1, 24), "nrq": (1, 16)},
    "SCANN": {**_IVF, "with_raw_data": (0, 1)},
    "DISKANN": {},
    "GPU_BRUTE_FORCE": {},
    "GPU_IVF_FLAT": _IVF,
    "GPU_IVF_PQ": {**_IVF, "m": (1, 65536), "nbits": (1, 24)},
    "GPU_CAGRA": {"intermediate_graph_degree": (1, 2048), "graph_degree": (1, 2048)},
}
_STRING_PARAMS = {"sq_type": ("SQ6", "SQ8", "BF16", "FP16")}

# What milvus-lite 3.x builds for real (its index factory; everything else falls back silently).
LITE_TYPES = frozenset({"FLAT", "AUTOINDEX", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ"})
# Types a server accepts only when it was built with GPU support.
GPU_TYPES = frozenset(t for t in PARAMS if t.startswith("GPU_"))
EXACT_TYPES = frozenset({"FLAT", "GPU_BRUTE_FORCE"})


@dataclass(frozen=True)
class MilvusSpec:
    """A parsed ``TYPE[:key=value,...]`` index spec."""

    index_type: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_exact(self) -> bool:
        return self.index_type in EXACT_TYPES

    def __str__(self) -> str:
        if not self.params:
            return self.index_type
        return self.index_type + ":" + ",".join(f"{k}={v}" for k, v in self.params.items())


def parse_spec(spec: str) -> MilvusSpec:
    """``HNSW:M=16,efConstruction=200`` -> MilvusSpec("HNSW", {"M": 16, ...}); unknown types,
    unknown parameters and out-of-range values are an XmrError listing what is allowed."""
    head, _, tail = str(spec).strip().partition(":")
    index_type = head.strip().upper()
    if index_type not in PARAMS:
        raise XmrError(
            f"unknown Milvus index type '{head}'; use auto or one of {', '.join(sorted(PARAMS))} "
            "(optionally TYPE:key=value,..., e.g. HNSW:M=16,efConstruction=200)"
        )
    allowed = PARAMS[index_type]
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in tail.split(","))):
        key, eq, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or key not in allowed:
            names = ", ".join(allowed) or "none"
            raise XmrError(
                f"index spec '{spec}': '{part}' is not a {index_type} parameter (allowed: {names})"
            )
        params[key] = _value(spec, key, raw, allowed[key])
    return MilvusSpec(index_type, params)


def check_deployment(spec: MilvusSpec, deployment: str, dim: int) -> None:
    """Refuse what ``deployment`` (``lite`` or ``server``) would not really build for ``dim``-d
    vectors."""
    if deployment == "lite" and spec.index_type not in LITE_TYPES:
        raise XmrError(
            f"milvus-lite does not build {spec.index_type} indexes (it would accept the type and "
            f"silently search by brute force); on lite use {', '.join(sorted(LITE_TYPES))}, or "
            "give --uri of a Milvus server for "
            f"{spec.index_type}"
        )
    m = spec.params.get("m")
    if m is not None and dim % int(m):
        raise XmrError(f"index spec '{spec}': m={m} must divide the vector dimension {dim}")


def resolve_auto(n: int, *, exact_max: int) -> tuple[MilvusSpec, str]:
    """What ``auto`` means on Milvus, as for FAISS: exact search below ``exact_max`` vectors,
    above it an inverted file with ~4*sqrt(n) lists (both deployments build it)."""
    if n < exact_max:
        return MilvusSpec("FLAT"), f"{n} vectors < {exact_max}: exact search (FLAT)"
    nlist = int(min(65536, max(16, round(4 * n**0.5))))
    spec = MilvusSpec("IVF_FLAT", {"nlist": nlist})
    return spec, f"{n} vectors >= {exact_max}: inverted file with {nlist} lists ({spec})"


def search_params(spec: MilvusSpec, *, nprobe: int | None, ef: int | None) -> dict[str, int]:
    """The per-query parameters of a type: ``nprobe`` for IVF types, ``ef`` for HNSW ones."""
    if spec.index_type.startswith(("IVF", "GPU_IVF", "SCANN")):
        nlist = int(spec.params.get("nlist", 128))
        return {"nprobe": int(nprobe or min(nlist, max(8, min(256, nlist // 16))))}
    if spec.index_type.startswith("HNSW"):
        return {"ef": int(ef or 128)}
    return {}


def _value(spec: str, key: str, raw: str, bounds: tuple[int, int]) -> Any:
    if key in _STRING_PARAMS:
        if raw.upper() not in _STRING_PARAMS[key]:
            raise XmrError(
                f"index spec '{spec}': {key} must be one of {', '.join(_STRING_PARAMS[key])}"
            )
        return raw.upper()
    try:
        value = int(raw)
    except ValueError:
        raise XmrError(f"index spec '{spec}': {key}={raw} is not an integer") from None
    lo, hi = bounds
    if not lo <= value <= hi:
        raise XmrError(f"index spec '{spec}': {key}={value} is outside [{lo}, {hi}]")
    return value
