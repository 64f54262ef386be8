"""The chunked torch path (scores or embeddings) equals a brute-force full-sort reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmr.data.dataset import Item, Query, Split
from xmr.eval import evaluate_embeddings, evaluate_scores, evaluate_split
from xmr.eval.metrics import reference_metrics
from xmr.eval.ranking import topk_from_embeddings, topk_from_scores

torch = pytest.importorskip("torch")


def reference_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Full sort; ties by lower item index (stable sort of -score); NaN last."""
    return np.argsort(-scores.astype(np.float32), axis=1, kind="stable")[:, :k]


def reference_eval(scores, query_ids, item_ids, relevance, k, depth):
    order = reference_topk(scores, depth)
    rankings = {q: [item_ids[j] for j in order[r]] for r, q in enumerate(query_ids)}
    return reference_metrics(rankings, relevance, (1, 5, 10), k)


@st.composite
def cases(draw):
    n_q = draw(st.integers(1, 9))
    n_i = draw(st.integers(1, 25))
    # Few distinct values -> many ties; sometimes -0.0, NaN and infinities.
    values = draw(
        st.sampled_from(
            [
                [0.0, 1.0, 2.0],
                [-1.0, -0.0, 0.0, 0.5],
                [float("nan"), -np.inf, np.inf, 0.25, -0.25],
                list(np.linspace(-1, 1, 50)),
            ]
        )
    )
    flat = draw(st.lists(st.sampled_from(values), min_size=n_q * n_i, max_size=n_q * n_i))
    scores = np.array(flat, dtype=np.float32).reshape(n_q, n_i)
    relevant = draw(
        st.lists(st.lists(st.integers(0, n_i - 1), max_size=4), min_size=n_q, max_size=n_q)
    )
    return (
        scores,
        relevant,
        draw(st.integers(1, 12)),
        draw(st.integers(1, 5)),
        draw(st.integers(1, 30)),
    )


@settings(max_examples=150, deadline=None)
@given(cases())
def test_chunked_topk_equals_full_sort(case):
    scores, _, k, query_chunk, item_chunk = case
    index, values = topk_from_scores(scores, k, query_chunk=query_chunk, item_chunk=item_chunk)
    expected = reference_topk(scores, k)
    np.testing.assert_array_equal(index, expected)
    ref_values = np.take_along_axis(scores, expected, 1) + np.float32(0.0)  # -0.0 reads as 0.0
    np.testing.assert_array_equal(values, ref_values)


@settings(max_examples=100, deadline=None)
@given(cases())
def test_evaluate_scores_equals_reference(case):
    scores, relevant, depth, query_chunk, item_chunk = case
    query_ids = [f"q{i}" for i in range(scores.shape[0])]
    item_ids = [f"i{j}" for j in range(scores.shape[1])]
    relevance = {q: {item_ids[j] for j in rel} for q, rel in zip(query_ids, relevant, strict=True)}
    got = evaluate_scores(
        scores,
        query_ids,
        item_ids,
        relevance,
        depth=depth,
        query_chunk=query_chunk,
        item_chunk=item_chunk,
    )
    want = reference_eval(scores, query_ids, item_ids, relevance, 10, max(depth, 10))
    for key, value in want.items():
        assert got[f"t2i/{key}"] == pytest.approx(value, abs=1e-12, nan_ok=True), key


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 70), st.integers(1, 16))
def test_evaluate_embeddings_equals_reference(seed, n_q, n_i, item_chunk):
    rng = np.random.default_rng(seed)
    # Small integer embeddings: every dot product is exact in float32, whatever the blocking,
    # and ties are frequent.
    q = rng.integers(-2, 3, (n_q, 4)).astype(np.float32)
    items = rng.integers(-2, 3, (n_i, 4)).astype(np.float32)
    query_ids = [f"q{i}" for i in range(n_q)]
    item_ids = [f"i{j}" for j in range(n_i)]
    relevance = {
        qid: {item_ids[j] for j in rng.choice(n_i, rng.integers(0, 4), replace=True)}
        for qid in query_ids
    }
    got = evaluate_embeddings(q, items, query_ids, item_ids, relevance, item_chunk=item_chunk)
    want = reference_eval(q @ items.T, query_ids, item_ids, relevance, 10, 10)
    for key, value in want.items():
        assert got[f"t2i/{key}"] == pytest.approx(value, abs=1e-12, nan_ok=True), key


def test_only_queries_with_relevance_are_ranked_and_skips_are_counted():
    scores = np.array([[0.1, 0.9], [0.9, 0.1], [0.5, 0.5]], dtype=np.float32)
    out = evaluate_scores(scores, ["a", "b", "c"], ["x", "y"], {"a": {"y"}, "b": {"y"}})
    assert out["t2i/n_queries"] == 2 and out["t2i/n_skipped"] == 1
    assert out["t2i/R@1"] == 0.5 and out["t2i/MRR"] == 0.75


def test_ties_rank_the_lower_item_index_first():
    scores = np.array([[0.5, 0.9, 0.9, 0.1]], dtype=np.float32)
    out = evaluate_scores(scores, ["q"], ["a", "b", "c", "d"], {"q": {"c"}})
    assert out["t2i/R@1"] == 0.0 and out["t2i/MRR"] == 0.5


def test_torch_inputs_and_rows():
    scores = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    index, values = topk_from_scores(scores, 2, rows=np.array([1]))
    assert index.tolist() == [[2, 1]] and values.tolist() == [[3.0, 2.0]]
    index, _ = topk_from_embeddings(torch.eye(3), torch.eye(3)[[2, 0, 1]], 1)
    assert index.ravel().tolist() == [1, 2, 0]


def test_evaluate_split_both_directions():
    split = Split("test")
    split.items = {i: Item(i, category=c) for i, c in (("a", "car"), ("b", "car"), ("c", "person"))}
    split.queries = {q: Query(q, f"text {q}") for q in ("t1", "t2")}
    split.relevance = {"t1": {"a", "b"}, "t2": {"c"}}
    text = np.array([[1, 0], [0, 1]], dtype=np.float32)
    image = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    out = evaluate_split(split, text, image)
    assert out["t2i/R@1"] == 1.0 and out["t2i/mAP@10"] == 1.0
    assert out["t2i/car/n_queries"] == 1  # t1's category comes from its items
    assert out["i2t/n_queries"] == 3 and out["i2t/R@1"] == 1.0
    assert out["i2t/car/n_queries"] == 2 and out["i2t/person/R@1"] == 1.0


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(0)
    q = rng.integers(-3, 4, (500, 16)).astype(np.float32)
    items = rng.integers(-3, 4, (3000, 16)).astype(np.float32)
    cpu = topk_from_embeddings(q, items, 20, device="cpu", item_chunk=700)
    gpu = topk_from_embeddings(q, items, 20, device="cuda", item_chunk=700)
    np.testing.assert_array_equal(cpu[0], gpu[0])
    np.testing.assert_array_equal(cpu[0], reference_topk(q @ items.T, 20))
