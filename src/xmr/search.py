"""Searcher: an encoder, an index and its metadata -> ranked results.

    searcher = Searcher.from_index_dir("runs/index")         # loads the model the index names
    for r in searcher.search_text("a white SUV", k=5):
        print(r.id, r.score, r.image, r.captions)

The model is checked against the one that built the index (weights fingerprint): another model
is a :class:`~xmr.errors.ModelMismatchError`, never a silently wrong ranking.

Text queries have three modes: ``dense`` (the encoder and the vector index), ``bm25`` (a lexical
:class:`~xmr.index.BM25Index`, no model needed) and ``hybrid`` (both, fused by
:func:`xmr.fusion.hybrid.fuse_ranked_lists`: RRF or weighted scores). A Searcher over a BM25
index directory alone searches in ``bm25`` mode; one over a vector index with ``lexical=`` (a
BM25 index of the same items) can do all three. Encoder calls are
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
from xmr.fusion.hybrid import HYBRID_DEPTH, HYBRID_MODES, RRF_K, fuse_ranked_lists
from xmr.index import BM25Index, Hit, Index, check_same_model, is_lexical, open_index

SEARCH_MODES = ("dense", "bm25", "hybrid")


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
    """Search an index by text, image, vector or item id.

    Args:
        index: a vector :class:`~xmr.index.Index` (with ``encoder``) or a
            :class:`~xmr.index.BM25Index` (``encoder`` None: text queries in ``bm25`` mode).
        encoder: the model that built the vector index.
        lexical: a BM25 index over the same items, for ``mode="bm25"`` / ``"hybrid"``.
        hybrid: ``rrf`` or ``weighted`` (see :mod:`xmr.fusion.hybrid`); ``hybrid_weights``
            (dense, bm25) and ``rrf_k`` its parameters; ``hybrid_depth`` candidates per side.
    """

    def __init__(
        self,
        index: Index | BM25Index,
        encoder=None,
        *,
        check_model: bool = True,
        lexical: BM25Index | None = None,
        hybrid: str = "rrf",
        hybrid_weights: Sequence[float] | None = None,
        rrf_k: int = RRF_K,
        hybrid_depth: int = HYBRID_DEPTH,
    ) -> None:
        if hybrid not in HYBRID_MODES:
            raise XmrError(
                f"unknown hybrid mode '{hybrid}' (choose from {', '.join(HYBRID_MODES)})"
            )
        self.hybrid, self.rrf_k, self.hybrid_depth = hybrid, int(rrf_k), int(hybrid_depth)
        self.hybrid_weights = list(hybrid_weights) if hybrid_weights is not None else None
        self._lock = threading.Lock()
        if is_lexical(index):
            if lexical is not None:
                raise XmrError("a BM25 index searched alone takes no second lexical index")
            self.index, self.encoder, self.lexical, self.dense = index, encoder, index, None
            return
        if lexical is not None and not is_lexical(lexical):
            raise XmrError("lexical= must be a BM25 index (built with --model bm25)")
        if encoder is None:
            raise XmrError("a vector index needs the encoder that built it")
        self.lexical = lexical
        self.dense = index
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

    @property
    def modes(self) -> list[str]:
        """The text search modes this Searcher can do."""
        if self.dense is None:
            return ["bm25"]
        return ["dense", "bm25", "hybrid"] if self.lexical is not None else ["dense"]

    @property
    def default_mode(self) -> str:
        return self.modes[0]

    @classmethod
    def from_index_dir(
        cls,
        index_dir: str | Path,
        device: str | None = "cpu",
        model: Any = None,
        *,
        precision: str = "fp32",
        gpu: bool | None = None,
        bm25_index: str | Path | None = None,
        **options: Any,
    ) -> Searcher:
        """Load an index and the encoder it names (or ``model``: a spec or an Encoder, which must
        be the same model, e.g. a copy of it in another directory). A BM25 index directory
        needs no model; ``bm25_index`` adds one beside a vector index (``mode=bm25|hybrid``);
        ``options`` are the hybrid settings of :class:`Searcher`."""
        from xmr.models import create_encoder

        index = open_index(index_dir, gpu=gpu)
        if is_lexical(index):
            if bm25_index is not None:
                raise XmrError(
                    f"{index_dir} is a BM25 index already; --bm25-index is for a vector one"
                )
            return cls(index, None, **options)
        lexical = open_index(bm25_index) if bm25_index is not None else None
        if lexical is not None and not is_lexical(lexical):
            raise XmrError(f"{bm25_index}: not a BM25 index (build it with --model bm25)")
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
        return cls(index, encoder, lexical=lexical, **options)

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str | None = "cpu", **kwargs: Any) -> Searcher:
        """Alias of :meth:`from_index_dir`."""
        return cls.from_index_dir(index_dir, device=device, **kwargs)

    # --- queries --------------------------------------------------------------------------------

    def search_text(
        self, text: str, k: int = 10, *, category: str | None = None, mode: str | None = None
    ) -> list[SearchResult]:
        return self.search_texts([text], k, category=category, mode=mode)[0]

    def search_texts(
        self,
        texts: Sequence[str],
        k: int = 10,
        *,
        category: str | None = None,
        mode: str | None = None,
    ) -> list[list[SearchResult]]:
        """One ranked list per text; ``mode`` is ``dense`` (texts encoded in one batch), ``bm25``
        or ``hybrid`` (default: the first of :attr:`modes`)."""
        if isinstance(texts, str):
            raise TypeError("search_texts takes a list of strings; use search_text for one")
        mode = self._check_mode(mode)
        if int(k) <= 0:
            raise XmrError(f"k must be a positive number, got {k}")
        texts = _check_query_texts(texts)
        if not texts:
            return []
        if mode == "bm25":
            hits = self.lexical.search_texts(texts, int(k), category=category)
            return [
                [self._result(h, r, self.lexical) for r, h in enumerate(row, 1)] for row in hits
            ]
        with self._lock:
            vectors = self.encoder.encode_texts(texts)
        if mode == "dense":
            return self.search_vectors(vectors, k, category=category)
        depth = max(int(k), self.hybrid_depth)
        dense = self.index.search(np.asarray(vectors, dtype=np.float32), depth, category=category)
        lexical = self.lexical.search_texts(texts, depth, category=category)
        out = []
        for d_row, l_row in zip(dense, lexical, strict=True):
            fused = fuse_ranked_lists(
                [[(h.id, h.score) for h in d_row], [(h.id, h.score) for h in l_row]],
                mode=self.hybrid,
                weights=self.hybrid_weights,
                rrf_k=self.rrf_k,
                k=int(k),
            )
            row = []
            for rank, f in enumerate(fused, 1):
                source = self.index if f.id in self.index else self.lexical
                row.append(self._result(Hit(f.id, f.score, source.position(f.id)), rank, source))
            out.append(row)
        return out

    def _check_mode(self, mode: str | None) -> str:
        mode = mode or self.default_mode
        if mode not in SEARCH_MODES:
            raise XmrError(f"unknown search mode '{mode}' (choose from {', '.join(SEARCH_MODES)})")
        if mode not in self.modes:
            why = (
                "this index is a BM25 index (no vectors)"
                if self.dense is None
                else "no BM25 index is loaded beside the vector index (--bm25-index)"
            )
            raise XmrError(f"search mode '{mode}' is not available: {why}")
        return mode

    def _dense_only(self, what: str) -> None:
        if self.dense is None:
            raise XmrError(f"{what} needs a vector index; this is a BM25 index (text queries only)")

    def search_image(
        self, image: Any, k: int = 10, *, category: str | None = None
    ) -> list[SearchResult]:
        """``image``: a path, encoded bytes, a PIL image or an ImageRef."""
        return self.search_images([image], k, category=category)[0]

    def search_images(
        self, images: Sequence[Any], k: int = 10, *, category: str | None = None
    ) -> list[list[SearchResult]]:
        self._dense_only("image search")
        if not images:
            return []
        with self._lock:
            vectors = self.encoder.encode_images(list(images))
        return self.search_vectors(vectors, k, category=category)

    def search_item(
        self, item_id: str, k: int = 10, *, category: str | None = None, exclude_self: bool = True
    ) -> list[SearchResult]:
        """Items similar to an indexed item (query by example, with its stored vector)."""
        self._dense_only("search by item")
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
        self._dense_only("vector search")
        if int(k) <= 0:
            raise XmrError(f"k must be a positive number, got {k}")
        hits = self.index.search(np.asarray(vectors, dtype=np.float32), int(k), category=category)
        return [[self._result(h, rank) for rank, h in enumerate(row, 1)] for row in hits]

    def _result(self, hit, rank: int, source: Any = None) -> SearchResult:
        rec = (source or self.index).items[hit.position]
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
        info["modes"] = self.modes
        if self.dense is None:
            return info
        if self.lexical is not None:
            info["bm25"] = self.lexical.info()
            info["hybrid"] = {
                "mode": self.hybrid,
                "weights": self.hybrid_weights,
                "rrf_k": self.rrf_k,
                "depth": self.hybrid_depth,
            }
        info["model"] = {
            "spec": getattr(self.encoder, "spec", None),
            "fingerprint": (self.index.model or {}).get("fingerprint"),
            "device": str(getattr(self.encoder, "device", "")),
            "precision": getattr(self.encoder, "precision", None),
        }
        return info


def _check_query_texts(texts: Sequence[str]) -> list[str]:
    """:func:`xmr.models.base.check_texts` (strings, valid UTF-8, not blank, the same messages)
    without importing torch, for BM25 searches."""
    out = list(texts)
    for n, text in enumerate(out, 1):
        where = "the query text" if len(out) == 1 else f"the query text {n}"
        if not isinstance(text, str):
            raise XmrError(f"{where} must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "replace").decode("utf-8")[:60]
            raise XmrError(
                f"{where} {shown!r} is not valid UTF-8 (it holds undecodable bytes)"
            ) from None
        if not text.strip():
            raise XmrError(f"{where} is empty")
    return out
