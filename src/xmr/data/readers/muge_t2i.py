"""MUGE ECommerce-T2I (seed 004, text-to-image generation), read as a retrieval data set.

Per split, in one directory::

    T2I_{split}.txt.tsv    image_id<TAB>description        (train, val, test)
    T2I_{split}.img.tsv    image_id<TAB>base64 image       (train, val)
    T2I_test.tsv           image_id[<TAB>base64]           the submission to fill in (not read)

Each description is a query whose one relevant item is the image with its id (so the 90k train
pairs fine-tune and evaluate retrieval models, e.g. the one R-precision uses), and the item's
caption. Images are indexed by byte offset and decoded (standard or urlsafe base64) only when
read, as MUGE's retrieval TSVs are. A split with texts but no image TSV (test) has queries only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from xmr.data.dataset import Query, RetrievalDataset, Split
from xmr.data.readers import register_reader
from xmr.data.readers._common import BadRecords, choose_splits, iter_lines, require_path
from xmr.data.readers.muge import read_image_tsv, read_tsv_splits
from xmr.errors import DataError, XmrError

_TEXTS = re.compile(r"T2I_(\w+?)\.txt\.tsv")
_IMAGES = re.compile(r"T2I_(\w+?)\.img\.tsv")


@dataclass(frozen=True)
class T2IText:
    """One line of a ``T2I_*.txt.tsv``: the image id, its description, the 1-based line."""

    id: str
    text: str
    line: int


def read_t2i_texts(path: str | Path, bad: BadRecords | None = None) -> list[T2IText]:
    """The ``id<TAB>description`` lines of ``path`` in order; ids must be unique.

    Raises:
        DataError: a line without a tab, an empty id or text, a duplicate id (file:line).
    """
    path = Path(path)
    require_path(path)
    bad = bad or BadRecords(False)
    file, seen, out = str(path), {}, []
    for lineno, line in iter_lines(path, bad):
        with bad:
            if not line.strip():
                continue
            iid, tab, text = line.partition("\t")
            iid, text = iid.strip(), text.strip()
            if not tab:
                raise DataError(
                    "expected 'id<TAB>description', found no tab", file=file, line=lineno
                )
            if not iid:
                raise DataError("empty image id", file=file, line=lineno, field="id")
            if not text:
                raise DataError("empty description", file=file, line=lineno, field="text")
            if "\t" in text:
                raise DataError(
                    "expected 'id<TAB>description', found more than 2 tab-separated fields",
                    file=file,
                    line=lineno,
                )
            if iid in seen:
                raise DataError(
                    f"duplicate image id '{iid}' (first on line {seen[iid]})",
                    file=file,
                    line=lineno,
                    field="id",
                )
            seen[iid] = lineno
            out.append(T2IText(iid, text, lineno))
    return out


def _files(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    texts: dict[str, Path] = {}
    images: dict[str, Path] = {}
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return texts, images
    for name in names:
        for pattern, found in ((_TEXTS, texts), (_IMAGES, images)):
            m = pattern.fullmatch(name)
            if m:
                found[m.group(1)] = folder / name
    return texts, images


def _split_of(path: Path) -> str | None:
    m = _TEXTS.fullmatch(path.name) or _IMAGES.fullmatch(path.name)
    return m.group(1) if m else None


@register_reader("muge-t2i")
class MugeT2IReader:
    name = "muge-t2i"

    @staticmethod
    def detect(path: Path) -> bool:
        if path.is_file():
            return _split_of(path) is not None
        texts, images = _files(path)
        return bool(texts or images)

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
        folder = path.parent if path.is_file() else path
        texts, tsvs = _files(folder)
        if path.is_file():
            only = _split_of(path)
            if only is None:
                raise XmrError(f"{path}: not a MUGE T2I file (T2I_{{split}}.txt.tsv / .img.tsv)")
            split = split or only
        names = choose_splits([*texts, *tsvs], split, path)
        return read_tsv_splits(self.name, path, names, texts, tsvs, images, skip_bad, _read_split)


def _read_split(name: str, texts: Path | None, tsv: Path | None, bad: BadRecords) -> Split:
    split = Split(name)
    if tsv is not None:
        read_image_tsv(tsv, bad, split.items)
    if texts is None:
        return split
    for record in read_t2i_texts(texts, bad):
        with bad:
            if tsv is not None and record.id not in split.items:
                raise DataError(
                    f"image id '{record.id}' is not a line of {tsv.name}",
                    file=str(texts),
                    line=record.line,
                    field="id",
                )
            split.queries[record.id] = Query(record.id, record.text)
            if tsv is not None:
                split.relevance[record.id] = {record.id}
                split.pairs[record.id] = [record.text]
                split.items[record.id].captions.append(record.text)
    return split
