"""MTEB's metric set against pytrec_eval on the same runs, ties and graded qrels included."""

from __future__ import annotations

import random

import pytest

from xmr.eval.mteb import MTEB_K_VALUES, mteb_metrics, mteb_per_query, trec_order

pytrec_eval = pytest.importorskip("pytrec_eval")

K_VALUES = (1, 3, 5, 10, 20)


def _pytrec(run, qrels, k_values):
    ks = ",".join(map(str, k_values))
    measures = {f"ndcg_cut.{ks}", f"map_cut.{ks}", f"recall.{ks}", f"P.{ks}", "recip_rank"}
    ev = pytrec_eval.RelevanceEvaluator(qrels, measures)
    return ev.evaluate(run)


def _random_case(rng: random.Random):
    docs = [f"d{i}" for i in range(rng.randint(3, 30))]
    qrels, run = {}, {}
    for q in range(rng.randint(1, 8)):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, min(6, len(docs))))
        # graded, some judged non-relevant (0)
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        retrieved = rng.sample(docs, rng.randint(1, len(docs)))
        # coarse scores make many exact ties
        run[qid] = {d: float(rng.randint(0, 4)) / 2 for d in retrieved}
    return run, qrels


@pytest.mark.parametrize("seed", range(40))
def test_equal_to_pytrec_eval_with_ties(seed):
    run, qrels = _random_case(random.Random(seed))
    ours = mteb_per_query(run, qrels, K_VALUES)
    ref = _pytrec(run, qrels, K_VALUES)
    assert set(ref) <= set(ours)
    for qid, values in ref.items():
        for k in K_VALUES:
            assert ours[qid][f"ndcg_at_{k}"] == pytest.approx(values[f"ndcg_cut_{k}"], abs=1e-12)
            assert ours[qid][f"map_at_{k}"] == pytest.approx(values[f"map_cut_{k}"], abs=1e-12)
            assert ours[qid][f"recall_at_{k}"] == pytest.approx(values[f"recall_{k}"], abs=1e-12)
            assert ours[qid][f"precision_at_{k}"] == pytest.approx(values[f"P_{k}"], abs=1e-12)
        # recip_rank looks at the whole run: equal to mrr at a cut-off past its length
        full = mteb_per_query(run, qrels, (len(run[qid]) + 1,))[qid]
        assert full[f"mrr_at_{len(run[qid]) + 1}"] == pytest.approx(values["recip_rank"])


def test_mrr_at_k_is_recip_rank_of_the_truncated_run():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0}}
    qrels = {"q": {"d": 1, "b": 1}}
    for k in (1, 2, 3, 4):
        top = trec_order(run["q"])[:k]
        ref = _pytrec({"q": {d: run["q"][d] for d in top}}, qrels, (1,))["q"]["recip_rank"]
        assert mteb_per_query(run, qrels, (k,))["q"][f"mrr_at_{k}"] == pytest.approx(ref)


def test_ties_break_by_doc_id_descending_like_trec_eval():
    # "b" > "a" as strings, so among equal scores "b" ranks first
    assert trec_order({"a": 1.0, "b": 1.0, "c": 2.0}) == ["c", "b", "a"]
    qrels = {"q": {"a": 1}}
    m = mteb_metrics({"q": {"a": 1.0, "b": 1.0}}, qrels, (1,))
    assert m["precision_at_1"] == 0.0 and m["mrr_at_1"] == 0.0


def test_query_missing_from_the_run_scores_zero_and_is_counted():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    m = mteb_metrics({"q1": {"a": 1.0}}, qrels, (1,))
    assert m["ndcg_at_1"] == 0.5
    # pytrec_eval leaves a query the run lacks out (so MTEB's mean would be 1.0) ...
    assert set(_pytrec({"q1": {"a": 1.0}}, qrels, (1,))) == {"q1"}
    # ... and scores an empty one 0, as xmr does for both
    assert _pytrec({"q1": {"a": 1.0}, "q2": {}}, qrels, (1,))["q2"]["ndcg_cut_1"] == 0.0


def test_identical_query_and_doc_ids_are_kept():
    # evalscope's numbering: query 0 finds document 0
    qrels = {"0": {"0": 1}, "1": {"1": 1}}
    run = {"0": {"0": 2.0, "1": 1.0}, "1": {"0": 2.0, "1": 1.0}}
    m = mteb_metrics(run, qrels, (1,))
    assert m["recall_at_1"] == 0.5


def test_names_are_mtebs():
    m = mteb_metrics({"q": {"a": 1.0}}, {"q": {"a": 1}})
    assert "ndcg_at_10" in m and "mrr_at_1000" in m and "precision_at_3" in m
    assert len(m) == 5 * len(MTEB_K_VALUES)
