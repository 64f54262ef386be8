"""Image path + caption tables (open_clip's ``--train-data`` CSV convention).

``PATH`` is a ``.csv``/``.tsv`` file, or a directory of them (each file is a split named by its
stem). The first line is a header. ``.tsv`` is tab-separated; a ``.csv`` is comma-separated
unless its header has tabs and no commas (open_clip's default separator is a tab). Columns, by
header name (case-insensitive): the image is ``filepath`` (open_clip's default) or ``image``,
``image_path``, ``filename``, ``file``, ``path``; the caption is ``title`` (open_clip's default)
or ``caption``, ``text``, ``sentence``, ``query``. ``CsvReader(image_column=..., caption_column=...,
delimiter=...)`` sets them explicitly.

An image path is absolute or relative to ``--images DIR`` (when given), the table's directory,
then the current directory (open_clip opens paths as given). The item id is the path as written;
rows repeating a path add captions. Each distinct non-empty caption is one query (``q000000``...
by first appearance) relevant to every image it is written with; an empty caption keeps the image
as an item without texts. ``pairs``: item -> its captions. A single file's split is the split
word in its name (``test.csv`` -> ``test``), else ``train``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from xmr.data.dataset import Item, Query, RetrievalDataset, Split
from xmr.data.images import ImageRef
from xmr.data.readers import register_reader
from xmr.data.readers._common import (
    BadRecords,
    DirectoryIndex,
    choose_splits,
    iter_lines,
    numbered_query_ids,
    peek_text,
    require_path,
    split_from_name,
)
from xmr.errors import DataError

IMAGE_COLUMNS = ("filepath", "image", "image_path", "filename", "file", "path")
CAPTION_COLUMNS = ("title", "caption", "text", "sentence", "query")
SUFFIXES = (".csv", ".tsv")


def _delimiter(path: Path, header: str) -> str:
    if path.suffix.lower() == ".tsv" or ("\t" in header and "," not in header):
        return "\t"
    return ","


def _columns(header: list[str], image: str | None, caption: str | None):
    """Indices of the image and caption columns (None when not found)."""
    lowered = [h.strip().lower() for h in header]

    def find(explicit: str | None, defaults: tuple[str, ...]) -> int | None:
        for name in (explicit,) if explicit else defaults:
            if name.lower() in lowered:
                return lowered.index(name.lower())
        return None

    return find(image, IMAGE_COLUMNS), find(caption, CAPTION_COLUMNS)


def _header(path: Path) -> list[str]:
    first = peek_text(path, 8192).split("\n", 1)[0].rstrip("\r")
    return next(csv.reader([first], delimiter=_delimiter(path, first)), [])


def _is_table(path: Path) -> bool:
    if path.suffix.lower() not in SUFFIXES:
        return False
    image, caption = _columns(_header(path), None, None)
    return image is not None and caption is not None


@register_reader("csv")
class CsvReader:
    name = "csv"

    def __init__(
        self,
        image_column: str | None = None,
        caption_column: str | None = None,
        delimiter: str | None = None,
    ) -> None:
        self.image_column = image_column
        self.caption_column = caption_column
        self.delimiter = delimiter

    @staticmethod
    def detect(path: Path) -> bool:
        if path.is_file():
            return _is_table(path)
        try:
            return any(_is_table(p) for p in path.iterdir() if p.is_file())
        except OSError:
            return False

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
            tables = {split or split_from_name(path.name) or "train": path}
        else:
            tables = {
                p.stem: p
                for p in sorted(path.iterdir())
                if p.is_file() and p.suffix.lower() in SUFFIXES
            }
        bad = BadRecords(skip_bad)
        dataset = RetrievalDataset(format=self.name, root=path)
        for name in choose_splits(tables, split, path):
            dataset.splits[name] = self._read_table(name, tables[name], images, bad)
        return bad.attach(dataset)

    def _read_table(self, name: str, file: Path, images, bad: BadRecords) -> Split:
        where = str(file)
        lines = iter_lines(file, bad)
        first = next(lines, None)
        if first is None:
            raise DataError("empty file: expected a header line", file=where, line=1)
        delimiter = self.delimiter or _delimiter(file, first[1])
        header = next(csv.reader([first[1]], delimiter=delimiter))
        image_col, caption_col = _columns(header, self.image_column, self.caption_column)
        for col, wanted, defaults in (
            (image_col, self.image_column, IMAGE_COLUMNS),
            (caption_col, self.caption_column, CAPTION_COLUMNS),
        ):
            if col is None:
                names = wanted or " / ".join(defaults)
                raise DataError(
                    f"no column {names} in the header {header}", file=where, line=1, field=names
                )
        image_field = header[image_col]
        bases = [*([Path(images)] if images else []), file.parent.resolve(), Path.cwd()]
        index = DirectoryIndex()
        result = Split(name)
        captions: dict[str, None] = {}  # distinct captions in order of first appearance
        # Feed the csv module our own lines so that non-UTF-8 bytes are reported by line; it
        # asks for more lines itself when a quoted field spans several.
        position = {"line": 1}

        def feed():
            for lineno, text in lines:
                position["line"] = lineno
                yield text + "\n"

        rows = csv.reader(feed(), delimiter=delimiter)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except csv.Error as exc:
                bad.report(DataError(f"bad CSV ({exc})", file=where, line=position["line"]))
                continue
            lineno = position["line"]
            if not any(cell.strip() for cell in row):
                continue
            with bad:
                if len(row) != len(header):
                    raise DataError(
                        f"expected {len(header)} columns, found {len(row)}", file=where, line=lineno
                    )
                image_path, caption = row[image_col].strip(), row[caption_col].strip()
                if not image_path:
                    raise DataError("empty image path", file=where, line=lineno, field=image_field)
                if image_path not in result.items:
                    found = index.resolve_among(bases, image_path)
                    if found is None:
                        raise DataError(
                            "image file not found (relative to --images, the table's directory"
                            " or the current directory)",
                            file=where,
                            line=lineno,
                            field=image_field,
                        )
                    result.items[image_path] = Item(image_path, ImageRef(path=found))
                if caption:
                    captions[caption] = None
                    texts = result.pairs.setdefault(image_path, [])
                    if caption not in texts:
                        texts.append(caption)
        ids = numbered_query_ids(captions)
        result.queries = {qid: Query(qid, text) for text, qid in ids.items()}
        for image_path, texts in result.pairs.items():
            for text in texts:
                result.relevance.setdefault(ids[text], set()).add(image_path)
        return result
