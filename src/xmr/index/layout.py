"""The on-disk layout of an index directory: file names, the manifest's format stamp, and the
checks of what a directory holds before an index is read from it or written into it.

The layout itself is described in :mod:`xmr.index.store`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmr.errors import XmrError
from xmr.io.jsonio import read_json

FORMAT = "xmr-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IDS_FILE = "ids.json"
ITEMS_FILE = "items.jsonl"


def read_manifest(path: Path) -> dict[str, Any]:
    if not (path / MANIFEST).exists():
        raise XmrError(f"{path}: no {MANIFEST} (not an xmr index directory)")
    manifest = read_json(path / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise XmrError(f"{path}: not an xmr index (manifest format {manifest.get('format')!r})")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise XmrError(f"{path}: index format {manifest['format_version']} is newer than this xmr")
    return manifest


def check_replaceable(dest: Path, backend: str | None, *, keep: Sequence[Path] = ()) -> None:
    """Refuse to write a ``backend`` index into ``dest`` in place when ``dest`` holds anything
    but an index of that backend (or the files in ``keep``, e.g. its own new database)."""
    if not dest.is_dir():
        return
    if (dest / MANIFEST).exists():
        found = read_json(dest / MANIFEST).get("backend", "faiss") if is_index_dir(dest) else None
        if found == backend:
            return
        what = f"a {found} index" if found else "something that is not an xmr index"
        raise XmrError(f"{dest}: holds {what}; refusing to write a {backend} index into it")
    others = [p for p in dest.iterdir() if p not in set(keep)]
    if others:
        raise XmrError(
            f"{dest}: exists and is not an xmr index (holds {others[0].name}); refusing to "
            "write an index into it"
        )


def is_index_dir(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
