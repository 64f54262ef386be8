"""Karpathy-split captions: ``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_flickr8k.json``.

``PATH`` is the JSON file or a directory holding one. The document is
``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw", "sentid"?}, ...]}]}``.
Images are looked up under the image root (``--images DIR``, else the JSON's directory) as
``root/filepath/filename``, then ``root/filename``, then ``root/images/filename`` and
``root/flickr30k-images/filename`` (the usual unpacked layouts).

Splits are ``train`` (with ``restval``), ``val`` and ``test``. The item id is ``filename``.
Every sentence is one query (id: its ``sentid``, else ``{filename}#{k}``) relevant to its image,
and ``pairs`` maps each image to its sentences. Item captions stay empty: the sentences *are*
the queries, and an item carrying them would give its answers away to text+image models.
Errors name the JSON path of the bad entry (``images[12].sentences[0].raw``); the Karpathy files
are one line long, so a line number would say nothing.
"""

from __future__ import annotations

from pathlib import Path

from xmr.data.dataset import Item, Query, RetrievalDataset, Split
from xmr.data.images import ImageRef
from xmr.data.readers import register_reader
from xmr.data.readers._common import (
    BadRecords,
    DirectoryIndex,
    Record,
    as_ident,
    choose_splits,
    load_json,
    peek_text,
    require_content,
    require_path,
)
from xmr.errors import DataError

KNOWN_FILES = ("dataset_coco.json", "dataset_flickr30k.json", "dataset_flickr8k.json")
SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def _file(path: Path) -> Path | None:
    if path.is_file():
        return path
    return next((path / n for n in KNOWN_FILES if (path / n).is_file()), None)


@register_reader("coco")
class CocoReader:
    name = "coco"

    @staticmethod
    def detect(path: Path) -> bool:
        if path.is_dir():
            return _file(path) is not None
        if path.name in KNOWN_FILES:
            return True
        head = peek_text(path, 4096).lstrip()
        return path.suffix == ".json" and head.startswith("{") and '"sentences"' in head

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
        file = _file(path)
        if file is None:
            raise DataError(f"no Karpathy-split JSON ({', '.join(KNOWN_FILES)})", file=str(path))
        root = Path(images) if images else file.parent
        require_path(root)
        require_content(file)
        doc = load_json(file)
        entries = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise DataError(
                "expected an object with an 'images' list", file=str(file), field="images"
            )
        bad = BadRecords(skip_bad)
        wanted = set(choose_splits(SPLIT_NAMES.values(), split, path))
        index = DirectoryIndex()
        splits: dict[str, Split] = {}
        for i, entry in enumerate(entries):
            with bad:
                if not isinstance(entry, dict):
                    raise DataError("expected an object", file=str(file), field=f"images[{i}]")
                record = Record(entry, file, None, prefix=f"images[{i}]")
                name = record.text("split")
                if name not in SPLIT_NAMES:
                    record.fail(f"unknown split {name!r} (train, restval, val, test)", "split")
                if SPLIT_NAMES[name] not in wanted:
                    continue
                result = splits.setdefault(SPLIT_NAMES[name], Split(SPLIT_NAMES[name]))
                _add_image(record, result, root, index)
        ordered = {n: splits[n] for n in choose_splits(splits, None, path)}
        return bad.attach(RetrievalDataset(format=self.name, root=path, splits=ordered))


def _add_image(record: Record, result: Split, root: Path, index: DirectoryIndex) -> None:
    filename = record.text("filename")
    filepath = record.text("filepath", required=False) or ""
    key, sentences = record.value("sentences")
    if not isinstance(sentences, list):
        record.fail(f"expected a list, got {type(sentences).__name__}", key)
    if filename in result.items:
        record.fail(f"duplicate image '{filename}' in split {result.name}", "filename")
    candidates = [root / filepath, root, root / "images", root / "flickr30k-images"]
    found = index.resolve_among(candidates, filename)
    if found is None:
        record.fail(f"image file not found under {root / filepath}", "filename")
    queries = []
    for k, sentence in enumerate(sentences):
        if not isinstance(sentence, dict):
            record.fail("expected an object with 'raw'", f"sentences[{k}]")
        sub = Record(sentence, record.file, None, prefix=record.field_name(f"sentences[{k}]"))
        text = sub.text("raw")
        sentid = sentence.get("sentid")
        qid = as_ident(sentid, sub, "sentid") if sentid is not None else f"{filename}#{k}"
        if qid in result.queries or any(q.id == qid for q in queries):
            sub.fail(f"duplicate sentence id '{qid}'", "sentid")
        queries.append(Query(qid, text))
    result.items[filename] = Item(filename, ImageRef(path=found))
    if queries:
        result.pairs[filename] = [q.text for q in queries]
    for query in queries:
        result.queries[query.id] = query
        result.relevance[query.id] = {filename}
