"""The Searcher: an encoder, an index and its metadata -> ranked results (see :mod:`xmr.search`).

Its parts live beside it: opening an index directory and its encoder in
:mod:`xmr.search.loading`, the second stage in :mod:`xmr.search.second_stage`, item writes in
:mod:`xmr.search.writes`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.records import image_ref_from_record
from xmr.errors import ModelMismatchError, XmrError
from xmr.fusion.hybrid import HYBRID_DEPTH, HYBRID_MODES, RRF_K
from xmr.index import BM25Index, Hit, Index, check_same_model, is_lexical
from xmr.search.loading import load_search_parts
from xmr.search.modes import SEARCH_MODES, check_k, check_query_texts, fuse_rows
from xmr.search.reranking import Reranker
from xmr.search.results import SearchResult, TextQuery
from xmr.search.second_stage import SearcherSecondStage
from xmr.search.writes import SearcherWrites


class Searcher(SearcherSecondStage, SearcherWrites):
    """Search an index by text, image, vector or item id, and rerank with a cross-encoder.

    Text queries have three modes: ``dense`` (the encoder and the vector index), ``bm25`` (a
    lexical :class:`~xmr.index.BM25Index`, no model needed) and ``hybrid`` (both, fused by
    :func:`xmr.fusion.hybrid.fuse_ranked_lists`: RRF or weighted scores).

    Args:
        index: a loaded :class:`xmr.index.Index` (with ``encoder``) or a
            :class:`~xmr.index.BM25Index` (``encoder`` None: text queries in ``bm25`` mode).
        encoder: the model that built it (an :class:`xmr.models.base.Encoder`).
        check_model: refuse an encoder whose manifest is not the index's model.
        reranker: the second stage of :meth:`search_reranked` / :meth:`rerank` (optional).
        lexical: a BM25 index over the same items, for ``mode="bm25"`` / ``"hybrid"``.
        hybrid: ``rrf`` or ``weighted`` (see :mod:`xmr.fusion.hybrid`); ``hybrid_weights``
            (dense, bm25) and ``rrf_k`` its parameters; ``hybrid_depth`` candidates per side.
    """

    def __init__(
        self,
        index: Index | BM25Index,
        encoder: Any = None,
        *,
        check_model: bool = True,
        reranker: Reranker | None = None,
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
        self.reranker = reranker
        self._load_options: dict[str, Any] = {}
        self._encoder_lock = threading.Lock()
        self._reranker_lock = threading.Lock()
        self._index_lock = threading.RLock()
        self._missing: dict[str, int] | None = None
        if is_lexical(index):
            if lexical is not None:
                raise XmrError("a BM25 index searched alone takes no second lexical index")
            self.index, self.encoder, self.lexical, self.dense = index, encoder, index, None
            return
        if lexical is not None and not is_lexical(lexical):
            raise XmrError("lexical= must be a BM25 index (one built with model=bm25)")
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
        reranker: Reranker | None = None,
        bm25_index: str | Path | None = None,
        draft: bool | None = None,
        runtime: str = "eager",
        **options: Any,
    ) -> Searcher:
        """Load an index and the encoder it names (or ``model``: a spec or an Encoder, which must
        be the same model, e.g. a copy of it in another directory). A BM25 index directory
        needs no model; ``bm25_index`` adds one beside a vector index (``mode=bm25|hybrid``);
        ``options`` are the hybrid settings of :class:`Searcher`.

        Query images are decoded as the index's images were: ``draft`` None (the default) takes
        the index's JPEG decoding setting (``source.preprocessing.jpeg_draft``, see
        :func:`~xmr.search.loading.index_draft`); True or False must agree with it, or this raises
        :class:`~xmr.errors.XmrError` (draft and full decoding are never mixed). ``runtime``:
        the text tower's, "eager" or "onnx" (see :func:`xmr.models.create_encoder`)."""
        index, encoder, lexical = load_search_parts(
            index_dir,
            device,
            model,
            precision=precision,
            gpu=gpu,
            bm25_index=bm25_index,
            draft=draft,
            runtime=runtime,
        )
        if is_lexical(index):
            return cls(index, None, reranker=reranker, **options)
        searcher = cls(index, encoder, reranker=reranker, lexical=lexical, **options)
        searcher._load_options = {"gpu": gpu}
        return searcher

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str | None = "cpu", **kwargs: Any) -> Searcher:
        """Alias of :meth:`from_index_dir`."""
        return cls.from_index_dir(index_dir, device=device, **kwargs)

    # --- the model ------------------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors for ``texts`` (one encoder call, under the encoder lock)."""
        from xmr.models.base import check_texts

        texts = check_texts(texts, what="the query text", allow_empty=False)
        with self._encoder_lock:
            vectors = self.encoder.encode_texts(texts)
        return np.asarray(vectors, dtype=np.float32)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Query vectors for images (paths, bytes, PIL images or ImageRefs), one encoder call."""
        with self._encoder_lock:
            vectors = self.encoder.encode_images(list(images))
        return np.asarray(vectors, dtype=np.float32)

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
        k = check_k(k)
        if mode != "dense":
            texts = check_query_texts(texts)
        if not texts:
            return []
        if mode == "bm25":
            with self._index_lock:
                hits = self.lexical.search_texts(texts, k, category=category)
                return [
                    [self._result(h, r, self.lexical) for r, h in enumerate(row, 1)] for row in hits
                ]
        vectors = self.encode_texts(texts)
        if mode == "dense":
            return self.search_vectors(vectors, k, category=category)
        return self._search_hybrid(texts, vectors, k, category)

    def _search_hybrid(
        self, texts: list[str], vectors: np.ndarray, k: int, category: str | None
    ) -> list[list[SearchResult]]:
        """Both rankings to ``hybrid_depth``, fused (RRF or weighted) and cut to ``k``."""
        depth = max(k, self.hybrid_depth)
        with self._index_lock:
            dense = self.index.search(vectors, depth, category=category)
            lexical = self.lexical.search_texts(texts, depth, category=category)
            rows = fuse_rows(dense, lexical, self.hybrid, self.hybrid_weights, self.rrf_k, k)
            return [
                [self._fused_result(i, sc, r) for r, (i, sc) in enumerate(row, 1)] for row in rows
            ]

    def _fused_result(self, item_id: str, score: float, rank: int) -> SearchResult:
        """A hybrid hit, its record from the index that holds it (one side may lack it)."""
        source = self.index if item_id in self.index else self.lexical
        return self._result(Hit(item_id, score, source.position(item_id)), rank, source)

    def _check_mode(self, mode: str | None) -> str:
        mode = mode or self.default_mode
        if mode not in SEARCH_MODES:
            raise XmrError(f"unknown search mode '{mode}' (choose from {', '.join(SEARCH_MODES)})")
        if mode not in self.modes:
            why = (
                "this index is a BM25 index (no vectors)"
                if self.dense is None
                else "no BM25 index is loaded beside the vector index (bm25_index)"
            )
            raise XmrError(f"search mode '{mode}' is not available: {why}")
        return mode

    def _dense_only(self, what: str) -> None:
        if self.dense is None:
            raise XmrError(f"{what} needs a vector index; this is a BM25 index (text queries only)")

    def search_text_batch(self, queries: Sequence[TextQuery]) -> list[list[SearchResult]]:
        """Queries with their own ``k``, category and mode: one encoder call for all the dense
        texts, then one index search per category present (to the largest ``k`` asked for
        there, each list cut to its own ``k``); BM25 and hybrid queries are searched per
        (mode, category) group through :meth:`search_texts`."""
        if not queries:
            return []
        for q in queries:
            check_k(q.k)
        modes = [self._check_mode(q.mode) for q in queries]
        if any(m != "dense" for m in modes):
            out_m: list[list[SearchResult]] = [[] for _ in queries]
            by_group: dict[tuple[str, str | None], list[int]] = {}
            for i, q in enumerate(queries):
                by_group.setdefault((modes[i], q.category), []).append(i)
            for (mode, category), rows in by_group.items():
                depth = max(queries[i].k for i in rows)
                lists = self.search_texts(
                    [queries[i].text for i in rows], depth, category=category, mode=mode
                )
                for i, row in zip(rows, lists, strict=True):
                    out_m[i] = row[: queries[i].k]
            return out_m
        vectors = self.encode_texts([q.text for q in queries])
        out: list[list[SearchResult]] = [[] for _ in queries]
        groups: dict[str | None, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q.category, []).append(i)
        for category, rows in groups.items():
            depth = max(queries[i].k for i in rows)
            lists = self.search_vectors(vectors[rows], depth, category=category)
            for i, row in zip(rows, lists, strict=True):
                out[i] = row[: queries[i].k]
        return out

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
        return self.search_vectors(self.encode_images(images), k, category=category)

    def search_item(
        self, item_id: str, k: int = 10, *, category: str | None = None, exclude_self: bool = True
    ) -> list[SearchResult]:
        """Items similar to an indexed item (query by example, with its stored vector; an index
        that cannot give the vector back is asked with the item's image instead)."""
        self._dense_only("search by item")
        vector = self.item_vector(item_id)
        if vector is None:
            ref = self.image_ref(item_id)
            if ref is None:
                raise XmrError(f"item '{item_id}' has no stored vector and no image")
            vector = self.encode_images([ref])[0]
        exclude = item_id if exclude_self else None
        # (dim,) or, in an index of multi-vector items, (K, dim): one query either way
        return self.search_vectors(vector[None], k, category=category, exclude=exclude)[0]

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        category: str | None = None,
        exclude: str | None = None,
    ) -> list[list[SearchResult]]:
        """Top-``k`` results per query vector, within ``category`` when given, without the item
        ``exclude`` (its own example, in a query by example). ``vectors``: ``(Q, dim)``, or
        ``(Q, K, dim)`` for the images of a multi-vector encoder (scored by max-sim)."""
        self._dense_only("vector search")
        k = check_k(k)
        q = np.asarray(vectors, dtype=np.float32)
        with self._index_lock:
            rows = self.index.search(q, k + (exclude is not None), category=category)
            hits = [[h for h in row if h.id != exclude][:k] for row in rows]
            return [[self._result(h, rank) for rank, h in enumerate(row, 1)] for row in hits]

    def _result(self, hit: Any, rank: int, source: Any = None) -> SearchResult:
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

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, item_id: object) -> bool:
        with self._index_lock:
            return item_id in self.index

    def item(self, item_id: str) -> dict[str, Any]:
        """The item's metadata record (an unknown id is an XmrError)."""
        with self._index_lock:
            return self.index.item(item_id)

    def get_item(self, item_id: Any) -> dict[str, Any] | None:
        """The item's metadata record, or None for an unknown id (a dict lookup: ids never
        become paths)."""
        with self._index_lock:
            if not isinstance(item_id, str) or item_id not in self.index:
                return None
            return self.index.item(item_id)

    def item_vector(self, item_id: str) -> np.ndarray | None:
        """The item's stored vector ``(dim,)`` (``(K, dim)`` for multi-vector items), or None
        when the index cannot reconstruct it (some compressed indexes); an unknown id is an
        XmrError."""
        with self._index_lock:
            self.index.position(item_id)
            try:
                vector = self.index.vector(item_id)
            except Exception:  # noqa: BLE001 - FAISS raises RuntimeError for no reconstruction
                return None
        return np.asarray(vector, dtype=np.float32)

    def image_ref(self, item_id: str):
        """An :class:`~xmr.data.ImageRef` for the item's image, or None when it has none."""
        return image_ref_from_record(self.item(item_id).get("image"))

    def categories(self) -> dict[str, int]:
        with self._index_lock:
            return self.index.categories()

    def info(self) -> dict[str, Any]:
        with self._index_lock:
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
            "draft": bool(getattr(getattr(self.encoder, "preprocess", None), "draft", False)),
            "text_runtime": "eager"
            if getattr(self.encoder, "text_runtime", None) is None
            else "onnx",
        }
        return info
