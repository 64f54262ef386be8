"""What a report shows, computed from the rankings the evaluation already made (never by
searching again): each query's first relevant rank over the whole ranked depth, its AP@K and
hits, its category; Recall@K (hit rate) curves for K = 1..depth per category."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from xmr.eval.evaluate import per_query_rows, split_categories
from xmr.eval.metrics import hits_from_rankings

CURVE_DEPTH = 100


@dataclass
class QueryRow:
    """One scored query of one direction."""

    id: str
    text: str
    category: str | None
    first_rank: int | None  # 1-based over the whole ranking; None when no relevant item is in it
    ap: float  # Track2 AP@K, as --per-query writes it
    hits: int  # relevant items in the top K
    ranked: list[str]
    relevant: set[str]
    csv_row: int = 0  # 1-based data row of per_query.csv (RFC 7111 fragment #row=N)


@dataclass
class DirectionView:
    """A direction's rows and curves."""

    direction: str
    rows: list[QueryRow]
    depth: int  # how deep the rankings go: curves stop here
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # category ("all") -> hit rate


def direction_view(
    direction: str,
    rankings: Mapping[str, Sequence[str]],
    split,
    k: int,
    *,
    skip_empty: bool = False,
) -> DirectionView:
    """Rows and curves of ``direction`` ("t2i", "t2t" or "i2t") from ``rankings`` (query id -> ranked
    ids, best first; deeper than K where the caller ranked deeper). Queries are the ones the
    official means count: judged ones, empty ground truth included (it scores 0) unless
    ``skip_empty``."""
    if ranks_items(direction):
        relevance = split.relevance
        texts = {q: query.text for q, query in split.queries.items()}
    else:
        relevance = split.item_relevance()
        texts = {i: (it.captions[0] if it.captions else i) for i, it in split.items.items()}
    cut = {q: list(r)[:k] for q, r in rankings.items()}
    table = hits_from_rankings(cut, relevance, skip_empty=skip_empty)
    categories = split_categories(split, direction)
    rows = []
    for n, pq in enumerate(per_query_rows(table, k, texts), start=1):
        qid = pq["id"]
        ranked = list(rankings.get(qid, ()))
        relevant = set(relevance.get(qid, ()))
        first = next((i for i, x in enumerate(ranked, start=1) if x in relevant), None)
        rows.append(
            QueryRow(
                qid,
                pq["text"],
                categories.get(qid),
                first,
                pq["AP"],
                pq["hits"],
                ranked,
                relevant,
                n,
            )
        )
    depth = max(min(CURVE_DEPTH, max((len(r) for r in rankings.values()), default=0)), 1)
    view = DirectionView(direction, rows, depth)
    groups: dict[str, list[QueryRow]] = {"all": rows}
    for row in rows:
        if row.category is not None:
            groups.setdefault(row.category, []).append(row)
    for name, members in groups.items():
        view.curves[name] = hit_rate_curve([r.first_rank for r in members], depth)
    return view


def ranks_items(direction: str) -> bool:
    """Whether ``direction``'s queries are the split's queries and its results the items:
    text -> image, and text -> text (a text corpus, or items' captions); image -> text is the
    other way round."""
    return base_direction(direction) in ("t2i", "t2t")


def base_direction(direction: str) -> str:
    """``t2i`` of ``first_stage/t2i`` (a stage prefix names the ranking, not the direction)."""
    return direction.rsplit("/", 1)[-1]


def hit_rate_curve(first_ranks: Sequence[int | None], depth: int) -> np.ndarray:
    """Fraction of queries with a relevant item in the top K, for K = 1..depth (a query with
    none in the ranking counts 0 at every K)."""
    ranks = np.array([r if r else depth + 1 for r in first_ranks], dtype=np.int64)
    if ranks.size == 0:
        return np.zeros(depth)
    return np.array([(ranks <= kk).mean() for kk in range(1, depth + 1)])


def worst_and_best(rows: Sequence[QueryRow], n_worst: int, n_best: int, seed: int = 0):
    """The ``n_worst`` queries (lowest AP, then first hit furthest down or none) and a seeded
    sample of ``n_best`` successes (first hit at rank 1); sampling keeps big splits fast."""

    def badness(r: QueryRow):
        return (r.ap, -(r.first_rank or 10**9), r.id)

    worst = sorted(rows, key=badness)[:n_worst]
    taken = {r.id for r in worst}
    good = [r for r in rows if r.first_rank == 1 and r.id not in taken]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(good), size=min(n_best, len(good)), replace=False) if good else []
    return worst, [good[i] for i in sorted(pick)]
