"""Retrieval metrics as pure functions over a hit matrix, with the official scorers' definitions.

A ranking is turned into a boolean *hit matrix* ``hits[q, j]`` (rank ``j + 1`` of query ``q`` holds
an item relevant to it) plus ``n_relevant[q]``, the number of relevant items in the ground truth.
Every metric is a function of those two arrays. Ranks are 1-based; ``K`` is a cut-off.

Definitions (per query, then the mean over the evaluated queries):

- ``R@K`` (MUGE, Chinese-CLIP, CLIP_benchmark): 1 if at least one relevant item is in the top K,
  else 0. It is a hit rate, not the fraction of relevant items retrieved.
- ``MeanRecall``: the mean of ``R@K`` over the recall cut-offs, ``R@1``, ``R@5``, ``R@10`` by
  default (MUGE's main metric).
- ``mAP@K`` (the Track2 scorer): walk ranks ``j = 1..K``; at each relevant item ``hits += 1`` and
  ``ap += hits / j``; the query's AP is ``ap / hits``, 0 when nothing relevant is in the top K.
  It divides by the hits found, not by the number of relevant items.
- ``mAP@K_trec`` (trec_eval ``map_cut_K``): the same sum of precisions at relevant ranks divided
  by ``R``, the number of relevant items in the ground truth (not ``min(R, K)``).
- ``nDCG@K`` (trec_eval ``ndcg_cut_K``, binary gains): ``sum(1 / log2(j + 1))`` over relevant
  ranks ``j <= K``, divided by the same sum over ranks ``1..min(R, K)``.
- ``P@K`` (trec_eval ``P_K``): relevant items in the top K divided by K, also when fewer than K
  items were ranked.
- ``MRR`` (trec_eval ``recip_rank``): 1 / rank of the first relevant item anywhere in the given
  ranking, 0 when there is none. It is not cut at K: it looks as deep as the ranking goes (a
  prediction file's list, or the ``depth`` computed from scores).
- ``MeanRank`` / ``MedianRank``: the mean and median rank of the first relevant item over the
  queries where one was found within the ranking; ``NotFound`` is the fraction of queries where
  none was. NaN when no query found one.

Repeated ids in a ranking: an item counts once, at its first occurrence; later occurrences keep
their rank position but are not hits (prediction-file validation rejects them anyway).

Which queries are in the means (the official denominators): every *judged* query, that is every
key of ``relevance``. A judged query whose set is empty (a MUGE ``"item_ids": []``, a Track2
ground-truth line with no image) has no relevant item to find: it scores 0 in every mean, as it
does in the Track2, MUGE, Chinese-CLIP and CLIP_benchmark scorers, and it is counted in
``n_empty``. A query that is not a key of ``relevance`` has no ground truth and is left out,
counted in ``n_skipped``. ``skip_empty=True`` is xmr's lenient reading, never the default: empty
queries are left out too (counted in ``n_skipped`` and ``n_empty_skipped``), which raises every
mean above the official number.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RECALL_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_K = 10

# Keys whose values are not fractions in [0, 1]: ranks and counts.
RANK_KEYS = ("MeanRank", "MedianRank")
COUNT_KEYS = ("n_queries", "n_empty", "n_skipped", "n_empty_skipped")


@dataclass
class HitTable:
    """The rankings of the evaluated queries reduced to what the metrics need.

    Attributes:
        query_ids: the evaluated queries (the judged ones), in order.
        hits: ``[len(query_ids), depth]`` booleans, ``hits[q, j]`` = rank ``j + 1`` is relevant.
        n_relevant: ``[len(query_ids)]`` number of relevant items in the ground truth (``R``;
            0 for a judged query with no relevant item, which scores 0).
        n_skipped: queries left out of the means (no ground truth, or empty and lenient).
        n_empty_skipped: empty queries left out by the lenient ``skip_empty`` reading.
        lenient: built with ``skip_empty=True`` (the summary then says so).
    """

    query_ids: list[str]
    hits: np.ndarray
    n_relevant: np.ndarray
    n_skipped: int = 0
    n_empty_skipped: int = 0
    lenient: bool = False

    def subset(self, mask: np.ndarray) -> HitTable:
        ids = [q for q, keep in zip(self.query_ids, mask, strict=True) if keep]
        return HitTable(ids, self.hits[mask], self.n_relevant[mask])


def judged(relevance: Mapping[str, Collection[str]], qid: str, skip_empty: bool = False) -> bool:
    """Whether query ``qid`` is in the means: it has ground truth (a key of ``relevance``), and
    with ``skip_empty`` also at least one relevant item."""
    relevant = relevance.get(qid)
    return relevant is not None and (bool(relevant) or not skip_empty)


def hits_from_rankings(
    rankings: Mapping[str, Sequence[str]],
    relevance: Mapping[str, Collection[str]],
    query_ids: Sequence[str] | None = None,
    *,
    skip_empty: bool = False,
) -> HitTable:
    """Build a HitTable from ranked id lists.

    Args:
        rankings: query id -> ranked item ids, best first (any length; may repeat ids).
        relevance: query id -> relevant item ids (the ground truth; an empty set is a judged
            query with nothing relevant, which scores 0).
        query_ids: the queries to score, in order; default: those of ``rankings`` then those of
            ``relevance`` that ``rankings`` lacks (scored as empty rankings). Queries without
            ground truth are skipped and counted.
        skip_empty: the lenient reading: leave out judged queries with no relevant item too.
    """
    if query_ids is None:
        query_ids = list(rankings) + [q for q in relevance if q not in rankings]
    kept: list[str] = []
    rows: list[list[bool]] = []
    n_relevant: list[int] = []
    empty_skipped = 0
    for qid in query_ids:
        if not judged(relevance, qid, skip_empty):
            empty_skipped += qid in relevance
            continue
        relevant = _as_set(relevance[qid])
        seen: set[str] = set()
        row = []
        for iid in rankings.get(qid, ()):
            row.append(iid in relevant and iid not in seen)
            seen.add(iid)
        kept.append(qid)
        rows.append(row)
        n_relevant.append(len(relevant))
    depth = max((len(r) for r in rows), default=0)
    hits = np.zeros((len(rows), depth), dtype=bool)
    for i, row in enumerate(rows):
        hits[i, : len(row)] = row
    return HitTable(
        kept,
        hits,
        np.array(n_relevant, dtype=np.int64),
        n_skipped=len(query_ids) - len(kept),
        n_empty_skipped=empty_skipped,
        lenient=skip_empty,
    )


def hits_from_topk(
    top_index: np.ndarray,
    query_ids: Sequence[str],
    item_ids: Sequence[str],
    relevance: Mapping[str, Collection[str]],
    n_skipped: int = 0,
    *,
    n_empty_skipped: int = 0,
    lenient: bool = False,
) -> HitTable:
    """Build a HitTable from top-k item positions (rows follow ``query_ids``, every one of which
    must be a key of ``relevance``; an empty set scores 0); relevant ids absent from
    ``item_ids`` still count in ``R``. The counts are those of :class:`HitTable`."""
    names = np.asarray(item_ids, dtype=object)
    hits = np.zeros(top_index.shape, dtype=bool)
    n_relevant = np.zeros(len(query_ids), dtype=np.int64)
    for row, qid in enumerate(query_ids):
        relevant = _as_set(relevance[qid])
        hits[row] = [iid in relevant for iid in names[top_index[row]]]
        n_relevant[row] = len(relevant)
    return HitTable(list(query_ids), hits, n_relevant, n_skipped, n_empty_skipped, lenient)


def _as_set(ids: Collection[str]) -> Collection[str]:
    # Readers may share one (large) set between queries: use it as it is, never copy it.
    return ids if isinstance(ids, set | frozenset) else set(ids)


def _cut(hits: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` columns, padded with misses when the ranking is shorter."""
    if hits.shape[1] >= k:
        return hits[:, :k]
    return np.pad(hits, ((0, 0), (0, k - hits.shape[1])))


def first_hit_rank(hits: np.ndarray) -> np.ndarray:
    """1-based rank of the first relevant item of each query, 0 where there is none."""
    if hits.shape[1] == 0:
        return np.zeros(hits.shape[0], dtype=np.int64)
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0).astype(np.int64)


def average_precision(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Per-query ``(AP@K as Track2, AP@K as trec_eval map_cut_K, relevant items in the top K)``."""
    h = _cut(hits, k)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    cum = np.cumsum(h, axis=1)
    precision_sum = np.where(h, cum / ranks, 0.0).sum(axis=1)
    n_hits = cum[:, -1] if k > 0 else np.zeros(h.shape[0], dtype=np.int64)
    ap = np.divide(precision_sum, n_hits, out=np.zeros_like(precision_sum), where=n_hits > 0)
    ap_trec = np.divide(
        precision_sum, n_relevant, out=np.zeros_like(precision_sum), where=n_relevant > 0
    )
    return ap, ap_trec, n_hits


def ndcg(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-query nDCG@K with binary gains and the ``1 / log2(rank + 1)`` discount."""
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = _cut(hits, k).astype(np.float64) @ discount
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_relevant, k)]
    return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


def per_query_metrics(table: HitTable, k: int = DEFAULT_K) -> dict[str, np.ndarray]:
    """Per-query arrays: ``first_rank`` (0 = not found), ``AP`` (Track2), ``AP_trec``,
    ``nDCG``, ``hits`` (relevant items in the top K)."""
    ap, ap_trec, n_hits = average_precision(table.hits, table.n_relevant, k)
    return {
        "first_rank": first_hit_rank(table.hits),
        "AP": ap,
        "AP_trec": ap_trec,
        "nDCG": ndcg(table.hits, table.n_relevant, k),
        "hits": n_hits,
    }


def metric_names(ks: Sequence[int] = RECALL_KS, k: int = DEFAULT_K) -> list[str]:
    """The keys :func:`summarize` returns, in display order."""
    return [
        *(f"R@{r}" for r in ks),
        "MeanRecall",
        f"mAP@{k}",
        f"mAP@{k}_trec",
        f"nDCG@{k}",
        f"P@{k}",
        "MRR",
        "MeanRank",
        "MedianRank",
        "NotFound",
        "n_queries",
        "n_empty",
        "n_skipped",
    ]


def summarize(
    table: HitTable, ks: Sequence[int] = RECALL_KS, k: int = DEFAULT_K
) -> dict[str, float]:
    """Mean metrics over the evaluated queries of ``table`` (see the module docstring).

    Returns fractions in [0, 1] except ``MeanRank``/``MedianRank`` (ranks, NaN when no query
    found a relevant item) and the counts ``n_queries`` (in the means), ``n_empty`` (judged
    queries with no relevant item, scored 0 or, lenient, left out), ``n_skipped`` (left out)
    and, for a lenient table only, ``n_empty_skipped``. With no evaluated query every mean is
    NaN.
    """
    ks = tuple(ks)
    if not ks or min(ks) < 1 or k < 1:
        raise ValueError(f"cut-offs must be >= 1 (ks={ks}, k={k})")
    n = len(table.query_ids)
    out: dict[str, float] = {}

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if n else float("nan")

    for r in ks:
        out[f"R@{r}"] = mean(_cut(table.hits, r).any(axis=1))
    out["MeanRecall"] = float(np.mean([out[f"R@{r}"] for r in ks]))
    pq = per_query_metrics(table, k)
    out[f"mAP@{k}"] = mean(pq["AP"])
    out[f"mAP@{k}_trec"] = mean(pq["AP_trec"])
    out[f"nDCG@{k}"] = mean(pq["nDCG"])
    out[f"P@{k}"] = mean(pq["hits"] / k)
    first = pq["first_rank"]
    found = first[first > 0]
    out["MRR"] = mean(np.divide(1.0, first, out=np.zeros(n), where=first > 0))
    out["MeanRank"] = float(found.mean()) if found.size else float("nan")
    out["MedianRank"] = float(np.median(found)) if found.size else float("nan")
    out["NotFound"] = mean(first == 0)
    out["n_queries"] = n
    out["n_empty"] = int((table.n_relevant == 0).sum()) + table.n_empty_skipped
    out["n_skipped"] = table.n_skipped
    if table.lenient:
        out["n_empty_skipped"] = table.n_empty_skipped
    return out


def summarize_by_category(
    table: HitTable,
    categories: Mapping[str, str | None],
    ks: Sequence[int] = RECALL_KS,
    k: int = DEFAULT_K,
    prefix: str = "",
) -> dict[str, float]:
    """``summarize`` for all queries (``{prefix}{metric}``) and for each category
    (``{prefix}{category}/{metric}``); queries without a category only count in the total."""
    out = {f"{prefix}{name}": v for name, v in summarize(table, ks, k).items()}
    labels = [categories.get(q) for q in table.query_ids]
    for cat in sorted({c for c in labels if c}):
        mask = np.array([c == cat for c in labels], dtype=bool)
        sub = summarize(table.subset(mask), ks, k)
        sub.pop("n_skipped")
        sub.pop("n_empty_skipped", None)
        out.update({f"{prefix}{cat}/{name}": v for name, v in sub.items()})
    return out


def reference_metrics(
    rankings: Mapping[str, Sequence[str]],
    relevance: Mapping[str, Collection[str]],
    ks: Sequence[int] = RECALL_KS,
    k: int = DEFAULT_K,
    *,
    skip_empty: bool = False,
) -> dict[str, float]:
    """The definitions of the module docstring as plain Python loops, one query at a time, the
    way the official scorers are written. Slow; it is the executable specification that the
    vectorised :func:`summarize` is tested and benchmarked against."""
    import math
    import statistics

    derived = ("MeanRecall", *RANK_KEYS, *COUNT_KEYS)
    per: dict[str, list[float]] = {m: [] for m in metric_names(ks, k) if m not in derived}
    first_ranks: list[int] = []
    skipped = empty = empty_skipped = 0
    for qid in list(rankings) + [q for q in relevance if q not in rankings]:
        if qid not in relevance:
            skipped += 1
            continue
        relevant = set(relevance[qid])
        if not relevant:
            empty += 1
            if skip_empty:
                skipped += 1
                empty_skipped += 1
                continue
        flags, seen = [], set()
        for iid in rankings.get(qid, ()):
            flags.append(iid in relevant and iid not in seen)
            seen.add(iid)
        for r in ks:
            per[f"R@{r}"].append(1.0 if any(flags[:r]) else 0.0)
        hits, ap, dcg = 0, 0.0, 0.0
        for j, is_hit in enumerate(flags[:k], 1):
            if is_hit:
                hits += 1
                ap += hits / j
                dcg += 1 / math.log2(j + 1)
        ideal = sum(1 / math.log2(j + 1) for j in range(1, min(len(relevant), k) + 1))
        per[f"mAP@{k}"].append(ap / hits if hits else 0.0)
        per[f"mAP@{k}_trec"].append(ap / len(relevant) if relevant else 0.0)
        per[f"nDCG@{k}"].append(dcg / ideal if ideal else 0.0)
        per[f"P@{k}"].append(hits / k)
        first = next((j for j, is_hit in enumerate(flags, 1) if is_hit), 0)
        per["MRR"].append(1 / first if first else 0.0)
        per["NotFound"].append(0.0 if first else 1.0)
        if first:
            first_ranks.append(first)
    n = len(per["MRR"])
    out = {name: sum(v) / n if n else float("nan") for name, v in per.items()}
    out["MeanRecall"] = sum(out[f"R@{r}"] for r in ks) / len(ks)
    out["MeanRank"] = statistics.mean(first_ranks) if first_ranks else float("nan")
    out["MedianRank"] = statistics.median(first_ranks) if first_ranks else float("nan")
    out["n_queries"] = n
    out["n_empty"] = empty
    out["n_skipped"] = skipped
    result = {name: out[name] for name in metric_names(ks, k)}
    if skip_empty:
        result["n_empty_skipped"] = empty_skipped
    return result
