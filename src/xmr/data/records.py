"""Item metadata as JSON lines: what a search result shows and where its image can be read.

One record per item, ``{"id", "image", "captions", "attribute", "category"}``. ``image`` is
``{"path": ABS}`` or ``{"tsv": ABS, "offset": BYTES, "line": N}`` (a line of a base64 TSV,
read by byte offset) or null, so a service can serve the image later without the data set.
"""

from __future__ import annotations

import os
from typing import Any

from xmr.data.images import ImageRef


def document_text(captions: list[str] | tuple[str, ...]) -> str:
    """The one text of an item that lexical search and text cross-encoders read: its captions
    joined by newlines (a BEIR document has one, ``title text``)."""
    return "\n".join(c for c in captions if c)


def image_record(ref: ImageRef | None) -> dict[str, Any] | None:
    """The JSON form of an image reference; in-memory bytes cannot be referenced (null)."""
    if ref is None:
        return None
    if ref.path is not None:
        return {"path": os.path.abspath(ref.path)}
    if ref.tsv is not None:
        record = {"tsv": os.path.abspath(ref.tsv), "offset": int(ref.offset), "line": ref.line}
        if ref.tsv_id is not None:
            record["id"] = ref.tsv_id
        return record
    return None


def image_ref_from_record(record: dict[str, Any] | None) -> ImageRef | None:
    """The inverse of :func:`image_record`."""
    if not record:
        return None
    if record.get("path"):
        return ImageRef(path=record["path"])
    if record.get("tsv"):
        return ImageRef(
            tsv=record["tsv"],
            offset=int(record.get("offset", 0)),
            line=record.get("line"),
            tsv_id=record.get("id"),  # absent in indexes built before the check existed
        )
    return None


def item_record(item) -> dict[str, Any]:
    """The metadata record of an :class:`xmr.data.Item`."""
    return {
        "id": str(item.id),
        "image": image_record(item.image),
        "captions": list(item.captions or []),
        "attribute": item.attribute,
        "category": item.category,
    }


def describe_image(record: dict[str, Any] | None) -> str:
    """A short human-readable image source: a path or ``file.tsv:line``."""
    if not record:
        return "-"
    if record.get("path"):
        return str(record["path"])
    if record.get("tsv"):
        line = record.get("line")
        return f"{record['tsv']}:{line}" if line else f"{record['tsv']}@{record.get('offset', 0)}"
    return "-"
