"""What the service needs from a Searcher, in one small adapter.

The HTTP layer talks only to :class:`SearchBackend`: encode texts/images, search vectors
(optionally within a category), look up an item's metadata and stored vector, describe the
index, and (when writes are allowed) add an item. Underneath are an :class:`xmr.index.Index`
(vectors, ids, metadata, manifest) and an encoder with ``encode_texts`` / ``encode_images``.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from xmr.data.images import ImageRef
from xmr.errors import XmrError


class TextQuery(NamedTuple):
    text: str
    k: int
    category: str | None = None
    mode: str | None = None  # dense | bm25 | hybrid (None: the searcher's default)


class RerankJob(NamedTuple):
    """One query's second stage: ``query`` is a text (scored against item images) or a PIL
    image (scored against item captions); ``hits`` the first stage's (id, score), best first."""

    query: Any
    hits: list[tuple[str, float]]
    rerank_k: int


class SearchBackend:
    """An index and the encoder of the model that built it.

    Args:
        index: a loaded :class:`xmr.index.Index`.
        encoder: an object with ``encode_texts(list[str])`` and ``encode_images(list[PIL])``
            returning L2-normalised float32 arrays (an :class:`xmr.models.base.Encoder`).
        searcher: the Searcher these came from, kept for reference.
    """

    def __init__(self, index: Any, encoder: Any, *, searcher: Any = None) -> None:
        self.index = index
        self.encoder = encoder
        self.searcher = searcher
        self._lock = threading.RLock()
        # Set by the app when writes are allowed: searches then wait for an add to finish.
        self.writable = False
        self.reranker: Any = None
        self.rerank_options: dict[str, Any] = {}
        self._missing: dict[str, int] | None = None

    @classmethod
    def from_searcher(cls, searcher: Any) -> SearchBackend:
        index = getattr(searcher, "index", None)
        encoder = getattr(searcher, "encoder", None) or getattr(searcher, "model", None)
        lexical_only = getattr(searcher, "modes", None) == ["bm25"]  # a BM25 index: no model
        if index is None or (encoder is None and not lexical_only):
            raise TypeError(
                f"{type(searcher).__name__} has no .index and .encoder; pass a xmr Searcher"
            )
        return cls(index, encoder, searcher=searcher)

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str = "cpu", **options: Any) -> SearchBackend:
        """Load an index directory and the model its manifest names (checked to be the same);
        ``options`` (``bm25_index``, ``hybrid``...) go to :meth:`Searcher.from_index_dir`."""
        from xmr.search import Searcher

        return cls.from_searcher(Searcher.from_index_dir(index_dir, device=device, **options))

    @property
    def modes(self) -> list[str]:
        """The text search modes (``dense``, ``bm25``, ``hybrid``) this backend can do."""
        return list(getattr(self.searcher, "modes", None) or ["dense"])

    # -- metadata --------------------------------------------------------------------------

    def item(self, item_id: str) -> dict[str, Any] | None:
        """The metadata record of ``item_id`` (a dict lookup: ids never become paths)."""
        if not isinstance(item_id, str) or item_id not in self.index:
            return None
        return self.index.item(item_id)

    def image_ref(self, item_id: str) -> ImageRef | None:
        from xmr.data.records import image_ref_from_record

        rec = self.item(item_id)
        return image_ref_from_record(rec.get("image")) if rec else None

    def categories(self) -> dict[str, int]:
        return self.index.categories()

    def __len__(self) -> int:
        return len(self.index)

    # -- model -----------------------------------------------------------------------------

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode_texts(list(texts)), dtype=np.float32)

    def encode_images(self, images: list) -> np.ndarray:
        if self.encoder is None:
            raise XmrError("this is a BM25 index: it is searched by text only")
        return np.asarray(self.encoder.encode_images(list(images)), dtype=np.float32)

    # -- index -----------------------------------------------------------------------------

    def item_vector(self, item_id: str) -> np.ndarray | None:
        """The stored vector of an item (for query by example)."""
        try:
            vec = self.index.vector(item_id)
        except Exception:  # noqa: BLE001 - some compressed indexes cannot reconstruct
            return None
        return np.asarray(vec, dtype=np.float32).reshape(-1)

    def search_vectors(
        self, vectors: np.ndarray, k: int, *, category: str | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (id, score) per query vector, within ``category`` when given."""
        q = np.asarray(vectors, dtype=np.float32)
        if self.writable:
            with self._lock:
                hits = self.index.search(q, k, category=category)
        else:
            hits = self.index.search(q, k, category=category)
        return [[(str(h.id), float(h.score)) for h in row] for row in hits]

    def search_texts(self, queries: list[TextQuery]) -> list[list[tuple[str, float]]]:
        """Encode every query text in one call, then search once per category present (with the
        largest k asked for there, each list cut to its own k). BM25 and hybrid queries go
        through the Searcher (one call per mode and category)."""
        default = self.modes[0]
        if any((q.mode or default) != "dense" for q in queries):
            return self._search_texts_by_mode(queries, default)
        vectors = self.encode_texts([q.text for q in queries])
        out: list[list[tuple[str, float]]] = [[] for _ in queries]
        groups: dict[str | None, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q.category, []).append(i)
        for category, rows in groups.items():
            k = max(queries[i].k for i in rows)
            hits = self.search_vectors(vectors[rows], k, category=category)
            for i, row in zip(rows, hits, strict=True):
                out[i] = row[: queries[i].k]
        return out

    def _search_texts_by_mode(
        self, queries: list[TextQuery], default: str
    ) -> list[list[tuple[str, float]]]:
        out: list[list[tuple[str, float]]] = [[] for _ in queries]
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.mode or default, q.category), []).append(i)
        for (mode, category), rows in groups.items():
            k = max(queries[i].k for i in rows)
            texts = [queries[i].text for i in rows]
            if self.writable:
                with self._lock:
                    hits = self.searcher.search_texts(texts, k, category=category, mode=mode)
            else:
                hits = self.searcher.search_texts(texts, k, category=category, mode=mode)
            for i, row in zip(rows, hits, strict=True):
                out[i] = [(str(r.id), float(r.score)) for r in row[: queries[i].k]]
        return out

    def info(self) -> dict[str, Any]:
        describe = getattr(self.searcher, "info", None)
        info = dict(describe() if callable(describe) else self.index.info())
        info.pop("path", None)  # the server's file layout is nobody's business
        model = info.get("model")
        spec = model.get("spec") if isinstance(model, dict) else model
        return {
            "model": spec or (self.index.model or {}).get("spec"),
            "index_type": (info.get("index") or {}).get("type") or info.get("requested_spec"),
            "size": len(self.index),
            "dim": getattr(self.index, "dim", None),
            "modes": self.modes,
            "exact": (info.get("index") or {}).get("exact"),
            "categories": self.categories(),
            "index": info,
        }

    # -- second stage --------------------------------------------------------------------

    def set_reranker(
        self,
        cross_encoder: Any,
        *,
        mode: str = "itm",
        alpha: float = 1.0,
        batch_size: int = 32,
        device: str | None = None,
    ) -> None:
        """Rescore first-stage results with ``cross_encoder`` (a spec or a CrossEncoder)."""
        from xmr.models.cross_encoders import create_cross_encoder
        from xmr.rerank import RERANK_MODES

        if mode not in RERANK_MODES:
            raise XmrError(f"unknown rerank mode '{mode}' (choose from {', '.join(RERANK_MODES)})")
        self.reranker = create_cross_encoder(cross_encoder, device=device)
        self.rerank_options = {"mode": mode, "alpha": float(alpha), "batch_size": int(batch_size)}

    def missing_sides(self) -> dict[str, int]:
        """How many items have no image and how many no caption (counted once, then kept up to
        date by :meth:`add_item`): a text query is reranked against item images, an image query
        against item captions, so each direction needs every item to have that side."""
        if self._missing is None:
            no_image = no_caption = 0
            for rec in self.index.items:
                no_image += not rec.get("image")
                no_caption += not rec.get("captions")
            self._missing = {"image": no_image, "caption": no_caption}
        return self._missing

    def rerank_unavailable(self, text_query: bool) -> str | None:
        """Why a query of this kind cannot be reranked here, or None when it can."""
        if self.reranker is None:
            return "this service has no reranker (start it with --rerank MODEL)"
        side = "image" if text_query else "caption"
        missing = self.missing_sides()[side]
        if not missing:
            return None
        kind, pairs = ("text", "images") if text_query else ("image", "captions")
        return (
            f"{kind} queries cannot be reranked: the cross-encoder reads item {pairs}, and "
            f"{missing} of the {len(self)} indexed items have no {side}"
        )

    def _rerank_lookup(self, text_queries: bool):
        def image(item_id: str) -> Any:
            ref = self.image_ref(item_id)
            if ref is None:
                raise XmrError(f"rerank: item '{item_id}' has no image")
            return ref

        def caption(item_id: str) -> str:
            captions = (self.item(item_id) or {}).get("captions") or []
            if not captions:
                raise XmrError(f"rerank: item '{item_id}' has no caption")
            return captions[0]

        return image if text_queries else caption

    def rerank(self, jobs: list[RerankJob]) -> list[list[dict[str, Any]]]:
        """Rerank many queries' first-stage hits; pairs of the queries of one kind (text or
        image) and depth share cross-encoder batches. Each result is a dict with ``id``,
        ``score``, ``first_stage_score``, ``first_stage_rank``, ``reranked`` and (for the
        reranked ones) ``match_prob``, in the final order."""
        from xmr.rerank import rerank_many

        if self.reranker is None:
            raise XmrError("this service has no reranker")
        out: list[list[dict[str, Any]] | None] = [None] * len(jobs)
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((isinstance(job.query, str), job.rerank_k), []).append(i)
        for (text_queries, depth), rows in groups.items():
            lists = [
                [
                    {"id": item_id, "score": score, "first_stage_rank": rank}
                    for rank, (item_id, score) in enumerate(jobs[i].hits, 1)
                ]
                for i in rows
            ]
            reranked = rerank_many(
                [jobs[i].query for i in rows],
                lists,
                self.reranker,
                lookup=self._rerank_lookup(text_queries),
                k=depth,
                **self.rerank_options,
            )
            for i, row in zip(rows, reranked, strict=True):
                out[i] = row
        return out  # type: ignore[return-value]

    def rerank_info(self) -> dict[str, Any] | None:
        if self.reranker is None:
            return None
        describe = getattr(self.reranker, "describe", None)
        about = describe() if callable(describe) else {"spec": getattr(self.reranker, "spec", "")}
        text_why = self.rerank_unavailable(True)
        image_why = self.rerank_unavailable(False)
        out = {
            "model": about.get("spec"),
            "backend": about.get("backend"),
            "device": about.get("device"),
            **self.rerank_options,
            "text_queries": text_why is None,
            "image_queries": image_why is None,
        }
        if text_why:
            out["text_queries_reason"] = text_why
        if image_why:
            out["image_queries_reason"] = image_why
        return out

    # -- writes (only reachable with --allow-writes and the token) --------------------------

    def add_item(
        self,
        item_id: str,
        data: bytes,
        image: Any,
        caption: str,
        category: str | None,
        upload_dir: Path,
    ) -> None:
        """Encode an uploaded image, keep its bytes under ``upload_dir`` (named by content hash,
        never by the id) and append it to the index, which is then saved atomically."""
        from xmr.serve.images import sniff_web_type

        vec = self.encode_images([image])
        upload_dir.mkdir(parents=True, exist_ok=True)
        ext = {"image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}.get(
            sniff_web_type(data) or "", ".jpg"
        )
        digest = hashlib.sha256(data).hexdigest()[:32]
        path = upload_dir / f"{digest}{ext}"
        if ext == ".jpg" and sniff_web_type(data) != "image/jpeg":
            image.save(path, format="JPEG", quality=92)
        else:
            path.write_bytes(data)
        record = {
            "id": item_id,
            "image": {"path": str(path.resolve())},
            "captions": [caption] if caption else [],
            "attribute": None,
            "category": category,
        }
        with self._lock:
            self.index.add(vec, [item_id], [record])
            if self._missing is not None and not caption:
                self._missing["caption"] += 1
            if self.index.path is not None:
                self.index.save()
