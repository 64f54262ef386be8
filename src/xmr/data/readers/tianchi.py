"""Tianchi captioned e-commerce retrieval (seed 001): text -> image + caption.

Expected layout (``PATH`` is the directory, or one of its query files)::

    PATH/MR_train_queries_with_captions.json                   train: a JSON array or JSON Lines
    PATH/MR_valid_queries_with_captions_standard_simple.jsonl  valid
    PATH/MR_{split}_imgs.tsv or PATH/{split}_imgs.tsv          images as MUGE-style base64 TSV,
    PATH/{split}_images/ or PATH/images/                       or as files named {image_id}.jpg

A query file is any ``*.json``/``*.jsonl`` named ``*queries_with_captions*`` or whose first
record has ``text_input`` or an ``item_ids`` object; its split is the split word in its name
(``train``, ``valid``, ``val``, ``test``). ``--images`` names the TSV or image folder instead.

Records are either train style ``{query_id, query_text, image_id, text_input: [captions]}``
(one record per query-image pair; a query may recur) or valid style
``{query_id, query_text, item_ids: {image_id: caption}}`` (a list of ids is accepted too).
Items carry their captions (their text side for text -> image+text retrieval); relevance is
query -> its images (an empty ``item_ids`` is a judged query with nothing relevant, scored 0);
``pairs``: item -> the texts of its queries. With an image source, every
image of it is an item (the gallery) and every referenced id must be one of them; without one
the referenced items are text-only (``image=None``).
"""

from __future__ import annotations

import re
from pathlib import Path

from xmr.data.dataset import Item, Query, RetrievalDataset, Split
from xmr.data.images import ImageRef
from xmr.data.readers import register_reader
from xmr.data.readers._common import (
    BadRecords,
    Record,
    as_ident,
    choose_splits,
    first_json_record,
    image_files,
    iter_json_records,
    require_content,
    require_path,
    split_from_name,
)
from xmr.data.readers.muge import read_image_tsv
from xmr.errors import XmrError

_CAPTIONS_NAME = re.compile(r".*queries_with_captions.*\.jsonl?")


def _is_query_file(path: Path) -> bool:
    if path.suffix not in (".json", ".jsonl"):
        return False
    if _CAPTIONS_NAME.fullmatch(path.name):
        return True
    first = first_json_record(path)
    return first is not None and ("text_input" in first or isinstance(first.get("item_ids"), dict))


def _query_files(folder: Path) -> dict[str, Path]:
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and _is_query_file(p))
    except OSError:
        return {}
    found: dict[str, Path] = {}
    for f in files:
        name = split_from_name(f.name) or f.stem
        if name in found:
            raise XmrError(
                f"{folder}: two query files for split '{name}': {found[name].name}, {f.name}"
            )
        found[name] = f
    return found


def _image_source(folder: Path, split: str) -> Path | None:
    """A TSV file or an image folder for ``split`` in ``folder`` (see the module docs)."""
    for name in (f"MR_{split}_imgs.tsv", f"{split}_imgs.tsv"):
        if (folder / name).is_file():
            return folder / name
    for name in (f"{split}_images", f"MR_{split}_images", "images"):
        if (folder / name).is_dir():
            return folder / name
    return None


@register_reader("tianchi")
class TianchiReader:
    name = "tianchi"

    @staticmethod
    def detect(path: Path) -> bool:
        if path.is_file():
            return _is_query_file(path)
        return bool(_query_files(path))

    def read(
        self,
        path: Path,
        *,
        split: str | None = None,
        images: str | Path | None = None,
        skip_bad: bool = False,
    ) -> RetrievalDataset:
        path = Path(path)
        require_path(path)
        if path.is_file():
            folder = path.parent
            files = {split or split_from_name(path.name) or path.stem: path}
        else:
            folder = path
            files = _query_files(path)
        names = choose_splits(files, split, path)
        bad = BadRecords(skip_bad)
        dataset = RetrievalDataset(format=self.name, root=path)
        for name in names:
            source = _image_source(folder, name)
            if images is not None:
                given = Path(images)
                require_path(given)
                source = (_image_source(given, name) if given.is_dir() else None) or given
            dataset.splits[name] = _read_split(name, files[name], source, bad)
        return bad.attach(dataset)


def _load_gallery(source: Path, bad: BadRecords, items: dict[str, Item]) -> None:
    """Every image of ``source`` as an item: TSV lines, or image files with their stem as id."""
    if source.is_dir():
        for f in image_files(source):
            items.setdefault(f.stem, Item(f.stem, ImageRef(path=str(f))))
    else:
        read_image_tsv(source, bad, items)


def _captions(record: Record) -> list[tuple[str, str, list[str]]]:
    """``(field, image id, captions)`` of a train-style or valid-style record."""
    if "image_id" in record.data:
        iid = record.ident("image_id")
        return [("image_id", iid, record.text_list("text_input"))]
    key, value = record.value("item_ids", "image_id")
    if isinstance(value, list):
        return [(key, as_ident(v, record, key), []) for v in value]
    if not isinstance(value, dict):
        record.fail(f"expected an object {{image id: caption}}, got {type(value).__name__}", key)
    out = []
    for raw_id, caption in value.items():
        iid = as_ident(raw_id, record, key)
        if not isinstance(caption, str) or not caption.strip():
            record.fail(f"caption of image '{iid}' is not a non-empty string", key)
        out.append((key, iid, [caption.strip()]))
    return out


def _read_split(name: str, file: Path, source: Path | None, bad: BadRecords) -> Split:
    split = Split(name)
    if source is not None:
        _load_gallery(source, bad, split.items)
    require_content(file)
    for record in iter_json_records(file, bad):
        with bad:
            qid = record.ident("query_id")
            text = record.text("query_text")
            entries = _captions(record)
            for key, iid, _ in entries:
                if source is not None and iid not in split.items:
                    record.fail(f"unknown image id '{iid}' (not in {source})", key)
            known = split.queries.get(qid)
            if known is not None and known.text != text:
                record.fail(f"query {qid} had another text before: {known.text!r}", "query_text")
            split.queries.setdefault(qid, Query(qid, text))
            relevant = split.relevance.setdefault(qid, set())
            for _, iid, captions in entries:
                item = split.items.setdefault(iid, Item(iid))
                item.captions.extend(c for c in captions if c not in item.captions)
                relevant.add(iid)
                texts = split.pairs.setdefault(iid, [])
                if text not in texts:
                    texts.append(text)
    return split
