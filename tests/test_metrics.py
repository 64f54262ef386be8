"""Hand-computed metric cases, and a cross-check against pytrec_eval (trec_eval)."""

import math
import random

import numpy as np
import pytest

from xmr.eval import evaluate_rankings, hits_from_rankings, summarize
from xmr.eval.evaluate import format_metrics_table, recall_ks
from xmr.eval.metrics import per_query_metrics, reference_metrics, summarize_by_category

D = [1 / math.log2(j + 1) for j in range(1, 12)]  # nDCG discount of ranks 1..11


def metrics(rankings, relevance, **kw):
    out = evaluate_rankings(rankings, relevance, **kw)
    return {key.split("/", 1)[1]: v for key, v in out.items()}


def test_relevant_at_ranks_1_and_3_of_4_relevant():
    ranking = ["a", "x", "b", "y", "z"]
    m = metrics({"q": ranking}, {"q": {"a", "b", "c", "d"}})
    assert m["R@1"] == m["R@5"] == m["R@10"] == 1.0
    assert m["MeanRecall"] == 1.0
    # Track2: ap = 1/1 + 2/3, divided by the 2 hits found.
    assert m["mAP@10"] == pytest.approx((1 + 2 / 3) / 2)
    # trec map_cut_10: the same sum divided by R = 4 (not by the hits).
    assert m["mAP@10_trec"] == pytest.approx((1 + 2 / 3) / 4)
    assert m["nDCG@10"] == pytest.approx((D[0] + D[2]) / sum(D[:4]))
    assert m["P@10"] == pytest.approx(0.2)
    assert m["MRR"] == 1.0
    assert (m["MeanRank"], m["MedianRank"], m["NotFound"]) == (1.0, 1.0, 0.0)


def test_recall_is_a_hit_rate_over_queries():
    rankings = {"q1": ["a", "b"], "q2": ["x", "y", "c"], "q3": ["x"] * 10}
    relevance = {"q1": {"b", "z"}, "q2": {"c"}, "q3": {"c"}}
    m = metrics(rankings, relevance)
    assert m["R@1"] == 0.0
    assert m["R@5"] == m["R@10"] == pytest.approx(2 / 3)
    assert m["MeanRecall"] == pytest.approx((0 + 2 / 3 + 2 / 3) / 3)
    assert m["MRR"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert m["MeanRank"] == 2.5 and m["MedianRank"] == 2.5
    assert m["NotFound"] == pytest.approx(1 / 3)


def test_no_relevant_found_gives_zero_and_query_without_ground_truth_is_skipped():
    m = metrics({"q1": ["x", "y"], "q2": ["a"], "q3": ["a"]}, {"q1": {"a"}, "q2": set()})
    # q2 is judged with nothing relevant: it scores 0 and stays in the means; q3 has no ground
    # truth at all and is left out.
    assert (m["n_queries"], m["n_empty"], m["n_skipped"]) == (2, 1, 1)
    assert m["mAP@10"] == m["mAP@10_trec"] == m["nDCG@10"] == m["MRR"] == 0.0
    assert math.isnan(m["MeanRank"]) and m["NotFound"] == 1.0


def test_query_with_relevance_but_no_ranking_scores_zero():
    m = metrics({"q1": ["a"]}, {"q1": {"a"}, "q2": {"b"}})
    assert m["n_queries"] == 2
    assert m["R@1"] == 0.5 and m["mAP@10"] == 0.5


def test_fewer_than_k_predictions():
    m = metrics({"q": ["x", "a"]}, {"q": {"a"}})
    assert (m["R@1"], m["R@5"], m["R@10"]) == (0.0, 1.0, 1.0)
    assert m["mAP@10"] == pytest.approx(0.5)
    assert m["P@10"] == pytest.approx(0.1)  # trec P_10 divides by 10 even with 2 ranked
    assert m["nDCG@10"] == pytest.approx(D[1] / D[0])


def test_duplicates_count_once_at_first_occurrence():
    m = metrics({"q": ["a", "a", "b", "a"]}, {"q": {"a", "b"}})
    assert m["P@10"] == pytest.approx(0.2)
    # hits at ranks 1 and 3 (the repeats keep their place but are misses)
    assert m["mAP@10"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["nDCG@10"] == pytest.approx((D[0] + D[2]) / (D[0] + D[1]))


def test_relevant_beyond_k_counts_for_mrr_but_not_for_cut_metrics():
    ranking = [f"x{i}" for i in range(12)] + ["a"]
    m = metrics({"q": ranking}, {"q": {"a"}})
    assert m["R@10"] == m["mAP@10"] == m["nDCG@10"] == 0.0
    assert m["MRR"] == pytest.approx(1 / 13) and m["MeanRank"] == 13


def test_ndcg_ideal_is_cut_at_k():
    ranking = list("abcdefghij")
    m = metrics({"q": ranking}, {"q": set("abcdefghijklmnop")})
    assert m["nDCG@10"] == pytest.approx(1.0)
    assert m["mAP@10"] == 1.0 and m["mAP@10_trec"] == pytest.approx(10 / 16)


def test_other_cutoffs_and_names():
    m = metrics({"q": ["x", "a", "b"]}, {"q": {"a", "b"}}, ks=(1, 2), k=2)
    assert set(m) >= {"R@1", "R@2", "mAP@2", "mAP@2_trec", "nDCG@2", "P@2"}
    assert m["mAP@2"] == 0.5 and m["mAP@2_trec"] == 0.25
    assert m["MeanRecall"] == 0.5
    assert (
        recall_ks(10) == (1, 5, 10) and recall_ks(3) == (1, 3) and recall_ks(20) == (1, 5, 10, 20)
    )


def test_empty_evaluation_is_nan_not_an_error():
    m = metrics({"q": ["a"]}, {})
    assert m["n_queries"] == 0 and m["n_skipped"] == 1
    assert math.isnan(m["R@1"]) and math.isnan(m["mAP@10"])
    m = metrics({"q": ["a"]}, {"q": set()}, skip_empty=True)
    assert m["n_queries"] == 0 and m["n_skipped"] == 1
    assert math.isnan(m["R@1"]) and math.isnan(m["mAP@10"])


def test_per_category_keys_and_values():
    rankings = {"v1": ["a"], "v2": ["x"], "p1": ["b"]}
    relevance = {"v1": {"a"}, "v2": {"a"}, "p1": {"b"}}
    cats = {"v1": "vehicle", "v2": "vehicle", "p1": "pedestrian"}
    out = evaluate_rankings(rankings, relevance, categories=cats)
    assert out["t2i/R@1"] == pytest.approx(2 / 3)
    assert out["t2i/vehicle/R@1"] == 0.5 and out["t2i/pedestrian/R@1"] == 1.0
    assert out["t2i/vehicle/mAP@10"] == 0.5 and out["t2i/vehicle/n_queries"] == 2
    table = format_metrics_table(out)
    assert "pedestrian" in table and "vehicle" in table
    assert "66.67" in table  # percentages in the table


def test_table_shows_percentages_ranks_and_counts():
    out = evaluate_rankings({"q": ["x", "a"]}, {"q": {"a"}}, direction="i2t")
    lines = {ln.split()[0]: ln.split()[-1] for ln in format_metrics_table(out).splitlines()[1:]}
    assert lines["R@5"] == "100.00" and lines["MRR"] == "50.00"
    assert lines["MeanRank"] == "2.00" and lines["n_queries"] == "1"
    assert format_metrics_table(out).startswith("i2t")


def test_table_puts_variants_side_by_side():
    """Reranked runs (first_stage/...) and fused items (image/, caption/, fused/) are compared
    in columns on the same queries; bare extras are listed after the tables."""
    final = evaluate_rankings({"q": ["a", "x"]}, {"q": {"a"}})
    first = evaluate_rankings({"q": ["x", "a"]}, {"q": {"a"}})
    out = dict(final)
    out |= {f"first_stage/{k}": v for k, v in first.items()}
    out |= {f"image/{k}": v for k, v in first.items()} | {"fused/weight": 0.25}
    lines = format_metrics_table(out).splitlines()
    header = next(ln for ln in lines if ln.startswith("t2i side by side")).split()
    assert header[4:] == ["first_stage", "reranked", "image"]
    r1 = [ln.split() for ln in lines if ln.startswith("R@1 ")]
    assert r1[0][-1] == "100.00"  # the main block: the reranked run
    assert r1[1][-3:] == ["0.00", "100.00", "0.00"]
    assert lines[-1] == "fused/weight: 0.25"


def _random_case(rng: random.Random):
    items = [f"d{j:02d}" for j in range(rng.randint(1, 30))]
    rankings, relevance = {}, {}
    for q in range(rng.randint(1, 12)):
        qid = f"q{q}"
        rankings[qid] = rng.sample(items, rng.randint(1, len(items)))
        relevance[qid] = set(rng.sample(items, rng.randint(1, min(8, len(items)))))
        relevance[qid] |= {f"absent{q}"} if rng.random() < 0.2 else set()  # relevant, never ranked
    return rankings, relevance


def test_vectorised_equals_plain_python_reference():
    rng = random.Random(7)
    for _ in range(200):
        rankings, relevance = _random_case(rng)
        relevance[f"q{len(rankings)}"] = set()  # a query without relevance
        for k in (1, 3, 10):
            ks = recall_ks(k)
            fast = summarize(hits_from_rankings(rankings, relevance), ks, k)
            slow = reference_metrics(rankings, relevance, ks, k)
            assert fast.keys() == slow.keys()
            for key in slow:
                assert fast[key] == pytest.approx(slow[key], abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize("k", [1, 5, 10, 20])
def test_matches_pytrec_eval(k):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(k)
    measures = {f"map_cut_{k}", f"ndcg_cut_{k}", f"P_{k}", "recip_rank"}
    for _ in range(30):
        rankings, relevance = _random_case(rng)
        qrels = {q: {d: 1 for d in rel} for q, rel in relevance.items()}
        # Distinct, falling scores: trec_eval ranks by score, so this is the given order.
        run = {q: {d: float(len(r) - j) for j, d in enumerate(r)} for q, r in rankings.items()}
        trec = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
        table = hits_from_rankings(rankings, relevance)
        pq = per_query_metrics(table, k)
        for row, qid in enumerate(table.query_ids):
            assert pq["AP_trec"][row] == pytest.approx(trec[qid][f"map_cut_{k}"], abs=1e-12)
            assert pq["nDCG"][row] == pytest.approx(trec[qid][f"ndcg_cut_{k}"], abs=1e-12)
            assert pq["hits"][row] / k == pytest.approx(trec[qid][f"P_{k}"], abs=1e-12)
            first = pq["first_rank"][row]
            assert (1 / first if first else 0.0) == pytest.approx(trec[qid]["recip_rank"])
        m = summarize(table, recall_ks(k), k)
        for ours, theirs in (
            (f"mAP@{k}_trec", f"map_cut_{k}"),
            (f"nDCG@{k}", f"ndcg_cut_{k}"),
            (f"P@{k}", f"P_{k}"),
            ("MRR", "recip_rank"),
        ):
            expected = np.mean([trec[q][theirs] for q in table.query_ids])
            assert m[ours] == pytest.approx(expected, abs=1e-12)


def test_category_of_unlabelled_queries_counts_only_in_total():
    table = hits_from_rankings({"a": ["x"], "b": ["y"]}, {"a": {"x"}, "b": {"x"}})
    out = summarize_by_category(table, {"a": "cat"}, prefix="t2i/")
    assert out["t2i/n_queries"] == 2 and out["t2i/cat/n_queries"] == 1
    assert "t2i/cat/n_skipped" not in out
