"""Multi-vector items (K vectors each, BLIP-2 style) in the FAISS index: Flat search equals a
brute-force max-sim with ties to the lower item, with category filters, image queries of K
vectors, save / load / add / vector(), the ``mean`` alternative, and the recall of ANN types
measured against exact max-sim."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from xmr.errors import XmrError  # noqa: E402
from xmr.index import build_index, load_index  # noqa: E402
from xmr.index.multivector import exact_item_search  # noqa: E402
from xmr.vectors import l2_normalize, max_sim  # noqa: E402


def _unit(rng, *shape):
    return l2_normalize(rng.standard_normal(shape).astype(np.float32))


def _items(n):
    return [{"id": f"i{j}", "category": "even" if j % 2 == 0 else "odd"} for j in range(n)]


def _brute(items, queries, k, allowed=None):
    """Max-sim ranked by a plain stable sort, independently of the library's reference."""
    q = queries[:, None, :] if queries.ndim == 2 else queries
    x = items[:, None, :] if items.ndim == 2 else items
    sim = np.einsum("qad,nkd->qnak", q, x).max(axis=(2, 3))
    idx = np.arange(len(items)) if allowed is None else np.asarray(allowed)
    order = np.argsort(-sim[:, idx], axis=1, kind="stable")[:, :k]
    return idx[order], np.take_along_axis(sim[:, idx], order, axis=1)


def test_max_sim_is_the_max_over_vectors_and_k1_is_the_dot_product():
    rng = np.random.default_rng(0)
    items, q = _unit(rng, 7, 5, 8), _unit(rng, 3, 8)
    ref = np.stack([[max(float(v @ t) for v in item) for item in items] for t in q])
    np.testing.assert_allclose(max_sim(q, items), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(max_sim(q, items[:, 0]), q @ items[:, 0].T, rtol=1e-5, atol=1e-6)
    # K query vectors (image -> text): the same matrix transposed
    np.testing.assert_allclose(max_sim(items, q), ref.T, rtol=1e-5, atol=1e-6)
    assert max_sim(q, items).dtype == np.float32


@pytest.mark.parametrize("k", [1, 3, 10, 60])
def test_flat_multivector_search_equals_brute_force(k):
    rng = np.random.default_rng(k)
    items, q = _unit(rng, 60, 6, 16), _unit(rng, 25, 16)
    index = build_index(items, [f"i{j}" for j in range(60)], "Flat", items=_items(60))
    assert index.item_vectors == 6 and index.backend.ntotal == 360 and len(index) == 60
    want_idx, want_s = _brute(items, q, k)
    for hits, wi, ws in zip(index.search(q, k), want_idx, want_s, strict=True):
        assert [h.position for h in hits] == list(wi)
        np.testing.assert_allclose([h.score for h in hits], ws, rtol=1e-5, atol=1e-6)
    # the library's reference agrees too
    _, ref = exact_item_search(items, q, k)
    np.testing.assert_array_equal(ref, want_idx)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_category_filter_equals_brute_force_on_the_category(k):
    rng = np.random.default_rng(7)
    items, q = _unit(rng, 40, 4, 12), _unit(rng, 10, 12)
    index = build_index(items, [f"i{j}" for j in range(40)], "Flat", items=_items(40))
    odd = np.arange(1, 40, 2)
    want_idx, _ = _brute(items, q, k, allowed=odd)
    for hits, wi in zip(index.search(q, k, category="odd"), want_idx, strict=True):
        assert [h.position for h in hits] == list(wi)
        assert all(h.id in {f"i{j}" for j in odd} for h in hits)


def test_ties_go_to_the_lower_item_as_in_exact_search():
    """Items that share their best vector tie exactly; the lower item ranks first, and an
    unseen tied item (the search asks for few vectors first) is still found."""
    rng = np.random.default_rng(3)
    base = _unit(rng, 5, 8)
    # 30 items of 3 vectors: item j holds base[j % 5] among noise, so items tie in groups of 6
    items = _unit(rng, 30, 3, 8) * 0.0
    for j in range(30):
        items[j, j % 3] = base[j % 5]
        items[j, (j + 1) % 3] = -base[j % 5]
        items[j, (j + 2) % 3] = -base[j % 5]
    q = base[[0, 2]] + 0.0
    index = build_index(items, [f"i{j}" for j in range(30)], "Flat")
    for k in (1, 2, 5, 6, 7, 13):
        want_idx, _ = _brute(items, q, k)
        got = [[h.position for h in row] for row in index.search(q, k)]
        assert got == want_idx.tolist(), k
        assert got[0][: min(k, 6)] == [0, 5, 10, 15, 20, 25][: min(k, 6)]


def test_image_queries_of_k_vectors_against_a_text_index():
    rng = np.random.default_rng(4)
    texts, images = _unit(rng, 50, 16), _unit(rng, 8, 5, 16)
    index = build_index(texts, [f"t{j}" for j in range(50)], "Flat")
    assert index.item_vectors == 1
    want_idx, want_s = _brute(texts, images, 7)
    for hits, wi, ws in zip(index.search(images, 7), want_idx, want_s, strict=True):
        assert [h.position for h in hits] == list(wi)
        np.testing.assert_allclose([h.score for h in hits], ws, rtol=1e-5, atol=1e-6)
    # both sides multi-vector (query by example in a multi-vector image index)
    mv = build_index(images, [f"m{j}" for j in range(8)], "Flat")
    want_idx, _ = _brute(images, images[:3], 4)
    assert [[h.position for h in r] for r in mv.search(images[:3], 4)] == want_idx.tolist()


def test_save_load_add_and_vector_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    items, more, q = _unit(rng, 20, 4, 8), _unit(rng, 5, 4, 8), _unit(rng, 6, 8)
    index = build_index(items, [f"i{j}" for j in range(20)], "Flat", items=_items(20))
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert loaded.item_vectors == 4 and loaded.info()["vectors"] == 80
    np.testing.assert_allclose(loaded.vector("i3"), items[3], atol=1e-6)
    assert loaded.vector("i3").shape == (4, 8)
    loaded.add(
        more, [f"n{j}" for j in range(5)], [{"id": f"n{j}", "category": "odd"} for j in range(5)]
    )
    loaded.save()
    again = load_index(tmp_path / "idx")
    everything = np.concatenate([items, more])
    want_idx, _ = _brute(everything, q, 9)
    assert [[h.position for h in r] for r in again.search(q, 9)] == want_idx.tolist()
    assert again.item("n2")["category"] == "odd" and len(again) == 25
    np.testing.assert_allclose(again.vector("n4"), more[4], atol=1e-6)
    with pytest.raises(XmrError, match="3 vector\\(s\\) per item, the index holds 4"):
        again.add(_unit(rng, 1, 3, 8), ["x"])
    with pytest.raises(XmrError, match="1 vector\\(s\\) per item, the index holds 4"):
        again.add(_unit(rng, 1, 8), ["y"])


def test_mean_mode_stores_one_normalised_vector_per_item():
    rng = np.random.default_rng(6)
    items, q = _unit(rng, 30, 4, 8), _unit(rng, 5, 8)
    index = build_index(items, [f"i{j}" for j in range(30)], "Flat", multi_vector="mean")
    assert index.item_vectors == 1 and index.manifest["multi_vector"] == "mean"
    assert index.manifest["pooled_vectors"] == 4
    mean = l2_normalize(items.mean(axis=1))
    want_idx, _ = _brute(mean, q, 5)
    assert [[h.position for h in r] for r in index.search(q, 5)] == want_idx.tolist()
    # adding K-vector items to a mean index pools them the same way
    more = _unit(rng, 3, 4, 8)
    index.add(more, ["m0", "m1", "m2"])
    np.testing.assert_allclose(index.vector("m1"), l2_normalize(more[1].mean(axis=0)), atol=1e-6)
    with pytest.raises(XmrError, match="multi_vector must be one of all, mean"):
        build_index(items, [f"i{j}" for j in range(30)], "Flat", multi_vector="max")


@pytest.mark.parametrize("spec", ["HNSW16", "IVF8,Flat", "SQfp16", "SQ8"])
def test_approximate_and_compressed_types_report_recall_against_exact_max_sim(spec):
    rng = np.random.default_rng(8)
    items, q = _unit(rng, 200, 4, 16), _unit(rng, 40, 16)
    index = build_index(items, [f"i{j}" for j in range(200)], spec, recall_queries=q)
    recall = index.manifest["recall"]
    _, exact = exact_item_search(items, q, 10)
    got = [[h.position for h in r] for r in index.search(q, 10)]
    measured = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
    assert recall["queries"] == 40 and recall["value"] == pytest.approx(measured, abs=1e-4)
    assert recall["value"] >= 0.8


@pytest.mark.parametrize("spec", ["Flat", "HNSW8"])
def test_delete_and_upsert_remove_every_vector_of_a_multivector_item(spec, tmp_path):
    rng = np.random.default_rng(7)
    items = _unit(rng, 30, 4, 16)
    ids = [f"i{j}" for j in range(30)]
    index = build_index(items, ids, spec, items=_items(30))
    assert index.remove(["i3", "i10"]) == ["i3", "i10"]
    assert index.backend.ntotal == 28 * 4 and len(index) == 28
    keep = [j for j in range(30) if j not in (3, 10)]
    q = _unit(rng, 9, 16)
    want_idx, want_s = _brute(items[keep], q, 5)
    for hits, wi, ws in zip(index.search(q, 5), want_idx, want_s, strict=True):
        if spec == "Flat":  # exact: the remaining items, renumbered in order
            assert [h.id for h in hits] == [ids[keep[i]] for i in wi]
            np.testing.assert_allclose([h.score for h in hits], ws, rtol=1e-5, atol=1e-6)
        assert not {"i3", "i10"} & {h.id for h in hits}
    # upsert replaces all K vectors of an item: its new vectors are what it is found by
    new = _unit(rng, 1, 4, 16)
    index.add(new, ["i5"], [{"id": "i5", "category": "odd"}], upsert=True)
    assert index.backend.ntotal == 28 * 4 and len(index) == 28 and index.ids[-1] == "i5"
    np.testing.assert_allclose(index.vector("i5"), new[0], rtol=1e-6, atol=1e-6)
    reopened = load_index(index.save(tmp_path / "idx"))
    top = reopened.search(new[0, 2], 1)[0][0]
    assert top.id == "i5" and top.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("item_chunk", [None, 7])
def test_evaluate_on_multivector_embeddings_equals_brute_force_metrics(item_chunk):
    """evaluate_split over (N, K, D) items ranks by max-sim in both directions, whatever the
    chunking; an item of NaN rows (failed to encode) ranks last for every text."""
    pytest.importorskip("torch")
    from xmr.data.dataset import Item, Query, Split
    from xmr.eval import evaluate_split
    from xmr.eval.metrics import reference_metrics

    rng = np.random.default_rng(11)
    n, n_q, k_vec, dim = 30, 20, 5, 16
    items, text = _unit(rng, n, k_vec, dim), _unit(rng, n_q, dim)
    split = Split(name="test")
    for j in range(n):
        split.items[f"i{j}"] = Item(f"i{j}")
    for q in range(n_q):
        split.queries[f"q{q}"] = Query(f"q{q}", f"text {q}")
        split.relevance[f"q{q}"] = {f"i{j}" for j in rng.choice(n, 2, replace=False)}
    item_ids, query_ids = list(split.items), list(split.queries)
    sim = np.einsum("qd,nkd->qnk", text, items).max(axis=2)
    for direction, scores, q_ids, c_ids, rel in (
        ("t2i", sim, query_ids, item_ids, split.relevance),
        ("i2t", sim.T, item_ids, query_ids, split.item_relevance()),
    ):
        got = evaluate_split(split, text, items, directions=(direction,), device="cpu",
                             item_chunk=item_chunk)  # fmt: skip
        rankings = {
            q: [c_ids[j] for j in np.argsort(-scores[r], kind="stable")[:10]]
            for r, q in enumerate(q_ids)
        }
        want = reference_metrics(rankings, rel, ks=(1, 5, 10), k=10)
        for name in ("R@1", "R@5", "R@10", "mAP@10", "nDCG@10", "MRR"):
            assert got[f"{direction}/{name}"] == pytest.approx(want[name], abs=1e-6), name
    # a failed item (NaN rows) is never found by a text
    broken = items.copy()
    broken[3] = np.nan
    sim_b = np.where(np.arange(n) == 3, -np.inf, sim)
    got = evaluate_split(split, text, broken, directions=("t2i",), device="cpu")
    rankings = {
        q: [item_ids[j] for j in np.argsort(-sim_b[r], kind="stable")[:10]]
        for r, q in enumerate(query_ids)
    }
    want = reference_metrics(rankings, split.relevance, ks=(1, 5, 10), k=10)
    assert got["t2i/R@10"] == pytest.approx(want["R@10"], abs=1e-6)
    assert got["t2i/MRR"] == pytest.approx(want["MRR"], abs=1e-6)
