"""Evaluators: rankings, score matrices, embeddings or prediction files -> metric dicts.

Every evaluator returns ``dict[str, float]`` with keys ``{direction}/{metric}`` (``t2i/R@1``,
``i2t/mAP@10``...) and, where queries have categories, ``{direction}/{category}/{metric}``.
Metric definitions: :mod:`xmr.eval.metrics`; ranking order and tie-breaking:
:mod:`xmr.eval.ranking`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.dataset import Split
from xmr.eval.metrics import (
    COUNT_KEYS,
    DEFAULT_K,
    RANK_KEYS,
    RECALL_KS,
    HitTable,
    hits_from_rankings,
    hits_from_topk,
    judged,
    per_query_metrics,
    summarize_by_category,
)
from xmr.eval.predictions import read_predictions, validate_predictions
from xmr.io.atomic import atomic_write, check_output_file

DIRECTIONS = ("t2i", "i2t")
LENIENT_NOTE = (
    "LENIENT (skip empty queries): {n} judged queries with no relevant item are left out of "
    "every mean above; the official scorers count each as 0, so these numbers are higher "
    "than theirs"
)


def recall_ks(k: int) -> tuple[int, ...]:
    """The recall cut-offs reported for a cut-off ``k``: 1, 5, 10 up to ``k``, and ``k``."""
    return tuple(sorted({r for r in RECALL_KS if r <= k} | {k}))


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]],
    relevance: Mapping[str, Collection[str]],
    *,
    ks: Sequence[int] = RECALL_KS,
    k: int = DEFAULT_K,
    direction: str = "t2i",
    categories: Mapping[str, str | None] | None = None,
    query_ids: Sequence[str] | None = None,
    skip_empty: bool = False,
) -> dict[str, float]:
    """Metrics of ranked id lists (query id -> item ids, best first) against ``relevance``.

    The rankings may be of any length (fewer than K is fine) and MRR/first-hit ranks look as
    deep as they go. Judged queries with no relevant item score 0 (``n_empty``; left out with
    the lenient ``skip_empty``), queries without ground truth are skipped (``n_skipped``) and
    judged queries without a ranking score 0 (see :func:`hits_from_rankings`).
    """
    table = hits_from_rankings(rankings, relevance, query_ids, skip_empty=skip_empty)
    return summarize_by_category(table, categories or {}, ks, k, prefix=f"{direction}/")


def _scored_rows(
    query_ids: Sequence[str], relevance: Mapping[str, Collection[str]], skip_empty: bool
):
    rows = np.array(
        [i for i, q in enumerate(query_ids) if judged(relevance, q, skip_empty)], dtype=np.int64
    )
    empty_skipped = sum(1 for q in query_ids if q in relevance and not relevance[q])
    return rows, [query_ids[i] for i in rows], empty_skipped if skip_empty else 0


def _evaluate_topk(
    topk,
    query_ids: Sequence[str],
    item_ids: Sequence[str],
    relevance: Mapping[str, Collection[str]],
    ks: Sequence[int],
    k: int,
    depth: int | None,
    direction: str,
    categories: Mapping[str, str | None] | None,
    skip_empty: bool = False,
) -> dict[str, float]:
    rows, kept, empty_skipped = _scored_rows(query_ids, relevance, skip_empty)
    index, _ = topk(rows, max(depth or 0, k, *ks))
    table = hits_from_topk(
        index,
        kept,
        item_ids,
        relevance,
        len(query_ids) - len(kept),
        n_empty_skipped=empty_skipped,
        lenient=skip_empty,
    )
    return summarize_by_category(table, categories or {}, ks, k, prefix=f"{direction}/")


def evaluate_scores(
    scores: Any,
    query_ids: Sequence[str],
    item_ids: Sequence[str],
    relevance: Mapping[str, Collection[str]],
    *,
    ks: Sequence[int] = RECALL_KS,
    k: int = DEFAULT_K,
    depth: int | None = None,
    direction: str = "t2i",
    categories: Mapping[str, str | None] | None = None,
    device: Any = None,
    query_chunk: int | None = None,
    item_chunk: int | None = None,
    skip_empty: bool = False,
) -> dict[str, float]:
    """Metrics of a ``[len(query_ids), len(item_ids)]`` score matrix (numpy array or tensor).

    Rankings are computed chunk by chunk with torch (see :mod:`xmr.eval.ranking`) to
    ``depth`` (default: the largest cut-off), which is also how deep MRR and the first-hit
    ranks look. Only judged queries are ranked (those with an empty set score 0; with the
    lenient ``skip_empty`` they are left out too).
    """
    from xmr.eval.ranking import topk_from_scores

    def topk(rows, depth_):
        return topk_from_scores(
            scores,
            depth_,
            rows=rows,
            device=device,
            query_chunk=query_chunk,
            item_chunk=item_chunk,
        )

    return _evaluate_topk(
        topk, query_ids, item_ids, relevance, ks, k, depth, direction, categories, skip_empty
    )


def evaluate_embeddings(
    query_emb: Any,
    item_emb: Any,
    query_ids: Sequence[str],
    item_ids: Sequence[str],
    relevance: Mapping[str, Collection[str]],
    *,
    ks: Sequence[int] = RECALL_KS,
    k: int = DEFAULT_K,
    depth: int | None = None,
    direction: str = "t2i",
    categories: Mapping[str, str | None] | None = None,
    device: Any = None,
    query_chunk: int | None = None,
    item_chunk: int | None = None,
    skip_empty: bool = False,
) -> dict[str, float]:
    """Metrics of inner-product retrieval from embeddings (rows follow the id lists).

    The similarity matrix is never materialised: it is computed one block at a time and reduced
    to a running top-``depth`` (see :func:`evaluate_scores` for ``depth`` and the skipping).
    """
    from xmr.eval.ranking import topk_from_embeddings

    def topk(rows, depth_):
        return topk_from_embeddings(
            query_emb,
            item_emb,
            depth_,
            rows=rows,
            device=device,
            query_chunk=query_chunk,
            item_chunk=item_chunk,
        )

    return _evaluate_topk(
        topk, query_ids, item_ids, relevance, ks, k, depth, direction, categories, skip_empty
    )


def split_categories(split: Split, direction: str) -> dict[str, str | None]:
    """Category of each query of ``direction``: for t2i the query's own, else the one category
    all its relevant items share; for i2t the item's."""
    if direction == "i2t":
        return {iid: item.category for iid, item in split.items.items()}
    out: dict[str, str | None] = {}
    for qid, query in split.queries.items():
        cats = {split.items[i].category for i in split.relevance.get(qid, ()) if i in split.items}
        out[qid] = query.category or (cats.pop() if len(cats) == 1 else None)
    return out


def evaluate_split(
    split: Split,
    text_emb: Any,
    image_emb: Any,
    *,
    directions: Sequence[str] = DIRECTIONS,
    ks: Sequence[int] = RECALL_KS,
    k: int = DEFAULT_K,
    **kwargs: Any,
) -> dict[str, float]:
    """t2i and/or i2t metrics of a split from its text embeddings (rows in ``split.queries``
    order) and image embeddings (rows in ``split.items`` order), with per-category keys."""
    query_ids, item_ids = list(split.queries), list(split.items)
    out: dict[str, float] = {}
    for direction in directions:
        if direction == "t2i":
            args = (text_emb, image_emb, query_ids, item_ids, split.relevance)
        else:
            args = (image_emb, text_emb, item_ids, query_ids, split.item_relevance())
        out |= evaluate_embeddings(
            *args,
            ks=ks,
            k=k,
            direction=direction,
            categories=split_categories(split, direction),
            **kwargs,
        )
    return out


def per_query_rows(
    table: HitTable, k: int = DEFAULT_K, texts: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per evaluated query: ``id``, ``text``, ``first_hit_rank`` (None when no relevant
    item was ranked), ``AP`` (Track2 AP@K) and ``hits`` (relevant items in the top K)."""
    pq = per_query_metrics(table, k)
    texts = texts or {}
    return [
        {
            "id": qid,
            "text": texts.get(qid, ""),
            "first_hit_rank": int(rank) or None,
            "AP": float(ap),
            "hits": int(hits),
        }
        for qid, rank, ap, hits in zip(
            table.query_ids, pq["first_rank"], pq["AP"], pq["hits"], strict=True
        )
    ]


def evaluate_predictions(
    pred_path: str | Path,
    split: Split,
    *,
    k: int = DEFAULT_K,
    kind: str | None = None,
    skip_empty: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Validate and score a prediction file against ``split``'s relevance.

    Returns ``(metrics, per_query_rows)``; the direction (t2i/i2t) follows from the file.
    Raises :class:`~xmr.eval.predictions.PredictionError` when the official scorer would reject
    the file or score it otherwise; what xmr accepts and the official scorer may not is passed
    to ``on_warning`` as ``FILE:LINE: message`` (default: :func:`warnings.warn`). Judged queries
    with no relevant item score 0 unless ``skip_empty`` (lenient) leaves them out.
    """
    pf = read_predictions(pred_path, kind)
    direction, rankings = validate_predictions(pf, split, k=k)
    for line, message in pf.warnings:
        where = f"{pf.path}:{line}" if line else str(pf.path)
        (on_warning or _warn)(f"{where}: {message}")
    if direction == "t2i":
        relevance = split.relevance
        texts = {q: query.text for q, query in split.queries.items()}
    else:
        relevance = split.item_relevance()
        texts = {i: _item_label(item) for i, item in split.items.items()}
    table = hits_from_rankings(rankings, relevance, skip_empty=skip_empty)
    metrics = summarize_by_category(
        table, split_categories(split, direction), recall_ks(k), k, prefix=f"{direction}/"
    )
    return metrics, per_query_rows(table, k, texts)


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def _item_label(item) -> str:
    if item.captions:
        return item.captions[0]
    if item.image is not None and item.image.path:
        return Path(item.image.path).name
    return item.id


def write_per_query_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`per_query_rows` output as CSV (header: id,text,first_hit_rank,AP,hits)."""

    path = check_output_file(path)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "text", "first_hit_rank", "AP", "hits"])
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "AP": f"{row['AP']:.6f}"})

    atomic_write(path, write)
    return path


def _format_value(metric: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric in COUNT_KEYS:
        return str(int(value))
    if metric in RANK_KEYS:
        return f"{value:.2f}"
    return f"{100 * value:.2f}"


def _table(title: str, rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> list:
    width = max(len(title), *(len(m) + 2 for m in rows)) + 2
    col = max(10, *(len(c) + 2 for c in columns))
    lines = [f"{title:<{width}}" + "".join(f"{c:>{col}}" for c in columns)]
    for metric, cols in rows.items():
        unit = "" if metric in COUNT_KEYS or metric in RANK_KEYS else " %"
        cells = "".join(f"{_format_value(metric, cols.get(c, math.nan)):>{col}}" for c in columns)
        lines.append(f"{metric + unit:<{width}}" + cells)
    return lines


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """A plain-text table of an evaluator's dict: one block per direction, one row per metric,
    a column for all queries and one per category. Fractions are shown as percentages, ranks
    (MeanRank, MedianRank) and counts as they are.

    Keys with a prefix before the direction (``first_stage/t2i/R@1`` of a reranked run,
    ``image/t2i/R@1``, ``caption/...``, ``fused/...`` of fused items) are variants of the same
    retrieval on the same queries: they get one block per direction with a column per variant
    (``reranked`` being the unprefixed run), side by side. Other keys (``fused/weight``...) are
    listed after the tables."""
    blocks: dict[str, dict[str, dict[str, float]]] = {}
    variants: dict[str, dict[str, dict[str, float]]] = {}
    extras: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        at = next((i for i, part in enumerate(parts) if part in DIRECTIONS), None)
        if at is None or at == len(parts) - 1:
            extras[key] = value
            continue
        prefix, direction, rest = "/".join(parts[:at]), parts[at], parts[at + 1 :]
        if not prefix:
            group = "all" if len(rest) == 1 else "/".join(rest[:-1])
            blocks.setdefault(direction, {}).setdefault(rest[-1], {})[group] = value
        elif len(rest) == 1:  # variants are compared on all queries, not per category
            variants.setdefault(direction, {}).setdefault(rest[-1], {})[prefix] = value
    lines: list[str] = []
    for direction, rows in blocks.items():
        groups = ["all", *sorted({g for cols in rows.values() for g in cols} - {"all"})]
        lines += ([""] if lines else []) + _table(direction, rows, groups)
    for direction, rows in variants.items():
        names = list(dict.fromkeys(p for cols in rows.values() for p in cols))
        if "first_stage" in names and direction in blocks:
            for metric, cols in rows.items():
                cols["reranked"] = blocks[direction].get(metric, {}).get("all", math.nan)
            names.insert(names.index("first_stage") + 1, "reranked")
        lines += ([""] if lines else []) + _table(f"{direction} side by side", rows, names)
    if any(key.endswith("n_empty_skipped") for key in metrics):
        left_out = sum(int(v) for key, v in metrics.items() if key.endswith("n_empty_skipped"))
        lines += ["", LENIENT_NOTE.format(n=left_out)]
    if extras:
        lines.append("")
        lines += [f"{key}: {value:g}" if isinstance(value, float) else f"{key}: {value}"
                  for key, value in extras.items()]  # fmt: skip
    return "\n".join(lines)
