"""The Searcher's writes: adding and deleting one item, saved at once, all or nothing.

A mixin of :class:`xmr.search.Searcher`: it uses the Searcher's index, its index lock, its
load options and its count of items missing a side (see :meth:`Searcher.missing_sides`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.index import load_index

# The embeddings kind of an index of BLIP-2 multimodal items (xmr index build --fused blip2).
MULTIMODAL = "multimodal"


class SearcherWrites:
    """:meth:`encode_item`, :meth:`add_item` and :meth:`remove_item` of
    :class:`xmr.search.Searcher`."""

    def encode_item(self, image: Any, caption: str | None = None) -> np.ndarray:
        """What a new item with ``image`` (and ``caption``) is stored as in this index: its
        image's vector(s); in an index of BLIP-2 multimodal items (built ``--fused blip2``) the
        encoder reading image and caption together (``encode_items``; without a caption, the
        image vectors, as ``xmr encode --kinds multimodal`` stores such an item).

        Raises XmrError for an index of weighted or learned fused items (their fusion is not
        redone here: encode the new items and ``xmr index add`` them) and for a multimodal
        index whose encoder has no ``encode_items``."""
        self._dense_only("adding an item")
        kind = (self.index.manifest.get("source") or {}).get("kind")
        if kind == "fused":
            raise XmrError(
                "this index holds fused image+caption items (xmr index build --fused W|DIR); an "
                "item is not fused here: encode the new items with `xmr encode --kinds "
                "images,captions` and add them with `xmr index add`"
            )
        if kind == MULTIMODAL and caption:
            encode = getattr(self.encoder, "encode_items", None)
            if not callable(encode):
                raise XmrError(
                    "this index holds BLIP-2 multimodal items (xmr index build --fused blip2): "
                    f"adding one needs a model that reads image and caption together "
                    f"(encode_items), and {getattr(self.encoder, 'spec', 'this model')!r} has "
                    "none; serve the index with the BLIP-2 model that built it"
                )
            with self._encoder_lock:
                vectors = encode([image], [caption])
            return np.asarray(vectors, dtype=np.float32)[0]
        return self.encode_images([image])[0]

    def add_item(self, vector: np.ndarray, record: dict[str, Any]) -> None:
        """Append one item (its vector ``(dim,)``, or ``(K, dim)`` in an index of multi-vector
        items, and metadata record) and save the index directory when it
        was loaded from one. All or nothing: when the save fails the in-memory index is put back
        as it was (reloaded from the directory, whose previous version the atomic save left
        intact) and the error is raised."""
        self._dense_only("adding an item")
        vector = np.asarray(vector, dtype=np.float32)
        vector = vector[None] if vector.ndim in (1, 2) else vector
        with self._index_lock:
            index = self.index
            index.add(vector, [str(record["id"])], [record])
            self._save_or_restore(index)
            if self._missing is not None:
                self._missing["image"] += not record.get("image")
                self._missing["caption"] += not record.get("captions")

    def remove_item(self, item_id: str) -> dict[str, Any]:
        """Delete one item and save the index directory when it was loaded from one; returns
        the item's record. All or nothing as :meth:`add_item` (for a Milvus index the rows are
        deleted first: see :mod:`xmr.index.milvus_backend` for what a failed save leaves)."""
        self._dense_only("deleting an item")
        with self._index_lock:
            index = self.index
            record = index.item(str(item_id))
            index.remove([str(item_id)])
            self._save_or_restore(index)
            self._missing = None  # recounted on the next ask
        return record

    def _save_or_restore(self, index: Any) -> None:
        """Save ``index`` when it was loaded from a directory; when the save fails, put back
        the previous version from there and raise the save's error."""
        if index.path is None:
            return
        try:
            index.save()
        except BaseException as exc:
            self._restore(index.path, exc)
            raise

    def _restore(self, path: Path, cause: BaseException) -> None:
        """Put back the index as it is in ``path`` after a failed save."""
        try:
            self.index = load_index(path, **self._load_options)
        except Exception as exc:  # noqa: BLE001 - reported with the save's own failure
            raise XmrError(
                f"{path}: saving the index failed ({cause}) and reloading its previous version "
                f"failed too ({exc}); the in-memory index holds an unsaved item"
            ) from cause
        self._missing = None
