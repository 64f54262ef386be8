"""BM25 (scores vs the formula, tokenisers, save/load), hybrid fusion vs its formulas, and text
retrieval through the CLI: index build / search / evaluate / predict / compare."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from text_helpers import (
    ENGLISH_DOCS,
    ENGLISH_QUERIES,
    SEED_QUERIES,
    english_beir,
    seed_muge_beir,
    write_beir,
)
from xmr.errors import XmrError
from xmr.fusion.hybrid import fuse_ranked_lists
from xmr.index.tokenize import cjk_bigrams, resolve_tokenizer, words

bm25s = pytest.importorskip("bm25s")

from xmr.index import build_bm25_index, load_bm25_index, open_index  # noqa: E402
from xmr.index.bm25_index import parse_bm25_spec  # noqa: E402


def reference_bm25(docs: list[list[str]], query: list[str], k1: float, b: float, method: str):
    """The BM25 formula written out independently (bm25_index's docstring): one score per doc."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    out = []
    for d in docs:
        score = 0.0
        for t in query:
            df = sum(t in x for x in docs)
            if not df:
                continue
            tf = d.count(t)
            norm = k1 * (1 - b + b * len(d) / avgdl)
            if method == "lucene":
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + norm)
            elif method == "robertson":
                idf = max(0.0, math.log((n - df + 0.5) / (df + 0.5)))
                score += idf * tf / (tf + norm)
            else:  # atire
                score += math.log(n / df) * tf * (k1 + 1) / (tf + norm)
        out.append(score)
    return np.array(out)


CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "cats and dogs and more cats",
    "a red car and a red truck and a red bike on the road",
    "quantum chromodynamics",
    "the the the mat mat",
]


@pytest.mark.parametrize(
    ("k1", "b", "method"),
    [(1.5, 0.75, "lucene"), (1.2, 0.3, "lucene"), (0.9, 0.6, "robertson"), (1.1, 0.8, "atire")],
)
def test_bm25_scores_equal_the_formula(k1, b, method):
    index = build_bm25_index(
        CORPUS, [f"d{i}" for i in range(len(CORPUS))], f"bm25:k1={k1},b={b},method={method}"
    )
    tokens = [words(t) for t in CORPUS]
    for query in ["cat mat", "red red car", "the sat", "dog log road", "unknownword"]:
        expected = reference_bm25(tokens, words(query), k1, b, method)
        np.testing.assert_allclose(index.scores(query), expected, rtol=1e-5, atol=1e-6)
        hits = index.search_texts([query], k=10)[0]
        # positive scores only, best first, ties to the lower position
        want = sorted(
            (i for i in range(len(CORPUS)) if expected[i] > 1e-9), key=lambda i: (-expected[i], i)
        )
        assert [h.position for h in hits] == want


def test_bm25_spec_parsing_and_bad_options():
    assert parse_bm25_spec("bm25") == {
        "k1": 1.5,
        "b": 0.75,
        "method": "lucene",
        "tokenizer": "auto",
    }
    assert parse_bm25_spec("bm25:k1=1.2, b=0.5,tokenizer=jieba")["k1"] == 1.2
    for bad, match in [
        ("bm25:k1=x", "numbers"),
        ("bm25:b=2", "0 <= b <= 1"),
        ("bm25:foo=1", "bad BM25 option"),
        ("bm25:method=okapi", "unknown BM25 method"),
        ("bm25:tokenizer=spacy", "unknown tokenizer"),
    ]:
        with pytest.raises(XmrError, match=match):
            parse_bm25_spec(bad)


def test_chinese_tokenisation_on_the_seed_queries():
    jieba = pytest.importorskip("jieba")
    del jieba
    from xmr.index.tokenize import jieba_words

    # Seed 003's MUGE query examples: segmented into words, not one token per query
    assert jieba_words("胖妹妹松紧腰长裤")[-1] == "长裤" and "松紧" in jieba_words(
        "胖妹妹松紧腰长裤"
    )
    assert "蝴蝶结" in jieba_words("水钻蝴蝶结耳钉")
    assert jieba_words("酸角汁饮料 整箱 云南")[-1] == "云南"
    assert all(len(jieba_words(q)) >= 1 for q in SEED_QUERIES)
    # character bigrams need no dictionary; Latin words stay words
    assert cjk_bigrams("斑马纹老虎椅") == ["斑马", "马纹", "纹老", "老虎", "虎椅"]
    assert cjk_bigrams("炸面 NEW GREEN") == ["炸面", "new", "green"]
    assert cjk_bigrams("面") == ["面"]
    # `words` keeps a CJK run whole, which is why auto never picks it for Chinese
    assert words("斑马纹老虎椅") == ["斑马纹老虎椅"]
    assert resolve_tokenizer("auto", ["a white car"])[0] == "words"
    assert resolve_tokenizer("auto", ["斑马纹老虎椅"])[0] == "jieba"


def test_bm25_index_save_load_keeps_scores_tokenizer_and_metadata(tmp_path):
    index = build_bm25_index(
        list(ENGLISH_DOCS.values()),
        list(ENGLISH_DOCS),
        "bm25:k1=1.2,b=0.7",
        items=[{"id": i, "captions": [t], "category": "x" if n % 2 else "y"}
               for n, (i, t) in enumerate(ENGLISH_DOCS.items())],
    )  # fmt: skip
    before = index.search_texts(list(ENGLISH_QUERIES.values()), k=5)
    path = index.save(tmp_path / "ix")
    loaded = open_index(path)
    assert type(loaded) is type(index)
    assert loaded.manifest["index"]["tokenizer"] == "words"
    assert loaded.manifest["index"]["requested_tokenizer"] == "auto"
    assert loaded.manifest["index"]["k1"] == 1.2 and loaded.manifest["backend"] == "bm25"
    assert loaded.search_texts(list(ENGLISH_QUERIES.values()), k=5) == before
    assert loaded.item("d2")["captions"] == [ENGLISH_DOCS["d2"]]
    only_x = loaded.search_texts(["cat"], k=5, category="x")[0]
    assert only_x and all(loaded.item(h.id)["category"] == "x" for h in only_x)
    with pytest.raises(XmrError, match="unknown category"):
        loaded.search_texts(["cat"], category="z")
    # saved again over itself (atomic replace), then refused over a folder that is not an index
    index.save(path)
    assert load_bm25_index(path).search_texts(["cat"], k=3) == index.search_texts(["cat"], k=3)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(XmrError, match="refusing to replace"):
        index.save(other)
    assert (other / "notes.txt").read_text() == "keep me"
    (path / "ids.json").unlink()
    with pytest.raises(XmrError, match="ids.json: missing"):
        open_index(path)


def test_rrf_and_weighted_fusion_follow_their_formulas():
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    lexical = [("c", 12.0), ("d", 3.0), ("a", 1.0)]
    fused = fuse_ranked_lists([dense, lexical], mode="rrf", rrf_k=60)
    expected = {
        "a": 1 / 61 + 1 / 63,
        "b": 1 / 62,
        "c": 1 / 63 + 1 / 61,
        "d": 1 / 62,
    }
    assert {h.id: h.score for h in fused} == pytest.approx(expected)
    # a and c tie, b and d tie: first seen reading rank by rank, dense first
    assert [h.id for h in fused] == ["a", "c", "b", "d"]
    assert fused[0].ranks == [1, 3] and fused[3].scores == [None, 3.0]
    weighted = fuse_ranked_lists([dense, lexical], mode="weighted", weights=[0.7, 0.3])
    norm_d = {"a": 1.0, "b": (0.8 - 0.1) / 0.8, "c": 0.0}
    norm_l = {"c": 1.0, "d": (3 - 1) / 11, "a": 0.0}
    want = {d: 0.7 * norm_d.get(d, 0) + 0.3 * norm_l.get(d, 0) for d in "abcd"}
    assert {h.id: h.score for h in weighted} == pytest.approx(want)
    assert [h.id for h in weighted] == sorted(want, key=lambda d: -want[d])
    assert len(fuse_ranked_lists([dense, lexical], k=2)) == 2
    with pytest.raises(XmrError, match="unknown hybrid mode"):
        fuse_ranked_lists([dense], mode="max")
    with pytest.raises(XmrError, match="one weight"):
        fuse_ranked_lists([dense, lexical], weights=[1.0])


def test_cli_bm25_index_search_evaluate_predict_on_beir(tmp_path, capsys):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from xmr.cli import main

    data = english_beir(tmp_path / "beir")
    index = tmp_path / "ix"
    assert (
        main(["index", "build", "--model", "bm25", "--data", str(data), "--out", str(index)]) == 0
    )
    assert "tokenizer words" in capsys.readouterr().out
    assert main(["search", str(index), "black cat", "-k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["id"] for r in results] == ["d2", "d3"]
    assert results[0]["captions"] == [ENGLISH_DOCS["d2"]]
    assert main(["search", str(index), "black cat", "--mode", "dense"]) != 0
    assert "mode 'dense' is not available" in capsys.readouterr().err

    assert main(["evaluate", "--model", "bm25", "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert not any(k.startswith("t2i/") for k in metrics)
    assert metrics["t2t/main_score"] == metrics["t2t/ndcg_at_10"]
    assert {"t2t/R@1", "t2t/MeanRecall", "t2t/mrr_at_1000", "t2t/precision_at_3"} <= set(metrics)

    from xmr.data.readers import load_dataset
    from xmr.eval.text_retrieval import bm25_run

    split = load_dataset(data).split("test")
    raw = bm25_run(split)
    assert raw["q4"] == []  # "zebra chair" shares no token with the corpus
    qrels = {}
    for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, r = line.split("\t")
        qrels.setdefault(q, {})[d] = int(r)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.5", "P.3"}).evaluate(
        {q: dict(row) for q, row in raw.items()}
    )
    # pytrec_eval on the raw BM25 scores (ties included) = xmr's t2t metrics, graded ndcg
    pairs = [("ndcg_at_10", "ndcg_cut_10"), ("recall_at_5", "recall_5"), ("precision_at_3", "P_3")]
    for ours, theirs in pairs:
        mean = sum(v[theirs] for v in ref.values()) / len(qrels)
        assert metrics[f"t2t/{ours}"] == pytest.approx(mean, abs=1e-6)

    run_file = tmp_path / "run.trec"
    argv = ["predict", "--model", "bm25", "--data", str(data), "--out", str(run_file), "--k", "5"]
    assert main(argv) == 0
    capsys.readouterr()
    written: dict[str, list[tuple[str, float]]] = {}
    for line in run_file.read_text().splitlines():
        qid, _, doc, _, score, tag = line.split()
        written.setdefault(qid, []).append((doc, float(score)))
    assert list(written) == list(ENGLISH_QUERIES) and tag == "xmr"
    for qid, row in written.items():
        assert [d for d, _ in row][: len(raw[qid])] == [d for d, _ in raw[qid]][:5]
        assert len(row) == 5
    # q4 is padded with score-0 documents (0 and the floats just below, so trec_eval keeps
    # the order) because every query must be in the file
    assert all(abs(s) < 1e-300 for _, s in written["q4"])


def test_chinese_seed_corpus_bm25_evaluates_with_identical_ids(tmp_path, capsys):
    pytest.importorskip("jieba")
    from xmr.cli import main

    data = seed_muge_beir(tmp_path / "muge")
    assert main(["evaluate", "--model", "bm25", "--data", str(data), "--json"]) == 0
    jieba_run = json.loads(capsys.readouterr().out)
    spec = "bm25:tokenizer=cjk-bigram"
    assert main(["evaluate", "--model", spec, "--data", str(data), "--json"]) == 0
    bigram_run = json.loads(capsys.readouterr().out)
    # query i is relevant to document i (ids equal) and all ten queries are counted
    assert jieba_run["t2t/n_queries"] == bigram_run["t2t/n_queries"] == 10
    assert jieba_run["t2t/recall_at_1000"] > 0 and bigram_run["t2t/recall_at_1000"] > 0
    index = tmp_path / "ix"
    assert main(["index", "build", "--model", spec, "--data", str(data), "--out", str(index)]) == 0
    capsys.readouterr()
    assert main(["search", str(index), "斑马纹老虎椅", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == "4"


def test_compare_shows_image_caption_fused_hybrid_on_the_same_queries(tmp_path, capsys, tiny_clip):
    pytest.importorskip("transformers")
    from test_fusion import write_tianchi
    from xmr.cli import main
    from xmr.data.readers import load_dataset
    from xmr.eval.text_retrieval import bm25_run, evaluate_text_run

    data = write_tianchi(tmp_path / "tianchi")
    model = f"hf:{tiny_clip}"
    argv = ["compare", "--data", str(data), "--image-model", model, "--device", "cpu", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["rows"]) == ["image", "caption-bm25", "caption-dense", "fused", "hybrid"]
    assert result["n_queries"] == 4
    split = load_dataset(data).split("valid")
    bm25 = evaluate_text_run(bm25_run(split), split, k_values=(1, 3, 5, 10, 20, 100))
    for column in result["columns"]:
        assert result["rows"]["caption-bm25"][column] == pytest.approx(bm25[f"t2t/{column}"])
    assert main(argv[:-1]) == 0
    table = capsys.readouterr().out
    assert "caption-bm25" in table and "ndcg_at_10" in table


def test_evaluate_report_for_text_retrieval(tmp_path, capsys):
    """``--report`` on a text -> text job: the report's rankings are BM25's own run, its
    per-query rows the split's queries, its tables the t2t metrics printed with --json."""
    pytest.importorskip("matplotlib")
    from xmr.cli import main
    from xmr.data.readers import load_dataset
    from xmr.eval.text_retrieval import bm25_run

    data = english_beir(tmp_path / "beir")
    report = tmp_path / "report"
    argv = ["evaluate", "--model", "bm25", "--data", str(data), "--json", "--report", str(report)]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    rankings = json.loads((report / "rankings.json").read_text())
    assert list(rankings) == ["t2t"]
    run = bm25_run(load_dataset(data).split("test"))
    for qid, row in run.items():
        assert rankings["t2t"][qid]["ranked"] == [i for i, _ in row][:10]
    assert rankings["t2t"]["q4"] == {"ranked": [], "relevant_at": []}  # no shared token
    saved = json.loads((report / "report.json").read_text())["metrics"]
    assert saved["t2t/ndcg_at_10"] == pytest.approx(metrics["t2t/ndcg_at_10"])
    rows = (report / "per_query.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[1] for r in rows) == sorted(run)
    assert all(r.startswith("t2t,") for r in rows)
    html = (report / "index.html").read_text()
    assert "text → text" in html and ENGLISH_DOCS["d2"] in html  # documents shown as text


def _scores(index, queries):
    return {q: [(h.id, round(h.score, 5)) for h in hits]
            for q, hits in zip(queries, index.search_texts(queries, k=10), strict=True)}  # fmt: skip


def test_bm25_add_and_delete_equal_a_rebuild_over_the_new_corpus(tmp_path):
    """BM25 has no vectors to append: adding or deleting documents re-scores the corpus (IDF and
    mean length change), so the edited index must score exactly as a build over the new corpus,
    saved and re-opened."""
    from xmr.workflows.index_build import delete_items

    ids, texts = list(ENGLISH_DOCS), list(ENGLISH_DOCS.values())
    queries = list(ENGLISH_QUERIES.values())
    index = build_bm25_index(texts[:4], ids[:4], "bm25:k1=1.2,b=0.7")
    assert (
        index.add([{"id": i, "captions": [t]} for i, t in zip(ids[4:], texts[4:], strict=True)])
        == 4
    )
    full = build_bm25_index(texts, ids, "bm25:k1=1.2,b=0.7")
    assert _scores(index, queries) == _scores(full, queries)
    index.save(tmp_path / "ix")
    assert _scores(open_index(tmp_path / "ix"), queries) == _scores(full, queries)
    assert open_index(tmp_path / "ix").manifest["count"] == len(ids)

    with pytest.raises(XmrError, match="already in the index"):
        index.add([{"id": "d2", "captions": ["a red car"]}])
    index.add([{"id": "d2", "captions": ["a red car"]}], upsert=True)
    assert "d2" in {h.id for h in index.search_texts(["red car"], k=3)[0]}
    assert "d2" not in {h.id for h in index.search_texts(["black cat"], k=10)[0]}

    _, removed = delete_items(tmp_path / "ix", ["d0", "d5", "nope"], missing_ok=True)
    assert removed == ["d0", "d5"]
    kept = [n for n, i in enumerate(ids) if i not in ("d0", "d5")]
    rebuilt = build_bm25_index(
        [texts[n] for n in kept], [ids[n] for n in kept], "bm25:k1=1.2,b=0.7"
    )
    assert _scores(open_index(tmp_path / "ix"), queries) == _scores(rebuilt, queries)
    with pytest.raises(XmrError, match="unknown item id 'nope'"):
        delete_items(tmp_path / "ix", ["nope"])


def test_cli_index_add_data_to_a_bm25_index(tmp_path, capsys):
    from xmr.cli import main

    data = english_beir(tmp_path / "beir")
    index = tmp_path / "ix"
    assert (
        main(["index", "build", "--model", "bm25", "--data", str(data), "--out", str(index)]) == 0
    )
    more = write_beir(tmp_path / "more", {"n1": "A black cat on a red sofa."}, {"q": "cat"}, {})
    capsys.readouterr()
    assert main(["index", "add", str(index), "--data", str(more)]) == 0
    assert "added 1 documents" in capsys.readouterr().out
    assert main(["search", str(index), "black cat", "-k", "3", "--json"]) == 0
    assert "n1" in [r["id"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert main(["index", "add", str(index), "--data", str(more)]) == 2
    assert "(--upsert replaces it)" in capsys.readouterr().err
    assert main(["index", "add", str(index), str(tmp_path)]) == 2
    assert "a BM25 index takes texts" in capsys.readouterr().err
