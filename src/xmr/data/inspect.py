"""What a data set holds: counts, distributions and image problems (``xmr data inspect``)."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from xmr.data.dataset import Item, RetrievalDataset, Split
from xmr.errors import DataError

MAX_IMAGE_ERRORS = 10
# Decoding only has to prove the bytes are an image; JPEGs decode at 1/8 scale in draft mode.
_CHECK_DRAFT = (32, 32)


def distribution(values: Iterable[int]) -> dict[str, float] | None:
    """``{min, mean, median, max}`` of ``values`` (None when there are none)."""
    data = list(values)
    if not data:
        return None
    return {
        "min": min(data),
        "mean": round(statistics.fmean(data), 3),
        "median": statistics.median(data),
        "max": max(data),
    }


def _check_image(item: Item) -> str | None:
    """None when the item's image decodes, else the error."""
    try:
        item.image.open(draft_size=_CHECK_DRAFT)  # type: ignore[union-attr]
    except DataError as exc:
        return f"{item.id}: {exc}"
    except OSError as exc:  # a TSV that vanished or became unreadable since it was indexed
        return f"{item.id}: {item.image.describe()}: {exc}"  # type: ignore[union-attr]
    return None


def _n_items_relevant(split: Split) -> int:
    # Readers share one set between queries with the same relevant items: union each set once.
    distinct = {id(ids): ids for ids in split.relevance.values()}
    return len(set().union(*distinct.values()))


def inspect_split(
    split: Split, *, check_images: bool = False, workers: int | None = None
) -> dict[str, Any]:
    """The report of one split (see :func:`inspect_dataset`)."""
    items = split.items.values()
    kinds = Counter(it.image.kind if it.image is not None else "none" for it in items)
    # File references were checked by the reader; files can still vanish or be unreadable since.
    missing = [
        it.id
        for it in items
        if it.image is not None and it.image.path and not os.path.isfile(it.image.path)
    ]
    report: dict[str, Any] = {
        "n_items": len(split.items),
        "n_queries": len(split.queries),
        "n_relevant_pairs": split.n_relevant_pairs(),
        "n_queries_with_relevance": sum(1 for q in split.queries if split.relevance.get(q)),
        "n_items_relevant": _n_items_relevant(split),
        "n_training_texts": sum(len(t) for t in split.pairs.values()),
        "categories": dict(split.categories()),
        "query_categories": dict(Counter(q.category for q in split.queries.values() if q.category)),
        "relevant_per_query": distribution(len(r) for r in split.relevance.values() if r),
        "texts_per_item": distribution(len(split.pairs.get(i, ())) for i in split.items),
        "captions_per_item": distribution(len(it.captions) for it in items),
        "image_sources": dict(kinds),
        "n_missing_images": len(missing),
        "n_undecodable_images": None,
        "image_errors": [f"{iid}: image file missing" for iid in missing[:MAX_IMAGE_ERRORS]],
    }
    if check_images:
        gone = set(missing)
        present = [it for it in items if it.image is not None and it.id not in gone]
        with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
            errors = [e for e in pool.map(_check_image, present, chunksize=64) if e]
        report["n_undecodable_images"] = len(errors)
        room = MAX_IMAGE_ERRORS - len(report["image_errors"])
        report["image_errors"] += errors[: max(room, 0)]
    return report


def inspect_dataset(
    dataset: RetrievalDataset, *, check_images: bool = False, workers: int | None = None
) -> dict[str, Any]:
    """Counts and distributions of every split of ``dataset``, as a JSON-ready dict.

    Keys: ``format``, ``root``, ``n_skipped`` and ``skipped_examples`` (bad records dropped with
    ``skip_bad``), and ``splits``: split name -> ``n_items``, ``n_queries``, ``n_relevant_pairs``,
    ``n_queries_with_relevance``, ``n_items_relevant``, ``n_training_texts``, ``categories``
    (items per category), ``query_categories``, ``relevant_per_query``, ``texts_per_item``
    (training texts) and ``captions_per_item`` (each ``{min, mean, median, max}`` or None),
    ``image_sources`` (items per kind: path, tsv, bytes, none), ``n_missing_images``,
    ``n_undecodable_images`` (None unless ``check_images``; decoding every image is the slow
    part) and ``image_errors`` (the first few).
    """
    return {
        "format": dataset.format,
        "root": str(dataset.root),
        "n_skipped": dataset.skipped,
        "skipped_examples": list(dataset.skipped_examples),
        "splits": {
            name: inspect_split(split, check_images=check_images, workers=workers)
            for name, split in dataset.splits.items()
        },
    }


def _fmt_dist(dist: dict[str, float] | None) -> str:
    if dist is None:
        return "-"
    return f"min {dist['min']}  mean {dist['mean']}  median {dist['median']}  max {dist['max']}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect_dataset`'s report."""
    lines = [f"{report['root']}  (format: {report['format']})"]
    if report["n_skipped"]:
        lines.append(f"skipped {report['n_skipped']} bad record(s), for example:")
        lines += [f"  {e}" for e in report["skipped_examples"]]
    for name, s in report["splits"].items():
        lines.append(f"\nsplit {name}")
        lines.append(f"  items            {s['n_items']}")
        if s["categories"]:
            cats = ", ".join(f"{c} {n}" for c, n in sorted(s["categories"].items()))
            lines.append(f"    categories     {cats}")
        lines.append(
            f"  queries          {s['n_queries']}  ({s['n_queries_with_relevance']} with relevance)"
        )
        lines.append(
            f"  relevant pairs   {s['n_relevant_pairs']}  ({s['n_items_relevant']} items relevant to some query)"
        )
        lines.append(f"  relevant/query   {_fmt_dist(s['relevant_per_query'])}")
        lines.append(
            f"  texts/item       {_fmt_dist(s['texts_per_item'])}  ({s['n_training_texts']} training texts)"
        )
        if s["captions_per_item"] and s["captions_per_item"]["max"]:
            lines.append(f"  captions/item    {_fmt_dist(s['captions_per_item'])}")
        sources = ", ".join(f"{k} {n}" for k, n in sorted(s["image_sources"].items()))
        lines.append(f"  images           {sources or '-'}")
        problems = f"missing {s['n_missing_images']}"
        if s["n_undecodable_images"] is None:
            problems += ", undecodable: not checked (use --check-images)"
        else:
            problems += f", undecodable {s['n_undecodable_images']}"
        lines.append(f"    problems       {problems}")
        lines += [f"    {e}" for e in s["image_errors"]]
    return "\n".join(lines)
