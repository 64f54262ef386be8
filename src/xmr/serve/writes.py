"""Adding an uploaded image to a served index, and deleting an item, all or nothing.

An add encodes the image (in an index of BLIP-2 multimodal items, the image with its caption:
:meth:`xmr.search.Searcher.encode_item`), keeps its bytes beside the index directory (named by content hash,
never by the id) and appends the item through :meth:`xmr.search.Searcher.add_item`, which saves
the index atomically. Any failure (a full disk, a refused permission, a failing index write)
removes the image file this add wrote, leaves the Searcher's index as it was before (the
Searcher reloads the previous version that the atomic save left intact) and answers a 500
``write_failed`` naming the cause, so a retry starts from the same state.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from pathlib import Path
from typing import Any

from xmr.errors import XmrError
from xmr.io.atomic import atomic_write
from xmr.search import Searcher
from xmr.serve.images import sniff_web_type
from xmr.serve.limits import ApiError, ServeSettings
from xmr.serve.models import AddItemForm

log = logging.getLogger("xmr.serve")


class ItemWriter:
    """One add at a time to ``searcher``'s index (the duplicate check holds until it is in)."""

    def __init__(self, searcher: Searcher, settings: ServeSettings) -> None:
        self.searcher = searcher
        self.settings = settings
        self._lock = threading.Lock()

    def upload_dir(self) -> Path:
        """Where added images are kept: beside the index directory, never inside it (an index
        directory is replaced whole on save)."""
        if self.settings.upload_dir:
            return Path(self.settings.upload_dir)
        path = self.searcher.index.path
        if path is None:
            raise ApiError(409, "no_index_dir", "this index was not loaded from a directory")
        return Path(path).parent / f"{Path(path).name}.uploads"

    def add(self, form: AddItemForm, img: Any) -> None:
        """Encode the image, keep its bytes under the upload directory (named by content hash,
        never by the id) and add the item, saving the index. On any failure the image written
        here is removed, the Searcher has put its index back, and the answer is a 500
        ``write_failed`` naming the cause: a retry starts from the same state."""
        with self._lock:
            if form.id in self.searcher:
                raise ApiError(409, "duplicate_id", f"an item with id {form.id!r} already exists")
            try:  # BLIP-2 multimodal items: the image read with its caption
                vector = self.searcher.encode_item(img, form.caption)
            except XmrError as exc:
                raise ApiError(409, "not_supported", str(exc)) from exc
            kind = sniff_web_type(form.image)
            ext = {"image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}.get(
                kind or "", ".jpg"
            )
            path = self.upload_dir() / f"{hashlib.sha256(form.image).hexdigest()[:32]}{ext}"
            created = False
            try:
                if not path.exists():  # the same bytes again: the file is already there
                    atomic_write(path, lambda tmp: tmp.write_bytes(_web_bytes(form, img)))
                    created = True
                record = {
                    "id": form.id,
                    "image": {"path": str(path.resolve())},
                    "captions": [form.caption] if form.caption else [],
                    "attribute": None,
                    "category": form.category,
                }
                self.searcher.add_item(vector, record)
            except Exception as exc:  # noqa: BLE001 - any failure: the add did not happen
                if created:
                    path.unlink(missing_ok=True)
                log.error("adding item %r failed: %s", form.id, exc)
                raise ApiError(
                    500, "write_failed", f"the item was not added: {_cause(exc)}"
                ) from exc

    def delete(self, item_id: str) -> None:
        """Delete an item and save the index; an unknown id is a 404, a failed write a 500
        ``write_failed`` (the Searcher has put its index back). The item's uploaded image is
        removed too when it was added here and no other item shows the same bytes."""
        with self._lock:
            if item_id not in self.searcher:
                raise ApiError(404, "not_found", f"no item with id {item_id!r}")
            try:
                record = self.searcher.remove_item(item_id)
            except Exception as exc:  # noqa: BLE001 - any failure: the delete did not happen
                log.error("deleting item %r failed: %s", item_id, exc)
                raise ApiError(
                    500, "write_failed", f"the item was not deleted: {_cause(exc)}"
                ) from exc
            path = (record.get("image") or {}).get("path")
            if path and self._is_upload(Path(path)) and not self._still_shown(path):
                Path(path).unlink(missing_ok=True)

    def _is_upload(self, path: Path) -> bool:
        try:
            return path.resolve().parent == self.upload_dir().resolve()
        except ApiError:
            return False

    def _still_shown(self, path: str) -> bool:
        return any(
            (rec.get("image") or {}).get("path") == path for rec in self.searcher.index.items
        )


def _web_bytes(form: AddItemForm, img: Any) -> bytes:
    """The upload as stored: its own bytes in a format browsers show, else a JPEG of it."""
    if sniff_web_type(form.image) is not None:
        return form.image
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f" ({Path(exc.filename).name})" if exc.filename else "")
    return str(exc)
