"""evalscope's custom image-text retrieval file (seed 003): ``image_queries.jsonl``.

Each line is ``{"image_path": "...", "query": ["text", ...]}``. ``PATH`` is the file or the
directory holding it. An ``image_path`` may be absolute or relative; a relative one is looked
up, first match wins, under ``--images DIR`` (when given), the file's directory, the current
directory (evalscope's own reading, as in the seed), then each parent of the file's directory
(so the seed's ``custom_eval/...`` paths work from anywhere in the project).

The item id is ``image_path`` as written (lines repeating a path add texts to that item). Each
distinct text is one query (ids ``q000000``... by first appearance) relevant to every image it
is listed with, so texts and images are many-to-many. One split, ``test``.
"""

from __future__ import annotations

from pathlib import Path

from xmr.data.dataset import Item, Query, RetrievalDataset, Split
from xmr.data.images import ImageRef
from xmr.data.readers import register_reader
from xmr.data.readers._common import (
    BadRecords,
    DirectoryIndex,
    choose_splits,
    first_json_record,
    iter_jsonl,
    numbered_query_ids,
    require_content,
    require_path,
)

FILE_NAME = "image_queries.jsonl"
SPLIT = "test"
_WHERE = "looked under --images, the file's directory, the current directory, the file's parents"


def _file(path: Path) -> Path:
    return path / FILE_NAME if path.is_dir() else path


def image_bases(file: Path, images: str | Path | None) -> list[Path]:
    """Where relative image paths are looked up, in order (see the module docs)."""
    here = file.parent.resolve()
    bases = [Path(images)] if images else []
    bases += [here, Path.cwd(), *here.parents]
    return list(dict.fromkeys(bases))


@register_reader("evalscope")
class EvalscopeReader:
    name = "evalscope"

    @staticmethod
    def detect(path: Path) -> bool:
        if path.is_dir():
            return (path / FILE_NAME).is_file()
        if path.suffix != ".jsonl":
            return False
        first = first_json_record(path)
        return first is not None and "image_path" in first and "query" in first

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
        choose_splits([SPLIT], split, path)
        file = _file(path)
        require_path(file)
        require_content(file)
        bad = BadRecords(skip_bad)
        index = DirectoryIndex()
        bases = image_bases(file, images)
        result = Split(SPLIT)
        texts_of: dict[str, list[str]] = {}
        order: dict[str, None] = {}  # distinct texts in order of first appearance
        for record in iter_jsonl(file, bad):
            with bad:
                image_path = record.text("image_path")
                texts = record.text_list("query")
                if image_path not in result.items:
                    found = index.resolve_among(bases, image_path)
                    if found is None:
                        record.fail(f"image file not found ({_WHERE})", "image_path")
                    result.items[image_path] = Item(image_path, ImageRef(path=found))
                known = texts_of.setdefault(image_path, [])
                known.extend(t for t in texts if t not in known)
                order.update(dict.fromkeys(texts))
        ids = numbered_query_ids(order)
        result.queries = {qid: Query(qid, text) for text, qid in ids.items()}
        for image_path, texts in texts_of.items():
            if texts:
                result.pairs[image_path] = texts
            for text in texts:
                result.relevance.setdefault(ids[text], set()).add(image_path)
        dataset = RetrievalDataset(format=self.name, root=path, splits={SPLIT: result})
        return bad.attach(dataset)
