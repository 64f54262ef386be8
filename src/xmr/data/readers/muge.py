"""MUGE multimodal retrieval (seed 004) and the Chinese-CLIP naming of the same files.

Per split, in one directory::

    MR_{split}_imgs.tsv        image_id<TAB>base64     ({split}_imgs.tsv in Chinese-CLIP)
    MR_{split}_queries.jsonl   {"query_id", "query_text", "item_ids"?}
    {split}_texts.jsonl        {"text_id", "text", "image_ids"?}   (Chinese-CLIP)

The TSV is indexed, never decoded: each item holds the byte offset of its line, and the image is
decoded (standard or urlsafe base64) only when it is read. A TSV line must have an id, a tab and
a non-empty base64 field (a leading UTF-8 byte order mark is skipped; an id longer than 256
characters is refused as swapped columns). Every relevant id must be a line of the split's TSV.
A query with an empty id list is judged with nothing relevant (it scores 0, as in the official
scorers); one without the field has no ground truth. ``pairs``: item ->
the texts of the queries it is relevant to. ``--images`` names the TSV when it lives elsewhere.
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
    bom_length,
    choose_splits,
    iter_jsonl,
    open_binary,
    require_content,
    require_path,
)
from xmr.errors import DataError, XmrError

_QUERIES = (re.compile(r"MR_(\w+?)_queries\.jsonl"), re.compile(r"(\w+?)_texts\.jsonl"))
_IMAGES = (re.compile(r"MR_(\w+?)_imgs\.tsv"), re.compile(r"(\w+?)_imgs\.tsv"))
# Checked on a field's first 64 bytes: cheap, and catches a shifted or swapped column.
_BASE64_PREFIX = re.compile(rb"[A-Za-z0-9+/_\-]*={0,2}")
# Ids are short (MUGE's are integers); a longer one is a base64 image in the id column.
MAX_ID_LENGTH = 256


def _match(patterns, name: str) -> str | None:
    for pattern in patterns:
        m = pattern.fullmatch(name)
        if m:
            return m.group(1)
    return None


def _files(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``(split -> queries file, split -> image TSV)`` in ``folder``; MUGE names win over
    Chinese-CLIP names for the same split."""
    queries: dict[str, Path] = {}
    tsvs: dict[str, Path] = {}
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return queries, tsvs
    for name in sorted(names, key=lambda n: not n.startswith("MR_")):
        split = _match(_QUERIES, name)
        if split:
            queries.setdefault(split.removeprefix("MR_"), folder / name)
        split = _match(_IMAGES, name)
        if split:
            tsvs.setdefault(split.removeprefix("MR_"), folder / name)
    return queries, tsvs


def read_image_tsv(path: Path, bad: BadRecords, items: dict[str, Item]) -> None:
    """Index an ``id<TAB>base64`` TSV into ``items`` (id -> Item with an ImageRef to the line).

    Lines are ~30 KB of base64 each and a TSV holds 100k+ of them: only the id and the first
    bytes of the image field are looked at (no copies of the whole line). A UTF-8 byte order
    mark before the first id is skipped (the line's offset points past it)."""
    file = str(path)
    require_content(path)
    offset = 0
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            start, offset = offset, offset + len(raw)
            if lineno == 1 and bom_length(raw):
                start += bom_length(raw)
                raw = raw[bom_length(raw) :]
            with bad:
                tab = raw.find(b"\t")
                if tab < 0:
                    if not raw.strip():
                        continue
                    raise DataError(
                        "expected 'id<TAB>base64', found no tab",
                        file=file,
                        line=lineno,
                        field="image",
                    )
                if raw.find(b"\t", tab + 1) >= 0:
                    raise DataError(
                        "expected 'id<TAB>base64', found more than 2 tab-separated fields",
                        file=file,
                        line=lineno,
                    )
                try:
                    iid = raw[:tab].decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise DataError(
                        "id is not valid UTF-8", file=file, line=lineno, field="id"
                    ) from None
                if not iid:
                    raise DataError("empty image id", file=file, line=lineno, field="id")
                if len(iid) > MAX_ID_LENGTH:
                    raise DataError(
                        f"id is {len(iid)} characters long ({iid[:20]!r}...): are the columns "
                        "swapped? expected 'id<TAB>base64'",
                        file=file,
                        line=lineno,
                        field="id",
                    )
                head = raw[tab + 1 : tab + 65].strip()
                if not head:
                    raise DataError("empty base64 image", file=file, line=lineno, field="image")
                if not _BASE64_PREFIX.fullmatch(head):
                    raise DataError(
                        f"not base64 image data ({head[:20]!r}...)",
                        file=file,
                        line=lineno,
                        field="image",
                    )
                if iid in items:
                    first = items[iid].image
                    raise DataError(
                        f"duplicate image id '{iid}' (first on line {first.line if first else '?'})",
                        file=file,
                        line=lineno,
                        field="id",
                    )
                items[iid] = Item(iid, ImageRef(tsv=file, offset=start, line=lineno, tsv_id=iid))


def relevant_ids(record: Record, keys: tuple[str, ...], items: dict[str, Item], where: str):
    """The list of ids under ``keys`` (None if absent), each checked against ``items``."""
    key, value = record.value(*keys, required=False)
    if value is None:
        return None
    if not isinstance(value, list):
        record.fail(f"expected a list of image ids, got {type(value).__name__}", key)
    ids = [as_ident(v, record, key) for v in value]
    for iid in ids:
        if iid not in items:
            record.fail(f"unknown image id '{iid}' (not in {where})", key)
    return ids


@register_reader("muge")
class MugeReader:
    name = "muge"

    @staticmethod
    def detect(path: Path) -> bool:
        if path.is_file():
            return bool(_match(_QUERIES, path.name) or _match(_IMAGES, path.name))
        queries, tsvs = _files(path)
        if queries:
            return True
        # A bare image TSV: MUGE unless tianchi caption files sit beside it.
        return bool(tsvs) and not any(path.glob("*_with_captions*"))

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
        queries, tsvs = _files(folder)
        if path.is_file():
            only = _match(_QUERIES, path.name) or _match(_IMAGES, path.name)
            if only is None:
                raise XmrError(f"{path}: not a MUGE file (MR_{{split}}_queries.jsonl / _imgs.tsv)")
            split = split or only.removeprefix("MR_")
        names = choose_splits([*queries, *tsvs], split, path)
        return read_tsv_splits(self.name, path, names, queries, tsvs, images, skip_bad, _read_split)


def read_tsv_splits(
    format_name: str,
    path: Path,
    names: list[str],
    texts: dict[str, Path],
    tsvs: dict[str, Path],
    images: str | Path | None,
    skip_bad: bool,
    read_split,
) -> RetrievalDataset:
    """Read the chosen splits of a MUGE-style data set (a text file and an image TSV per split).

    ``images`` (``--images``) replaces the image TSV of the one split being read;
    ``read_split(name, text_file, tsv, bad)`` reads one split.
    """
    if images is not None:
        if len(names) > 1:
            raise XmrError(f"{path}: images= applies to one split; choose it with split=")
        require_path(Path(images))
        tsvs[names[0]] = Path(images)
    bad = BadRecords(skip_bad)
    dataset = RetrievalDataset(format=format_name, root=path)
    for name in names:
        dataset.splits[name] = read_split(name, texts.get(name), tsvs.get(name), bad)
    return bad.attach(dataset)


def _read_split(name: str, queries: Path | None, tsv: Path | None, bad: BadRecords) -> Split:
    split = Split(name)
    if tsv is not None:
        read_image_tsv(tsv, bad, split.items)
    if queries is None:
        return split
    require_content(queries)
    where = tsv.name if tsv is not None else f"the split's image TSV (no MR_{name}_imgs.tsv)"
    for record in iter_jsonl(queries, bad):
        with bad:
            qid = record.ident("query_id", "text_id")
            text = record.text("query_text", "text")
            ids = relevant_ids(record, ("item_ids", "image_ids"), split.items, where)
            if qid in split.queries:
                record.fail(f"duplicate query id '{qid}'", "query_id")
            split.queries[qid] = Query(qid, text)
            if ids is not None:  # "item_ids": [] is judged, nothing relevant: it scores 0
                split.relevance[qid] = set(ids)
                for iid in ids:
                    texts = split.pairs.setdefault(iid, [])
                    if text not in texts:
                        texts.append(text)
    return split
