"""BEIR text retrieval, as evalscope writes it (seed 003)::

    PATH/corpus.jsonl      {"_id", "title"?, "text"}
    PATH/queries.jsonl     {"_id", "text"}
    PATH/qrels/{split}.tsv query-id<TAB>corpus-id<TAB>score, with a header line

Items are text-only: ``image=None`` and one caption, the text (``title text`` when a title is
given). A corpus line may also carry ``"image"``, a path relative to ``corpus.jsonl`` (as
``xmr data convert --out-format beir`` writes it): the item then has that image too. A pair is relevant
when its score is > 0. Each qrels file is a split with the queries it names; all splits share the
corpus. Without ``qrels/`` there is one split, ``test``, with every query and no relevance.
"""

from __future__ import annotations

import math
from pathlib import Path

from xmr.data.dataset import Item, Query, RetrievalDataset, Split
from xmr.data.images import ImageRef
from xmr.data.readers import register_reader
from xmr.data.readers._common import (
    BadRecords,
    DirectoryIndex,
    choose_splits,
    iter_jsonl,
    iter_lines,
    require_content,
    require_path,
)
from xmr.errors import DataError

CORPUS, QUERIES, QRELS = "corpus.jsonl", "queries.jsonl", "qrels"


@register_reader("beir")
class BeirReader:
    name = "beir"

    @staticmethod
    def detect(path: Path) -> bool:
        return path.is_dir() and (path / CORPUS).is_file() and (path / QUERIES).is_file()

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
        for name in (CORPUS, QUERIES):
            require_path(folder / name)
            require_content(folder / name)
        qrels_dir = folder / QRELS
        qrels = {p.stem: p for p in qrels_dir.glob("*.tsv")} if qrels_dir.is_dir() else {}
        names = choose_splits(qrels or ["test"], split, path)
        bad = BadRecords(skip_bad)
        items = _read_corpus(folder / CORPUS, bad)
        queries = _read_queries(folder / QUERIES, bad)
        dataset = RetrievalDataset(format=self.name, root=path)
        for name in names:
            result = Split(name, items=items)
            if name in qrels:
                result.relevance = _read_qrels(qrels[name], bad, items, queries)
                result.queries = {q: queries[q] for q in queries if q in result.relevance}
            else:
                result.queries = dict(queries)
            dataset.splits[name] = result
        return bad.attach(dataset)


def _read_corpus(file: Path, bad: BadRecords) -> dict[str, Item]:
    items: dict[str, Item] = {}
    index = DirectoryIndex()
    for record in iter_jsonl(file, bad):
        with bad:
            cid = record.ident("_id")
            title = record.text("title", required=False, allow_empty=True)
            text = record.text("text", allow_empty=True)
            image_path = record.text("image", required=False)
            if cid in items:
                record.fail(f"duplicate corpus id '{cid}'", "_id")
            image = None
            if image_path:
                found = index.resolve_among([file.parent], image_path)
                if found is None:
                    record.fail("image file not found (relative to corpus.jsonl)", "image")
                image = ImageRef(path=found)
            caption = f"{title} {text}".strip() if title else text
            items[cid] = Item(cid, image, captions=[caption] if caption else [])
    return items


def _read_queries(file: Path, bad: BadRecords) -> dict[str, Query]:
    queries: dict[str, Query] = {}
    for record in iter_jsonl(file, bad):
        with bad:
            qid = record.ident("_id")
            text = record.text("text")
            if qid in queries:
                record.fail(f"duplicate query id '{qid}'", "_id")
            queries[qid] = Query(qid, text)
    return queries


def _read_qrels(
    file: Path, bad: BadRecords, items: dict[str, Item], queries: dict[str, Query]
) -> dict[str, set[str]]:
    relevance: dict[str, set[str]] = {}
    where = str(file)
    require_content(file)
    for lineno, line in iter_lines(file, bad):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if lineno == 1 and fields[0].lower() in ("query-id", "query_id", "qid"):
            continue  # the header
        with bad:
            if len(fields) != 3:
                raise DataError(
                    f"expected 'query-id<TAB>corpus-id<TAB>score', found {len(fields)} field(s)",
                    file=where,
                    line=lineno,
                    field={1: "corpus-id", 2: "score"}.get(len(fields)),
                )
            qid, cid, score = fields
            if qid not in queries:
                raise DataError(
                    f"unknown query id '{qid}'", file=where, line=lineno, field="query-id"
                )
            if cid not in items:
                raise DataError(
                    f"unknown corpus id '{cid}'", file=where, line=lineno, field="corpus-id"
                )
            try:
                value = float(score)
            except ValueError:
                raise DataError(
                    f"score is not a number: {score!r}", file=where, line=lineno, field="score"
                ) from None
            if math.isnan(value):
                raise DataError("score is NaN", file=where, line=lineno, field="score")
            if value > 0:
                relevance.setdefault(qid, set()).add(cid)
    return relevance
