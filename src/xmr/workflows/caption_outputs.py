"""The text retrieval set ``xmr caption`` writes: evalscope's BEIR layout (seed 003)::

    DIR/retrieval_data/corpus.jsonl   {"_id", "text"}: one line per captioned image
    DIR/retrieval_data/queries.jsonl  {"_id", "text"}: the data set's query texts
    DIR/retrieval_data/qrels/test.tsv query-id<TAB>corpus-id<TAB>score (with the header)

Ids (``ids=``):

- ``"dataset"`` (the default): the data set's own query and item ids. Queries and items are
  different name spaces; where any query id equals an item id, every query id gets the prefix
  ``q:`` and every corpus id ``d:``, so no query and document ever share an id.
- ``"evalscope"``: evalscope's numbering: corpus documents 0, 1, ... in item order and one query
  per (image, text) pair, numbered 0, 1, ... in the same walk, each image's texts in the order
  its file lists them (a text relevant to two images is two queries). Query i and document i then often share an id, and evaluators that drop a
  document whose id equals the query's (MTEB's ``ignore_identical_ids``, on by default in
  BEIR's evaluation) silently turn those hits into misses.

An image whose caption failed is left out of the corpus; a query left with no captioned relevant
image is left out of queries and qrels (both counted). The directory is swapped in whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xmr.data.dataset import Split
from xmr.errors import XmrError
from xmr.io import atomic_replace_dir, write_jsonl

RETRIEVAL_DIR = "retrieval_data"
ID_MODES = ("dataset", "evalscope")


def retrieval_records(
    split: Split, captions: dict[str, str], ids: str = "dataset"
) -> tuple[list[dict], list[dict], list[tuple[Any, Any]], dict[str, Any]]:
    """``(corpus, queries, qrels, counts)`` for the captioned items of ``split``."""
    if ids not in ID_MODES:
        raise XmrError(f"unknown id scheme '{ids}' (choose from {', '.join(ID_MODES)})")
    order = [iid for iid in split.items if iid in captions]
    if ids == "evalscope":
        corpus = [{"_id": n, "text": captions[iid]} for n, iid in enumerate(order)]
        texts_of: dict[str, list[str]] = {}
        for qid in split.queries:
            for iid in split.relevance.get(qid, ()):
                texts_of.setdefault(iid, []).append(qid)
        for iid, qids in texts_of.items():
            # evalscope walks each image's texts as its file lists them (``pairs``)
            listed = {text: n for n, text in enumerate(split.pairs.get(iid, []))}
            qids.sort(key=lambda q: listed.get(split.queries[q].text, len(listed)))
        queries, qrels = [], []
        for doc, iid in enumerate(order):
            for qid in texts_of.get(iid, []):
                qrels.append((len(queries), doc))
                queries.append({"_id": len(queries), "text": split.queries[qid].text})
        kept_queries = {qid for iid in order for qid in texts_of.get(iid, [])}
        prefixed = False
    else:
        kept = set(order)
        kept_qids = [q for q in split.queries if split.relevance.get(q, set()) & kept]
        prefixed = bool(set(kept_qids) & kept)
        qname = (lambda q: f"q:{q}") if prefixed else str
        dname = (lambda d: f"d:{d}") if prefixed else str
        corpus = [{"_id": dname(iid), "text": captions[iid]} for iid in order]
        queries = [{"_id": qname(q), "text": split.queries[q].text} for q in kept_qids]
        position = _position(split)
        qrels = [
            (qname(q), dname(d))
            for q in kept_qids
            for d in sorted(split.relevance[q] & kept, key=position)
        ]
        kept_queries = set(kept_qids)
    counts = {
        "ids": "prefixed" if prefixed else ids,
        "corpus": len(corpus),
        "queries": len(queries),
        "qrels": len(qrels),
        "items_left_out": len(split.items) - len(order),
        "queries_left_out": sum(1 for q in split.queries if q not in kept_queries),
    }
    return corpus, queries, qrels, counts


def _position(split: Split):
    index = {iid: n for n, iid in enumerate(split.items)}
    return lambda iid: index.get(iid, len(index))


def write_retrieval_data(
    out: str | Path, split: Split, captions: dict[str, str], *, ids: str = "dataset"
) -> dict[str, Any]:
    """Write ``out/retrieval_data`` atomically (the whole directory is swapped in); returns the
    counts of :func:`retrieval_records` and the ``save_path``."""
    corpus, queries, qrels, counts = retrieval_records(split, captions, ids)
    dest = Path(out) / RETRIEVAL_DIR

    def fill(tmp: Path) -> None:
        write_jsonl(tmp / "corpus.jsonl", corpus)
        write_jsonl(tmp / "queries.jsonl", queries)
        (tmp / "qrels").mkdir()
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in qrels]
        (tmp / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    atomic_replace_dir(dest, fill, may_replace=lambda p: (p / "corpus.jsonl").is_file())
    return {**counts, "save_path": str(dest)}
