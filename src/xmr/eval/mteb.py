"""MTEB's retrieval metrics as pure functions, equal to pytrec_eval (trec_eval) on the same run.

A *run* is ``query id -> {doc id: score}`` and *qrels* ``query id -> {doc id: relevance}``
(integer grades; ``relevance >= 1`` is relevant, as trec_eval's default relevance level).
Each query's documents are ranked as trec_eval ranks them: score descending, ties broken by
doc id descending (string order), whatever order the run lists them in. Ranks are 1-based; ``R``
is the number of relevant documents in the qrels of the query; ``rel_i`` the grade at rank i.

- ``ndcg_at_k`` (``ndcg_cut.k``): ``DCG@k / IDCG@k`` with ``DCG@k = sum_{i<=k} rel_i / log2(i + 1)``
  (graded gains) and ``IDCG@k`` the same over the qrels' grades sorted descending; 0 when R = 0.
- ``map_at_k`` (``map_cut.k``): ``sum over relevant ranks i <= k of P@i``, divided by ``R``.
- ``recall_at_k`` (``recall.k``): relevant documents in the top k divided by ``R`` (0 when R = 0).
- ``precision_at_k`` (``P.k``): relevant documents in the top k divided by ``k``, also when
  fewer than k documents were retrieved.
- ``mrr_at_k`` (``recip_rank`` on the top k): ``1 / rank`` of the first relevant document within
  the top k, 0 when none. MTEB's own MRR sorts with Python's stable sort instead, which agrees
  with this on untied scores.

The names and the cut-offs (:data:`MTEB_K_VALUES`) are MTEB's: ``ndcg_at_10`` (MTEB's main score
for retrieval), ``map_at_10``, ``recall_at_10``, ``precision_at_10``, ``mrr_at_10``...

Which queries count: every query of the qrels (xmr's official denominator). pytrec_eval
evaluates only queries that are keys of the run (an empty one scores 0); a query missing from the
run scores 0 here in every metric, where MTEB (averaging pytrec_eval's output) would leave it
out. xmr's runs hold every query, so the two agree on them. ``queries`` narrows the set. Query ids equal to document ids are kept (MTEB's
``ignore_identical_ids`` would drop such documents, which is wrong on evalscope's numbering,
where query 0's relevant document is document 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

MTEB_K_VALUES: tuple[int, ...] = (1, 3, 5, 10, 20, 100, 1000)
MTEB_MEASURES = ("ndcg", "map", "recall", "precision", "mrr")
MAIN_SCORE = "ndcg_at_10"

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int | float]]


def trec_order(doc_scores: Mapping[str, float]) -> list[str]:
    """Doc ids in trec_eval's order: score descending, ties by doc id descending."""
    return [d for d, _ in sorted(doc_scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _grades(ranked: Sequence[str], rels: Mapping[str, int | float]) -> list[float]:
    return [float(rels.get(d, 0)) for d in ranked]


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, int | float], k: int) -> float:
    """trec_eval ``ndcg_cut.k`` of one ranked list (graded gains)."""
    gains = [max(g, 0.0) for g in _grades(ranked[:k], rels)]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((max(float(r), 0.0) for r in rels.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _n_relevant(rels: Mapping[str, int | float]) -> int:
    return sum(1 for r in rels.values() if r >= 1)


def map_at_k(ranked: Sequence[str], rels: Mapping[str, int | float], k: int) -> float:
    """trec_eval ``map_cut.k``: precision at each relevant rank <= k, summed, over R."""
    n_rel = _n_relevant(rels)
    if not n_rel:
        return 0.0
    found, total = 0, 0.0
    for i, d in enumerate(ranked[:k], 1):
        if rels.get(d, 0) >= 1:
            found += 1
            total += found / i
    return total / n_rel


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, int | float], k: int) -> float:
    """trec_eval ``recall.k``: relevant documents in the top k over R."""
    n_rel = _n_relevant(rels)
    return sum(rels.get(d, 0) >= 1 for d in ranked[:k]) / n_rel if n_rel else 0.0


def precision_at_k(ranked: Sequence[str], rels: Mapping[str, int | float], k: int) -> float:
    """trec_eval ``P.k``: relevant documents in the top k over k."""
    return sum(rels.get(d, 0) >= 1 for d in ranked[:k]) / k


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, int | float], k: int) -> float:
    """trec_eval ``recip_rank`` of the top k: 1 / rank of the first relevant document."""
    for i, d in enumerate(ranked[:k], 1):
        if rels.get(d, 0) >= 1:
            return 1.0 / i
    return 0.0


METRIC_FUNCTIONS = {
    "ndcg": ndcg_at_k,
    "map": map_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
    "mrr": mrr_at_k,
}


def mteb_per_query(
    run: Run,
    qrels: Qrels,
    k_values: Sequence[int] = MTEB_K_VALUES,
    *,
    queries: Iterable[str] | None = None,
) -> dict[str, dict[str, float]]:
    """``query id -> {metric_at_k: value}`` for every query of ``qrels`` (or ``queries``)."""
    if any(int(k) < 1 for k in k_values):
        raise ValueError(f"cut-offs must be >= 1, got {list(k_values)}")
    out: dict[str, dict[str, float]] = {}
    for qid in queries if queries is not None else qrels:
        rels = qrels.get(qid, {})
        ranked = trec_order(run.get(qid, {}))
        out[qid] = {
            f"{name}_at_{k}": fn(ranked, rels, int(k))
            for name, fn in METRIC_FUNCTIONS.items()
            for k in k_values
        }
    return out


def mteb_metrics(
    run: Run,
    qrels: Qrels,
    k_values: Sequence[int] = MTEB_K_VALUES,
    *,
    queries: Iterable[str] | None = None,
) -> dict[str, float]:
    """The mean of :func:`mteb_per_query` over the queries, MTEB's names (``ndcg_at_10``...)."""
    per_query = mteb_per_query(run, qrels, k_values, queries=queries)
    names = [f"{name}_at_{k}" for name in MTEB_MEASURES for k in k_values]
    n = len(per_query)
    return {m: (sum(v[m] for v in per_query.values()) / n if n else 0.0) for m in names}
