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
from xmr.index.atomic import writing


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


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with writing(path), open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a bad line (not UTF-8, not JSON, not an object)
    is a DataError naming the file and the line."""
    from xmr.data.readers._common import BadRecords, iter_lines

    for lineno, line in iter_lines(Path(path), BadRecords(False)):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"bad JSON ({exc.msg})", file=str(path), line=lineno) from None
        if not isinstance(record, dict):
            raise DataError(
                f"expected a JSON object, got {type(record).__name__}", file=str(path), line=lineno
            )
        yield record


def read_json(path: Path, expect: type = dict) -> Any:
    """A whole JSON file of the ``expect`` type (object or list); a file that cannot be read,
    is not UTF-8 or JSON, or holds another type is a DataError naming it."""
    from xmr.data.readers._common import load_json

    data = load_json(Path(path))
    if not isinstance(data, expect):
        want = "a JSON object" if expect is dict else f"a JSON {expect.__name__}"
        raise DataError(f"expected {want}, got {type(data).__name__}", file=str(path))
    return data
