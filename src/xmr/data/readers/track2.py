"""Track2 traffic retrieval (seed 000): ``image$attribute$text`` label files.

Accepted layouts (``PATH`` is what ``load_dataset``/``--format track2`` gets)::

    PATH/{split}/{split}_label.txt     image$attribute$text (train, and test when published)
    PATH/{split}/{split}_images/       the images
    PATH/{split}/{split}_text.txt      optional: one query text per line (test/test_text.txt)
    PATH/{split}/{split}_gt.txt        optional: text$img1$img2... ground truth (test_gt.txt;
                                       PATH/{split}_gt.txt is accepted too)

``PATH`` may also be one split directory (``PATH/train`` with ``train_label.txt``) or one label
file; the images are then ``--images DIR``, else the sibling ``{split}_images/`` directory,
else the label file's own directory.

- The attribute is a 0/1 vector (``0,1,0,...``: category ``pedestrian``) or a sentence
  (``A white Audi.``: category ``vehicle``). A line splits at its first two ``$``; any further
  ``$`` stays in the text.
- An item's id is the image field as written (``vehicle_0001886.jpg``, or ``090000`` without
  extension), so predictions use the data set's own names; the field resolves to the existing
  file, with an extension when the field has none.
- Queries are the distinct texts: first those of ``{split}_text.txt`` in file order, then the
  label file's texts in order of first appearance, then texts only in the ground-truth file.
  Query ids are ``q000000``, ``q000001``... in that order; a query's category is that of the
  images it appears with.
- Names: an item's id is the label file's spelling (or the file name, without a label file);
  where the ground-truth file spells an image otherwise (``000240.jpg`` for the label's
  ``000240``) that spelling is kept in ``split.item_names``, because the official scorer
  compares names as exact strings: submissions are written, and matched, with it.
- Relevance: with a ground-truth file, exactly that file (a line ``text$`` with no image is a
  judged query with nothing relevant, scored 0 as the official scorer does); otherwise an image is relevant to a
  text when it carries an attribute string that the text appears with (the union when the text
  appears with several). A split with only texts and images has queries and items, no relevance.
- Items are the label file's images; a split without a label file has every image of
  ``{split}_images/`` as an item, its file name as id.
- ``pairs``: item id -> the texts of its label lines.
- Refused (a DataError naming file and line; skipped and counted with ``skip_bad``): a label line
  with fewer than two ``$``, a ground-truth line with no ``$`` at all (it would become a query
  without relevance), a ``{split}_text.txt`` line holding ``$`` (a label or ground-truth line in
  the wrong file). A file of the layout that is present but empty is an error naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from xmr.data.dataset import Item, Query, RetrievalDataset, Split
from xmr.data.images import ImageRef
from xmr.data.readers import register_reader
from xmr.data.readers._common import (
    BadRecords,
    DirectoryIndex,
    choose_splits,
    image_files,
    iter_lines,
    numbered_query_ids,
    ordered_unique,
    peek_text,
    require_content,
    require_path,
)
from xmr.errors import DataError, XmrError

LABEL, TEXT, GT, IMAGES = "_label.txt", "_text.txt", "_gt.txt", "_images"
_VECTOR = re.compile(r"\s*[01](\s*,\s*[01])*\s*")


def attribute_category(attribute: str) -> str:
    """``pedestrian`` for a 0/1 attribute vector, ``vehicle`` for a sentence."""
    return "pedestrian" if _VECTOR.fullmatch(attribute) else "vehicle"


class _SplitFiles:
    def __init__(
        self, name: str, folder: Path, images: Path | None = None, root: Path | None = None
    ) -> None:
        self.name = name
        label, text, gt = (folder / f"{name}{suffix}" for suffix in (LABEL, TEXT, GT))
        if not gt.exists() and root is not None:
            gt = root / f"{name}{GT}"  # a ground-truth file beside the split folders
        for path in (label, text, gt):
            if path.exists() and not path.is_file():  # never read as "no such file"
                raise DataError("expected a file, found a directory", file=str(path))
        self.label = label if label.is_file() else None
        self.text = text if text.is_file() else None
        self.gt = gt if gt.is_file() else None
        self.images = images or folder / f"{name}{IMAGES}"


def _is_split_dir(folder: Path) -> bool:
    return any((folder / f"{folder.name}{s}").is_file() for s in (LABEL, TEXT))


def _split_dirs(root: Path) -> list[Path]:
    try:
        return [d for d in root.iterdir() if d.is_dir() and _is_split_dir(d)]
    except OSError:
        return []


def _layout(path: Path, split: str | None, images: Path | None) -> list[_SplitFiles]:
    if path.is_file():
        name = path.name[: -len(LABEL)] if path.name.endswith(LABEL) else path.stem
        sibling = path.parent / f"{name}{IMAGES}"
        image_dir = images or (sibling if sibling.is_dir() else path.parent)
        files = _SplitFiles(split or name, path.parent, image_dir)
        files.label = path
        return [files]
    if _is_split_dir(path):
        chosen = choose_splits([path.name], split, path)
        return [_SplitFiles(chosen[0], path, images)]
    folders = {d.name: d for d in _split_dirs(path)}
    chosen = choose_splits(folders, split, path)
    if images is not None and len(chosen) > 1:
        raise XmrError(f"{path}: images= applies to one split; choose it with split=")
    return [_SplitFiles(name, folders[name], images, root=path) for name in chosen]


@register_reader("track2")
class Track2Reader:
    name = "track2"

    @staticmethod
    def detect(path: Path) -> bool:
        if path.is_file():
            if path.name.endswith(LABEL):
                return True
            first = next((ln for ln in peek_text(path, 8192).splitlines() if ln.strip()), "")
            return path.suffix == ".txt" and first.count("$") >= 2
        return _is_split_dir(path) or bool(_split_dirs(path))

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
        bad = BadRecords(skip_bad)
        layout = _layout(path, split, Path(images) if images else None)
        dataset = RetrievalDataset(format=self.name, root=path)
        for files in layout:
            dataset.splits[files.name] = _read_split(files, bad)
        return bad.attach(dataset)


def _read_split(files: _SplitFiles, bad: BadRecords) -> Split:
    split = Split(files.name)
    index = DirectoryIndex()
    if not files.images.is_dir():
        raise DataError("images directory not found (pass images=DIR)", file=str(files.images))
    for present in (files.label, files.text, files.gt):
        if present is not None:
            require_content(present)
    text_attrs: dict[str, list[str]] = {}
    attr_items: dict[str, dict[str, None]] = {}  # attribute -> its images, as an ordered set
    text_category: dict[str, str | None] = {}
    if files.label is not None:
        _read_labels(files, split, index, bad, text_attrs, attr_items, text_category)
    else:
        for image in image_files(files.images):
            split.items[image.name] = Item(image.name, ImageRef(path=str(image)))

    texts: list[str] = []
    if files.text is not None:
        texts = _read_texts(files.text, bad)
    texts.extend(text_attrs)
    gt = _read_gt(files, split, bad) if files.gt is not None else None
    if gt is not None:
        texts.extend(gt)
        for text, iids in gt.items():
            if iids:
                text_category.setdefault(text, split.items[iids[0]].category)
    ids = numbered_query_ids(texts)

    if gt is not None:
        relevance = {text: set(items) for text, items in gt.items()}
    else:
        # Texts with the same attribute strings share one set: a common pedestrian vector can be
        # carried by thousands of images and described by thousands of texts.
        by_attrs: dict[tuple[str, ...], set[str]] = {}
        relevance = {}
        for text, attrs in text_attrs.items():
            key = tuple(attrs)
            if key not in by_attrs:
                by_attrs[key] = {iid for a in attrs for iid in attr_items[a]}
            relevance[text] = by_attrs[key]
    for text, qid in ids.items():
        split.queries[qid] = Query(qid, text, text_category.get(text))
        if text in relevance:  # a ground-truth line without images is judged: it scores 0
            split.relevance[qid] = relevance[text]
    return split


def _read_labels(
    files: _SplitFiles,
    split: Split,
    index: DirectoryIndex,
    bad: BadRecords,
    text_attrs: dict[str, list[str]],
    attr_items: dict[str, dict[str, None]],
    text_category: dict[str, str | None],
) -> None:
    label = str(files.label)
    assert files.label is not None
    for lineno, line in iter_lines(files.label, bad):
        if not line.strip():
            continue
        with bad:
            parts = [p.strip() for p in line.split("$", 2)]
            if len(parts) < 3:
                missing = ("attribute", "text")[len(parts) - 1]
                raise DataError(
                    f"expected 'image$attribute$text', found {len(parts)} '$'-separated field(s)",
                    file=label,
                    line=lineno,
                    field=missing,
                )
            image, attribute, text = parts
            for name, value in (("image", image), ("attribute", attribute), ("text", text)):
                if not value:
                    raise DataError(f"empty {name}", file=label, line=lineno, field=name)
            item = split.items.get(image)
            if item is None:
                found = index.resolve(files.images, image)
                if found is None:
                    raise DataError(
                        f"no image file '{image}' in {files.images}",
                        file=label,
                        line=lineno,
                        field="image",
                    )
                item = Item(
                    image,
                    ImageRef(path=found),
                    attribute=attribute,
                    category=attribute_category(attribute),
                )
                split.items[image] = item
            attrs = text_attrs.setdefault(text, [])
            if attribute not in attrs:
                attrs.append(attribute)
            attr_items.setdefault(attribute, {})[image] = None
            text_category.setdefault(text, item.category)
            texts = split.pairs.setdefault(image, [])
            if text not in texts:
                texts.append(text)


def _read_texts(path: Path, bad: BadRecords) -> list[str]:
    """The query texts of ``{split}_text.txt``, one per line. A line with ``$`` is refused: '$'
    separates the fields of the Track2 files, so such a line is a label or ground-truth line in
    the wrong file (taking it as a text would make a query nobody asked)."""
    texts = []
    for lineno, line in iter_lines(path, bad):
        text = line.strip()
        if not text:
            continue
        with bad:
            if "$" in text:
                raise DataError(
                    "a query text holds '$' (the field separator of the label and ground-truth "
                    "files: is this a label or ground-truth line in the text file?)",
                    file=str(path),
                    line=lineno,
                    field="text",
                )
            texts.append(text)
    return texts


def _read_gt(files: _SplitFiles, split: Split, bad: BadRecords) -> dict[str, list[str]]:
    """text -> relevant item ids from ``text$img1$img2...`` lines; image names match an item id,
    its file name, or its file name's stem."""
    assert files.gt is not None
    gt_file = str(files.gt)
    by_name: dict[str, str] = {}
    for iid, item in split.items.items():
        file_name = os.path.basename(item.image.path) if item.image and item.image.path else iid
        by_name.setdefault(file_name, iid)
        by_name.setdefault(os.path.splitext(file_name)[0], iid)
    by_name.update({iid: iid for iid in split.items})
    gt: dict[str, list[str]] = {}
    for lineno, line in iter_lines(files.gt, bad):
        if not line.strip():
            continue
        with bad:
            if "$" not in line:
                # Without it the whole line would become a query with no relevant image, and
                # the query it belongs to would lose its relevance: two queries skipped silently.
                raise DataError(
                    "expected 'text$image1$image2...', found no '$'",
                    file=gt_file,
                    line=lineno,
                    field="image 1",
                )
            text, *names = (p.strip() for p in line.split("$"))
            if not text:
                raise DataError("empty text", file=gt_file, line=lineno, field="text")
            ids = []
            for k, name in enumerate(names, 1):
                if not name:
                    continue
                iid = by_name.get(name)
                if iid is None:
                    raise DataError(
                        f"unknown image '{name}' (not among the split's images)",
                        file=gt_file,
                        line=lineno,
                        field=f"image {k}",
                    )
                ids.append(iid)
                if name != iid:  # the scorer matches the ground truth's spelling exactly
                    split.item_names.setdefault(iid, name)
            gt.setdefault(text, [])
            gt[text] = ordered_unique([*gt[text], *ids])
    return gt
