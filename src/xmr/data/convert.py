"""Write one split of a data set in another format (``xmr data convert``).

Targets, all readable again by the reader of the same name:

- ``evalscope``: ``OUT/image_queries.jsonl``, one line per image with the texts of the queries it
  is relevant to (``[]`` for an image no query wants). Image paths are absolute, because
  evalscope opens them as given (relative to its working directory).
- ``beir``: ``OUT/corpus.jsonl`` (``_id`` = item id, ``title`` empty, ``text`` = the item's
  captions joined by spaces, and ``image``: the image path relative to ``OUT``, an xmr extension
  other BEIR tools ignore), ``OUT/queries.jsonl`` and ``OUT/qrels/{split}.tsv`` with a header.
- ``csv``: ``OUT/{split}.csv`` with open_clip's columns ``filepath`` (absolute) and ``title``,
  one row per relevant (image, query text) pair and one row with an empty title per image that
  no query wants. Comma-separated: open_clip needs ``--csv-separator ,``.

Images go to ``OUT/images/``: files are hard-linked (copied across file systems), TSV/base64
images are written as the files they encode; names come from the item ids. With
``copy_images=False`` outputs point at the original files instead (TSV images are still written).
evalscope and csv hold image items only (text-only items are left out), and none of them can
hold a query that no image is relevant to; the summary counts what was left out. Conversion
writes into a temporary directory and renames it to ``OUT`` at the end, so a failure leaves no
half-written output.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xmr.data.dataset import Item, RetrievalDataset, Split
from xmr.errors import DataError, XmrError
from xmr.io.failures import WriteError, write_error
from xmr.io.outdirs import prepare_output_dir

TARGETS = ("evalscope", "beir", "csv")
IMAGES_DIR = "images"

_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
_UNSAFE = re.compile(r"[^\w.\-]+")


def image_extension(data: bytes) -> str | None:
    """The file extension of encoded image bytes, from their magic number."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), None)


class ImageExporter:
    """Puts each item's image in ``folder`` as a file and returns the path it will have once
    ``folder`` is moved to ``final`` (absolute)."""

    def __init__(self, folder: Path, final: Path, *, copy: bool = True) -> None:
        self.folder = folder
        self.final = final
        self.copy = copy
        self.used: set[str] = set()
        self.n_written = 0

    def _destination(self, item_id: str, ext: str) -> Path:
        stem = item_id[: -len(ext)] if ext and item_id.lower().endswith(ext) else item_id
        stem = _UNSAFE.sub("_", stem.replace("/", "__")).strip("._") or "image"
        name, k = f"{stem}{ext}", 1
        while name.lower() in self.used:
            k += 1
            name = f"{stem}-{k}{ext}"
        self.used.add(name.lower())
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / name

    def export(self, item: Item) -> Path | None:
        ref = item.image
        if ref is None:
            return None
        if ref.path is not None:
            source = Path(ref.path)
            if not self.copy:
                return source.resolve()
            dest = self._destination(item.id, source.suffix.lower())
            try:
                os.link(source, dest)
            except OSError:
                try:
                    shutil.copyfile(source, dest)
                except OSError as exc:
                    if exc.filename is not None and Path(exc.filename) == source:
                        raise DataError(
                            f"cannot copy image: {exc.strerror}", file=ref.path
                        ) from None
                    # The destination refused it (a full disk): name the file being written.
                    raise write_error(exc, self.final / dest.name, dest) from exc
        else:
            data = ref.read_bytes()
            ext = image_extension(data)
            if ext is None:
                raise DataError(
                    "image data is not JPEG, PNG, GIF, WebP, BMP or TIFF", file=ref.describe()
                )
            dest = self._destination(item.id, ext)
            try:
                dest.write_bytes(data)
            except OSError as exc:
                raise write_error(exc, self.final / dest.name, dest) from exc
        self.n_written += 1
        return self.final / dest.name


def _query_texts(split: Split) -> dict[str, list[str]]:
    """item id -> texts of the queries relevant to it, in query order."""
    texts: dict[str, dict[str, None]] = {}  # ordered sets: an item can have thousands
    for qid, query in split.queries.items():
        for iid in split.relevance.get(qid, ()):
            texts.setdefault(iid, {})[query.text] = None
    return {iid: list(bucket) for iid, bucket in texts.items()}


def _jsonl(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_evalscope(split: Split, out: Path, images: ImageExporter) -> dict[str, Any]:
    texts = _query_texts(split)
    records, kept = [], set()
    for item in split.items.values():
        path = images.export(item)
        if path is not None:
            kept.add(item.id)
            records.append({"image_path": str(path), "query": texts.get(item.id, [])})
    _jsonl(out / "image_queries.jsonl", records)
    return {"n_items": len(records), "kept_items": kept}


def _write_beir(split: Split, out: Path, images: ImageExporter) -> dict[str, Any]:
    def corpus():
        for item in split.items.values():
            record = {"_id": item.id, "title": "", "text": " ".join(item.captions)}
            path = images.export(item)
            if path is not None:
                # Relative to where corpus.jsonl will be (the final OUT, not the partial one).
                final_out = images.final.parent
                record["image"] = os.path.relpath(path, final_out) if images.copy else str(path)
            yield record

    _jsonl(out / "corpus.jsonl", corpus())
    queries = [q for q in split.queries.values() if split.relevance.get(q.id)]
    _jsonl(out / "queries.jsonl", ({"_id": q.id, "text": q.text} for q in queries))
    (out / "qrels").mkdir()
    with open(out / "qrels" / f"{split.name}.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q in queries:
            fh.writelines(f"{q.id}\t{iid}\t1\n" for iid in sorted(split.relevance[q.id]))
    return {"n_items": len(split.items), "kept_items": set(split.items)}


def _write_csv(split: Split, out: Path, images: ImageExporter) -> dict[str, Any]:
    texts = _query_texts(split)
    kept = set()
    with open(out / f"{split.name}.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filepath", "title"])
        for item in split.items.values():
            path = images.export(item)
            if path is not None:
                kept.add(item.id)
                writer.writerows([str(path), t] for t in texts.get(item.id) or [""])
    return {"n_items": len(kept), "kept_items": kept}


_WRITERS: dict[str, Callable[[Split, Path, ImageExporter], dict[str, Any]]] = {
    "evalscope": _write_evalscope,
    "beir": _write_beir,
    "csv": _write_csv,
}


def convert_dataset(
    dataset: RetrievalDataset,
    to: str,
    out: str | Path,
    *,
    split: str | None = None,
    copy_images: bool = True,
) -> dict[str, Any]:
    """Write split ``split`` (or the only split) of ``dataset`` to ``out`` in format ``to``.

    ``out`` must not exist or be an empty directory. Returns a summary: ``format``, ``out``,
    ``split``, ``n_items``, ``n_queries``, ``n_relevant_pairs`` (what was written),
    ``n_images_written``, ``dropped_items`` and ``dropped_queries`` (what the target cannot hold).
    """
    if to not in _WRITERS:
        raise XmrError(f"cannot convert to '{to}' (targets: {', '.join(TARGETS)})")
    chosen = dataset.split(split)
    # Never over an earlier conversion either: what it wrote may be what the user edited since.
    out = prepare_output_dir(out, is_ours=lambda _: False, what="a conversion target").resolve()
    partial = out.with_name(f".{out.name}.partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        images = ImageExporter(partial / IMAGES_DIR, out / IMAGES_DIR, copy=copy_images)
        written = _WRITERS[to](chosen, partial, images)
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except WriteError:
        raise
    except OSError as exc:
        raise XmrError(f"{out}: cannot write ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    kept = written["kept_items"]
    kept_queries = [q for q, rel in chosen.relevance.items() if rel & kept]
    n_pairs = sum(len(chosen.relevance[q] & kept) for q in kept_queries)
    return {
        "format": to,
        "out": str(out),
        "split": chosen.name,
        "n_items": written["n_items"],
        "n_queries": len(kept_queries),
        "n_relevant_pairs": n_pairs,
        "n_images_written": images.n_written,
        "dropped_items": len(chosen.items) - written["n_items"],
        "dropped_queries": len(chosen.queries) - len(kept_queries),
    }
