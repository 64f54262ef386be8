"""Item vectors on their way into an index: shape, id and metadata checks, vectors per item, and
handing them to a backend with their ids and categories (shared by building and adding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.index.base import IndexBackend
from xmr.vectors import l2_normalize


def add_records(
    backend: IndexBackend, x: np.ndarray, ids: Sequence[str], items: Sequence[dict[str, Any]]
) -> None:
    """Hand the backend every vector with its item's id and category (a database stores them;
    an item's K vectors sit at consecutive positions, see :mod:`xmr.index.multivector`)."""
    per_item = vectors_per_item(x)
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


def vectors_per_item(x: np.ndarray) -> int:
    return int(x.shape[1]) if x.ndim == 3 else 1


def check_inputs(embeddings, ids, items, *, dim: int | None):
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
