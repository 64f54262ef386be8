"""Item metadata as JSON lines: what a search result shows and where its image can be read.

One record per item, ``{"id", "image", "captions", "attribute", "category"}``. ``image`` is
``{"path": ABS}`` or ``{"tsv": ABS, "offset": BYTES, "line": N}`` (a line of a base64 TSV,
read by byte offset) or null, so a service can serve the image later without the data set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from xmr.data.images import ImageRef
from xmr.errors import DataError


def image_record(ref: ImageRef | None) -> dict[str, Any] | None:
    """The JSON form of an image reference; in-memory bytes cannot be referenced (null)."""
    if ref is None:
        return None
    if ref.path is not None:
        return {"path": os.path.abspath(ref.path)}
    if ref.tsv is not None:
        return {"tsv": os.path.abspath(ref.tsv), "offset": int(ref.offset), "line": ref.line}
    return None


def image_ref_from_record(record: dict[str, Any] | None) -> ImageRef | None:
    """The inverse of :func:`image_record`."""
    if not record:
        return None
    if record.get("path"):
        return ImageRef(path=record["path"])
    if record.get("tsv"):
        return ImageRef(
            tsv=record["tsv"], offset=int(record.get("offset", 0)), line=record.get("line")
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


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"bad JSON ({exc.msg})", file=str(path), line=lineno) from None
