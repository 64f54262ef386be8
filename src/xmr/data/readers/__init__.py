"""Reader registry: one module per format; ``detect_format`` picks one by the files present.

A reader is a class with ``name``, ``detect(path) -> bool`` and
``read(path, *, split=None, images=None, skip_bad=False) -> RetrievalDataset``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from xmr.errors import XmrError
from xmr.io import read_jsonl
from xmr.registry import Registry

READERS: Registry = Registry("dataset format")
register_reader = READERS.register

# Imported lazily on first use so `import xmr` stays cheap; order is the detection order
# (more specific layouts before the generic csv/folder fallbacks).
_READER_MODULES = [
    "track2",
    "muge",
    "muge_t2i",
    "tianchi",
    "evalscope",
    "beir",
    "coco",
    "csv",
    "folder",
]
_loaded = False
# Modules whose format name is not their module name (a name with a dash).
_MODULE_FORMATS = {"muge_t2i": "muge-t2i"}


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _READER_MODULES:
        importlib.import_module(f"xmr.data.readers.{mod}")
    _loaded = True


_FALLBACKS = ("csv", "folder")


def list_readers() -> list[str]:
    """Registered formats in detection order: the specific built-in layouts, then formats
    registered by plugins (``register_reader``), then the generic csv / folder fallbacks."""
    _load_all()
    modules = [_MODULE_FORMATS.get(m, m) for m in _READER_MODULES]
    builtin = [m for m in modules if m in READERS and m not in _FALLBACKS]
    custom = [n for n in READERS.names() if n not in modules]
    return [*builtin, *custom, *(m for m in _FALLBACKS if m in READERS)]


def detect_format(path: str | Path) -> str:
    """The first registered format whose files are present at ``path``."""
    _load_all()
    p = Path(path)
    if not p.exists():
        raise XmrError(f"{p}: no such file or directory")
    for name in list_readers():
        if READERS.get(name).detect(p):
            return name
    raise XmrError(
        f"{p}: cannot detect the data set format; pass --format ({', '.join(list_readers())})"
    )


def load_dataset(
    path: str | Path,
    format: str | None = None,
    split: str | None = None,
    *,
    images: str | Path | None = None,
    skip_bad: bool = False,
    captions: str | Path | None = None,
):
    """Read a data set. ``format=None`` detects it; ``split`` limits reading to one split;
    ``captions`` (a ``captions.jsonl`` of ``xmr caption``) adds its captions to the items."""
    _load_all()
    fmt = format if format and format != "auto" else detect_format(path)
    reader = READERS.get(fmt)
    dataset = reader().read(Path(path), split=split, images=images, skip_bad=skip_bad)
    return attach_captions(dataset, captions) if captions is not None else dataset


def attach_captions(dataset, captions: str | Path):
    """Add to every item the successful captions a JSON-lines file gives for its id (records
    ``{"id", "caption", "error"}``, as ``xmr caption`` writes them), in file order, skipping
    ones the item already has. Returns ``dataset``."""
    path = Path(captions)
    if not path.is_file():
        raise XmrError(f"{path}: no such captions file")
    by_id: dict[str, list[str]] = {}
    for record in read_jsonl(path):
        text = record.get("caption")
        if (
            record.get("id") is not None
            and isinstance(text, str)
            and text
            and not record.get("error")
        ):
            by_id.setdefault(str(record["id"]), []).append(text)
    for split in dataset.splits.values():
        for item in split.items.values():
            for text in by_id.get(item.id, ()):
                if text not in item.captions:
                    item.captions.append(text)
    return dataset
