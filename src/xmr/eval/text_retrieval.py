"""Text -> text retrieval on a split whose items are texts (a BEIR corpus, or captions): runs
from BM25, a dense text model or both fused, scored as MTEB scores them and as xmr does.

Keys are ``t2t/<metric>`` (text queries, text documents; never ``t2i``):

* MTEB's set (:mod:`xmr.eval.mteb`): ``t2t/ndcg_at_10``, ``t2t/map_at_10``,
  ``t2t/recall_at_10``, ``t2t/precision_at_10``, ``t2t/mrr_at_10`` ... at MTEB's cut-offs
  (1, 3, 5, 10, 20, 100, 1000), and ``t2t/main_score`` (= ``ndcg_at_10``, MTEB's main score);
  graded gains from the qrels' scores where the split keeps them (BEIR).
* xmr's hit-rate ``t2t/R@1``, ``R@5``, ``R@10`` and ``t2t/MeanRecall`` (MUGE's), with the other
  metrics of :mod:`xmr.eval.metrics` (``mAP@10``, ``nDCG@10``...).

Both are computed from one run (query id -> ranked ``(doc id, score)``), so they describe the
same ranking. The MTEB metrics rank each query's documents as trec_eval does (score, then doc
id descending); xmr's ranks in the run's order. Every judged query is in every mean (one with
nothing retrieved scores 0); query ids equal to document ids are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from xmr.data.records import document_text
from xmr.errors import XmrError
from xmr.eval.evaluate import evaluate_rankings, recall_ks, split_categories
from xmr.eval.mteb import MAIN_SCORE, MTEB_K_VALUES, mteb_metrics

DIRECTION = "t2t"
TextRun = Mapping[str, Sequence[tuple[str, float]]]


def split_qrels(split: Any) -> dict[str, dict[str, float]]:
    """query id -> {doc id: grade} of the judged queries: the split's grades where it has them
    (BEIR scores), else 1 for every relevant pair."""
    grades = getattr(split, "grades", None) or {}
    return {
        qid: dict(grades.get(qid) or dict.fromkeys(relevant, 1))
        for qid, relevant in split.relevance.items()
    }


def run_depth(split: Any, k_values: Sequence[int] = MTEB_K_VALUES, k: int = 10) -> int:
    """How deep each query's run must go: the largest cut-off, at most the corpus size."""
    return min(max(*k_values, k), len(split.items))


def evaluate_text_run(
    run: TextRun,
    split: Any,
    *,
    k: int = 10,
    k_values: Sequence[int] = MTEB_K_VALUES,
    skip_empty: bool = False,
    prefix: str = "",
) -> dict[str, float]:
    """``t2t/...`` metrics of ``run`` (see the module docstring) on the split's judged queries."""
    if not split.has_relevance:
        raise XmrError(f"split '{split.name}' has no relevance to score against")
    judged = [q for q in split.relevance if split.relevance[q] or not skip_empty]
    trec_run = {q: {d: float(s) for d, s in run.get(q, ())} for q in judged}
    out = {
        f"{prefix}{DIRECTION}/{name}": value
        for name, value in mteb_metrics(
            trec_run, split_qrels(split), k_values, queries=judged
        ).items()
    }
    out[f"{prefix}{DIRECTION}/main_score"] = out[f"{prefix}{DIRECTION}/{MAIN_SCORE}"]
    rankings = {q: [d for d, _ in run.get(q, ())] for q in split.relevance}
    xmr_metrics = evaluate_rankings(
        rankings,
        split.relevance,
        ks=recall_ks(k),
        k=k,
        direction=DIRECTION,
        categories=split_categories(split, "t2i"),
        query_ids=list(split.queries),
        skip_empty=skip_empty,
    )
    out.update({f"{prefix}{key}": v for key, v in xmr_metrics.items()})
    return out


def bm25_run(split: Any, spec: str = "bm25", *, depth: int | None = None) -> dict[str, list]:
    """BM25 over the split's item texts (captions joined), searched with every query text:
    query id -> ranked ``(doc id, score)``, positive scores only, at most ``depth`` deep."""
    index = bm25_index_of_split(split, spec)
    depth = depth or run_depth(split)
    qids = list(split.queries)
    hits = index.search_texts([split.queries[q].text for q in qids], depth)
    return {q: [(h.id, h.score) for h in row] for q, row in zip(qids, hits, strict=True)}


def bm25_index_of_split(split: Any, spec: str = "bm25"):
    """A BM25 index of the split's items that have text (their captions joined)."""
    from xmr.index.bm25_index import build_bm25_index

    items = [it for it in split.items.values() if it.captions]
    if not items:
        raise XmrError(f"split '{split.name}' has no item with a caption or text to index")
    return build_bm25_index(
        [document_text(it.captions) for it in items],
        [it.id for it in items],
        spec,
        items=[{"id": it.id, "captions": list(it.captions)} for it in items],
    )


def fuse_runs(
    runs: Sequence[TextRun],
    *,
    mode: str = "rrf",
    weights: Sequence[float] | None = None,
    rrf_k: int | None = None,
    depth: int | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Per query, :func:`xmr.fusion.hybrid.fuse_ranked_lists` of the runs (dense first)."""
    from xmr.fusion.hybrid import RRF_K, fuse_ranked_lists

    queries = list(dict.fromkeys(q for run in runs for q in run))
    out = {}
    for q in queries:
        fused = fuse_ranked_lists(
            [list(run.get(q, ())) for run in runs],
            mode=mode,
            weights=weights,
            rrf_k=RRF_K if rrf_k is None else rrf_k,
            k=depth,
        )
        out[q] = [(h.id, h.score) for h in fused]
    return out
