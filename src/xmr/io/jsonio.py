"""JSON and JSON lines: every artefact's manifest, metadata and record files.

Reading names the file and the line of a bad record; writing is plain (wrap it in
:func:`xmr.io.atomic_write` for a file others may be reading).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from xmr.errors import DataError
from xmr.io.failures import writing
from xmr.io.textfiles import BadRecords, iter_lines, load_json


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with writing(path), open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a bad line (not UTF-8, not JSON, not an object)
    is a DataError naming the file and the line."""
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
    data = load_json(Path(path))
    if not isinstance(data, expect):
        want = "a JSON object" if expect is dict else f"a JSON {expect.__name__}"
        raise DataError(f"expected {want}, got {type(data).__name__}", file=str(path))
    return data
