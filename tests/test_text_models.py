"""``st:`` bi-encoders and ``ce:`` cross-encoders from tiny random sentence-transformers models
saved in the real format; hybrid search through the Searcher and the service (bm25 and hybrid
modes, real HTTP handling through FastAPI's TestClient)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from text_helpers import (
    ENGLISH_DOCS,
    ENGLISH_QUERIES,
    english_beir,
    tiny_cross_encoder,
    tiny_sentence_transformer,
)
from xmr.errors import XmrError

st = pytest.importorskip("sentence_transformers")
pytest.importorskip("bm25s")


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory):
    return tiny_sentence_transformer(
        tmp_path_factory.mktemp("st") / "model", prompts={"query": "query: ", "document": ""}
    )


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory):
    return tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "model")


def test_st_encoder_uses_the_models_own_pooling_and_prompts(st_dir):
    from xmr.models import create_encoder
    from xmr.models.registry import detect_backend

    assert detect_backend(st_dir) == "st"
    enc = create_encoder(f"st:{st_dir}", device="cpu")
    same_dir = create_encoder(str(st_dir), device="cpu")
    reference = st.SentenceTransformer(str(st_dir), device="cpu")
    texts = ["a white car", "black cat on the mat"]
    q = enc.encode_texts(texts)
    d = enc.encode_documents(texts)
    assert q.dtype == np.float32 and q.shape == (2, enc.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    ref_q = reference.encode(texts, prompt="query: ", normalize_embeddings=True)
    ref_d = reference.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(q, ref_q, atol=1e-5)
    np.testing.assert_allclose(d, ref_d, atol=1e-5)
    assert not np.allclose(q, d)  # the query prompt is applied to queries only
    m = enc.manifest()
    assert m["backend"] == "st" and m["preprocess"]["query_prompt"] == "query: "
    assert m["fingerprint"] == same_dir.manifest()["fingerprint"]
    with pytest.raises(XmrError, match="text model"):
        enc.encode_images([b"not an image"])


def test_ce_reranks_text_pairs_with_the_models_scores(ce_dir):
    import torch

    from xmr.models.cross_encoders import create_cross_encoder
    from xmr.rerank import rerank

    ce = create_cross_encoder(f"ce:{ce_dir}", device="cpu")
    assert ce.spec.startswith("ce:")
    reference = st.CrossEncoder(str(ce_dir), device="cpu")
    docs = list(ENGLISH_DOCS)
    query = "white car"
    raw = reference.predict(
        [(query, ENGLISH_DOCS[d]) for d in docs], activation_fn=torch.nn.Identity()
    )
    logits = ce.logits([ENGLISH_DOCS[d] for d in docs], [query] * len(docs))
    np.testing.assert_allclose(logits[:, 1], raw, atol=1e-5)
    candidates = [{"id": d, "score": 1.0 - n / 10} for n, d in enumerate(docs)]
    out = rerank(query, candidates, ce, lookup=lambda i: ENGLISH_DOCS[i], k=5)
    top = out[:5]
    probs = reference.predict([(query, ENGLISH_DOCS[c["id"]]) for c in top])  # sigmoid
    np.testing.assert_allclose([c["match_prob"] for c in top], probs, atol=1e-5)
    assert [c["score"] for c in top] == sorted((c["score"] for c in top), reverse=True)
    assert [c["id"] for c in out[5:]] == docs[5:]  # the rest keep their first-stage order


def test_evaluate_st_and_hybrid_with_ce_rerank_on_beir(tmp_path, st_dir, ce_dir, capsys):
    from xmr.cli import main
    from xmr.data.readers import load_dataset
    from xmr.eval.text_retrieval import bm25_run, evaluate_text_run, fuse_runs
    from xmr.models import create_encoder
    from xmr.workflows.text_eval import dense_caption_run

    data = english_beir(tmp_path / "beir")
    model = f"st:{st_dir}"
    assert (
        main(["evaluate", "--model", model, "--data", str(data), "--device", "cpu", "--json"]) == 0
    )
    dense = json.loads(capsys.readouterr().out)
    assert "t2t/ndcg_at_10" in dense and not any(k.startswith("t2i/") for k in dense)
    argv = ["evaluate", "--model", model, "--data", str(data), "--device", "cpu", "--json"]
    report = tmp_path / "report"
    assert main([*argv, "--hybrid", "rrf", "--rrf-k", "10", "--report", str(report)]) == 0
    hybrid = json.loads(capsys.readouterr().out)
    # The report draws each of the hybrid's runs: the fused one and its two retrievers.
    assert set(json.loads((report / "rankings.json").read_text())) == {
        "t2t", "dense/t2t", "bm25/t2t",
    }  # fmt: skip
    assert "dense · text → text" in (report / "index.html").read_text()
    assert hybrid["dense/t2t/ndcg_at_10"] == pytest.approx(dense["t2t/ndcg_at_10"])
    split = load_dataset(data).split("test")
    encoder = create_encoder(model, device="cpu")
    d_run = dense_caption_run(encoder, split, 8)
    b_run = bm25_run(split)
    expected = evaluate_text_run(fuse_runs([d_run, b_run], mode="rrf", rrf_k=10), split)
    for key in ("t2t/ndcg_at_10", "t2t/R@1", "t2t/map_at_100"):
        assert hybrid[key] == pytest.approx(expected[key])
    assert hybrid["bm25/t2t/ndcg_at_10"] == pytest.approx(
        evaluate_text_run(b_run, split)["t2t/ndcg_at_10"]
    )
    assert main([*argv, "--model", "bm25", "--rerank", f"ce:{ce_dir}", "--rerank-k", "3"]) == 0
    reranked = json.loads(capsys.readouterr().out)
    assert "first_stage/t2t/ndcg_at_10" in reranked and "t2t/ndcg_at_10" in reranked


def _hybrid_searcher(tmp_path, st_dir, **options):
    from xmr.index import build_bm25_index, build_index
    from xmr.models import create_encoder
    from xmr.search import Searcher

    encoder = create_encoder(f"st:{st_dir}", device="cpu")
    ids, texts = list(ENGLISH_DOCS), list(ENGLISH_DOCS.values())
    items = [{"id": i, "captions": [t]} for i, t in zip(ids, texts, strict=True)]
    dense = build_index(
        encoder.encode_documents(texts), ids, "Flat", items=items, model=encoder.manifest()
    )
    lexical = build_bm25_index(texts, ids, items=items)
    dense.save(tmp_path / "dense")
    lexical.save(tmp_path / "bm25")
    return Searcher(dense, encoder, lexical=lexical, **options), encoder


def test_searcher_hybrid_mode_is_rrf_of_dense_and_bm25(tmp_path, st_dir):
    pytest.importorskip("faiss")
    from xmr.fusion.hybrid import fuse_ranked_lists
    from xmr.search import Searcher

    searcher, _ = _hybrid_searcher(tmp_path, st_dir, hybrid_depth=8)
    assert searcher.modes == ["dense", "bm25", "hybrid"]
    for text in ENGLISH_QUERIES.values():
        dense = searcher.search_text(text, 8, mode="dense")
        lexical = searcher.search_text(text, 8, mode="bm25")
        fused = searcher.search_text(text, 5, mode="hybrid")
        want = fuse_ranked_lists(
            [[(r.id, r.score) for r in dense], [(r.id, r.score) for r in lexical]], k=5
        )
        assert [(r.id, r.score) for r in fused] == [(h.id, pytest.approx(h.score)) for h in want]
        assert all(r.captions for r in fused)
    again = Searcher.from_index_dir(
        tmp_path / "dense", bm25_index=tmp_path / "bm25", hybrid="weighted"
    )
    assert again.search_text("black cat", 3, mode="hybrid")[0].id in ENGLISH_DOCS
    with pytest.raises(XmrError, match="not a BM25 index"):
        Searcher.from_index_dir(tmp_path / "dense", bm25_index=tmp_path / "dense")


def test_service_bm25_and_hybrid_modes(tmp_path, st_dir):
    pytest.importorskip("faiss")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xmr.serve import ServeSettings, create_app

    searcher, _ = _hybrid_searcher(tmp_path, st_dir)
    client = TestClient(create_app(searcher))
    info = client.get("/api/info").json()
    assert info["modes"] == ["dense", "bm25", "hybrid"]
    for mode in ("dense", "bm25", "hybrid"):
        r = client.get("/api/search", params={"q": "black cat", "k": 3, "mode": mode})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"]["mode"] == mode
        expected = searcher.search_text("black cat", 3, mode=mode)
        got = [(x["id"], x["score"]) for x in body["results"]]
        assert got == [(e.id, pytest.approx(e.score, abs=1e-6)) for e in expected]
    posted = client.post("/api/search", json={"q": "christmas pillow", "mode": "bm25", "k": 2})
    assert posted.status_code == 200 and posted.json()["results"][0]["id"] == "d5"
    bad = client.get("/api/search", params={"q": "cat", "mode": "sparse"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_mode"

    # a BM25 index served alone: bm25 is the one mode, needs no model
    alone = TestClient(create_app(str(tmp_path / "bm25"), ServeSettings()))
    r = alone.get("/api/search", params={"q": "black cat", "k": 2})
    assert r.status_code == 200 and [x["id"] for x in r.json()["results"]] == ["d2", "d3"]
    r = alone.get("/api/search", params={"q": "black cat", "mode": "hybrid"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "mode_unavailable"
    about = alone.get("/api/info").json()
    assert about["modes"] == ["bm25"] and about["index_type"] == "BM25" and about["size"] == 8
    # and a vector index with --bm25-index beside it, as `xmr serve` loads them
    settings = ServeSettings(bm25_index=str(tmp_path / "bm25"), hybrid="rrf")
    both = TestClient(create_app(str(tmp_path / "dense"), settings))
    r = both.get("/api/search", params={"q": "white car", "k": 3, "mode": "hybrid"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
