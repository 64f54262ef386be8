"""Searcher: an encoder, an index and its metadata -> ranked results.

    searcher = Searcher.from_index_dir("runs/index")         # loads the model the index names
    for r in searcher.search_text("a white SUV", k=5):
        print(r.id, r.score, r.image, r.captions)

The model is checked against the one that built the index (weights fingerprint): another model
is a :class:`~xmr.errors.ModelMismatchError`, never a silently wrong ranking. Encoder calls are
serialised with a lock and index searches take no shared mutable state, so one Searcher can
serve many threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.records import describe_image, image_ref_from_record
from xmr.errors import ModelMismatchError, XmrError
from xmr.index import Index, check_same_model, load_index


@dataclass
class SearchResult:
    """One ranked hit with the item's metadata (``image`` is its source record, see
    :mod:`xmr.data.records`)."""

    id: str
    score: float
    rank: int
    image: dict[str, Any] | None = None
    captions: list[str] = field(default_factory=list)
    attribute: str | None = None
    category: str | None = None

    @property
    def image_source(self) -> str:
        return describe_image(self.image)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Search an index by text, image, vector or item id."""

    def __init__(self, index: Index, encoder, *, check_model: bool = True) -> None:
        if int(encoder.embed_dim) != index.dim:
            raise ModelMismatchError(
                f"model {getattr(encoder, 'spec', '?')!r} makes {encoder.embed_dim}-d embeddings, "
                f"the index holds {index.dim}-d vectors; search it with the model that built it "
                f"({(index.model or {}).get('spec', 'unknown')!r})"
            )
        if check_model:
            check_same_model(index.model, encoder.manifest(), what="the query embeddings")
        self.index = index
        self.encoder = encoder
        self._lock = threading.Lock()

    @classmethod
    def from_index_dir(
        cls,
        index_dir: str | Path,
        device: str | None = "cpu",
        model: Any = None,
        *,
        precision: str = "fp32",
        gpu: bool | None = None,
    ) -> Searcher:
        """Load an index and the encoder it names (or ``model``: a spec or an Encoder, which must
        be the same model, e.g. a copy of it in another directory)."""
        from xmr.models import create_encoder

        index = load_index(index_dir, gpu=gpu)
        if model is None or isinstance(model, str | Path):
            spec = str(model) if model is not None else (index.model or {}).get("spec")
            if not spec:
                raise XmrError(f"{index_dir}: the index names no model; pass one (--model)")
            try:
                encoder = create_encoder(spec, device=device, precision=precision)
            except XmrError as exc:
                if model is not None:
                    raise
                raise XmrError(
                    f"cannot load the model the index was built with ({exc}); pass --model with "
                    "a copy of it"
                ) from None
        else:
            encoder = model
        return cls(index, encoder)

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str | None = "cpu", **kwargs: Any) -> Searcher:
        """Alias of :meth:`from_index_dir`."""
        return cls.from_index_dir(index_dir, device=device, **kwargs)

    # --- queries --------------------------------------------------------------------------------

    def search_text(
        self, text: str, k: int = 10, *, category: str | None = None
    ) -> list[SearchResult]:
        return self.search_texts([text], k, category=category)[0]

    def search_texts(
        self, texts: Sequence[str], k: int = 10, *, category: str | None = None
    ) -> list[list[SearchResult]]:
        """One ranked list per text; the texts are encoded in one batch."""
        if isinstance(texts, str):
            raise TypeError("search_texts takes a list of strings; use search_text for one")
        from xmr.models.base import check_texts

        texts = check_texts(texts, what="the query text", allow_empty=False)
        if not texts:
            return []
        with self._lock:
            vectors = self.encoder.encode_texts(texts)
        return self.search_vectors(vectors, k, category=category)

    def search_image(
        self, image: Any, k: int = 10, *, category: str | None = None
    ) -> list[SearchResult]:
        """``image``: a path, encoded bytes, a PIL image or an ImageRef."""
        return self.search_images([image], k, category=category)[0]

    def search_images(
        self, images: Sequence[Any], k: int = 10, *, category: str | None = None
    ) -> list[list[SearchResult]]:
        if not images:
            return []
        with self._lock:
            vectors = self.encoder.encode_images(list(images))
        return self.search_vectors(vectors, k, category=category)

    def search_item(
        self, item_id: str, k: int = 10, *, category: str | None = None, exclude_self: bool = True
    ) -> list[SearchResult]:
        """Items similar to an indexed item (query by example, with its stored vector)."""
        vector = self.index.vector(item_id)
        hits = self.search_vectors(vector[None, :], k + int(exclude_self), category=category)[0]
        if exclude_self:
            hits = [h for h in hits if h.id != item_id][:k]
            for rank, h in enumerate(hits, 1):
                h.rank = rank
        return hits

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, *, category: str | None = None
    ) -> list[list[SearchResult]]:
        if int(k) <= 0:
            raise XmrError(f"k must be a positive number, got {k}")
        hits = self.index.search(np.asarray(vectors, dtype=np.float32), int(k), category=category)
        return [[self._result(h, rank) for rank, h in enumerate(row, 1)] for row in hits]

    def _result(self, hit, rank: int) -> SearchResult:
        rec = self.index.items[hit.position]
        return SearchResult(
            id=hit.id,
            score=hit.score,
            rank=rank,
            image=rec.get("image"),
            captions=list(rec.get("captions") or []),
            attribute=rec.get("attribute"),
            category=rec.get("category"),
        )

    # --- items and facts ------------------------------------------------------------------------

    def item(self, item_id: str) -> dict[str, Any]:
        """The item's metadata record (an unknown id is an XmrError)."""
        return self.index.item(item_id)

    def image_ref(self, item_id: str):
        """An :class:`~xmr.data.ImageRef` for the item's image, or None when it has none."""
        return image_ref_from_record(self.item(item_id).get("image"))

    def categories(self) -> dict[str, int]:
        return self.index.categories()

    def info(self) -> dict[str, Any]:
        info = self.index.info()
        info["model"] = {
            "spec": getattr(self.encoder, "spec", None),
            "fingerprint": (self.index.model or {}).get("fingerprint"),
            "device": str(getattr(self.encoder, "device", "")),
            "precision": getattr(self.encoder, "precision", None),
        }
        return info
