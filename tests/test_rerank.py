"""Two-stage reranking: only the first-stage top-K moves, everything after it keeps its place,
the documented score formulas hold, and a cross-encoder fixes a wrong first-stage order."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from xmr.errors import XmrError  # noqa: E402
from xmr.models.cross_encoders import CrossEncoder  # noqa: E402
from xmr.rerank import combine_scores, rerank, rerank_many  # noqa: E402

COLORS = {"red": (230, 20, 20), "green": (20, 200, 30), "blue": (10, 20, 240)}


class ColorMatcher(CrossEncoder):
    """A hand-made cross-encoder: "match" when the image's dominant channel is the color the text
    names. It records every pair it is asked about."""

    spec = "test:color"

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def logits(self, images, texts, batch_size=32):
        out = np.zeros((len(texts), 2), dtype=np.float32)
        for i, (im, text) in enumerate(zip(images, texts, strict=True)):
            color = ["red", "green", "blue"][int(np.argmax(np.asarray(im).reshape(-1, 3).mean(0)))]
            self.seen.append((color, text))
            out[i, 1] = 4.0 if color in text.split() else -4.0
        return out


def _catalog():
    # Ten items; ids say their color. The first stage ranks a wrong color first.
    colors = ["green", "blue", "red", "green", "blue", "red", "green", "blue", "red", "green"]
    images = {f"{c}{i}": Image.new("RGB", (8, 8), COLORS[c]) for i, c in enumerate(colors)}
    candidates = [{"id": iid, "score": 0.9 - 0.05 * r} for r, iid in enumerate(images)]
    return images, candidates


def test_cross_encoder_fixes_the_order_within_top_k():
    images, candidates = _catalog()
    ids = [c["id"] for c in candidates]
    assert ids[0] == "green0"  # the first stage is wrong for "a red car"
    ce = ColorMatcher()
    out = rerank("a red car", candidates, ce, lookup=images, k=4, mode="itm")
    out_ids = [r["id"] for r in out]
    assert out_ids[0] == "red2"  # the only red item in the top 4 comes first
    # The reranked block is a permutation of the top 4, non-matches in first-stage order.
    assert sorted(out_ids[:4]) == sorted(ids[:4])
    assert out_ids[:4] == ["red2", "green0", "blue1", "green3"]
    # Everything after the top 4 keeps its order, even the red items the first stage missed.
    assert out_ids[4:] == ids[4:]
    assert len(ce.seen) == 4  # only the top K were rescored
    assert [r["reranked"] for r in out] == [True] * 4 + [False] * 6
    assert all("match_prob" in r for r in out[:4]) and "match_prob" not in out[4]


def test_scores_follow_the_documented_formulas():
    images, candidates = _catalog()
    ce = ColorMatcher()
    p_match, p_other = 1 / (1 + np.exp(-4.0)), 1 / (1 + np.exp(4.0))
    out = rerank("red", candidates, ce, lookup=images, k=3, mode="itm")
    assert out[0]["score"] == pytest.approx(p_match)
    assert out[1]["score"] == pytest.approx(p_other)
    out = rerank("red", candidates, ce, lookup=images, k=3, mode="itm+sim", alpha=0.5)
    by_id = {r["id"]: r for r in out}
    assert by_id["red2"]["score"] == pytest.approx(4.0 + 0.5 * 0.8)
    assert by_id["green0"]["score"] == pytest.approx(-4.0 + 0.5 * 0.9)
    for r in out:
        orig = next(c["score"] for c in candidates if c["id"] == r["id"])
        assert r["first_stage_score"] == pytest.approx(orig)
    # The ranking score never increases down the list, so re-sorting by it changes nothing.
    scores = [r["score"] for r in out]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)
    # Outside the block, the shift is uniform: gaps between first-stage scores are kept.
    np.testing.assert_allclose(np.diff(scores[3:]), np.diff([c["score"] for c in candidates[3:]]))
    logits = np.array([[0.0, 1.0], [2.0, -1.0]])
    np.testing.assert_allclose(
        combine_scores(logits, np.array([0.3, 0.7]), "itm+sim", 2.0), [1.6, 0.4]
    )


def test_itm_mode_lets_a_low_similarity_match_win_and_itm_sim_can_keep_order():
    images = {
        "a": Image.new("RGB", (4, 4), COLORS["blue"]),
        "b": Image.new("RGB", (4, 4), COLORS["red"]),
    }
    cands = [{"id": "a", "score": 9.0}, {"id": "b", "score": 0.0}]
    assert [r["id"] for r in rerank("red", cands, ColorMatcher(), lookup=images, k=2)] == ["b", "a"]
    # With a first stage this confident, ITM + similarity keeps "a" first: the modes differ.
    out = rerank("red", cands, ColorMatcher(), lookup=images, k=2, mode="itm+sim")
    assert [r["id"] for r in out] == ["a", "b"]


def test_image_query_reranks_texts_and_many_queries_batch_together():
    texts = {"t0": "green grass", "t1": "blue sky", "t2": "red apple", "t3": "red car"}
    cands = [{"id": t, "score": 1.0 - 0.1 * i} for i, t in enumerate(texts)]
    red = Image.new("RGB", (8, 8), COLORS["red"])
    blue = Image.new("RGB", (8, 8), COLORS["blue"])
    ce = ColorMatcher()
    many = rerank_many([red, blue], [cands, cands], ce, lookup=texts, k=3, max_pairs_in_memory=4)
    assert [r["id"] for r in many[0]] == ["t2", "t0", "t1", "t3"]
    assert [r["id"] for r in many[1]] == ["t1", "t0", "t2", "t3"]
    single = rerank(blue, cands, ColorMatcher(), lookup=texts.get, k=3)
    assert [r["id"] for r in single] == [r["id"] for r in many[1]]


def test_edge_cases():
    images, candidates = _catalog()
    ce = ColorMatcher()
    assert rerank("red", [], ce, lookup=images) == []
    out = rerank("red", candidates[:2], ce, lookup=images, k=50)  # k beyond the list
    assert len(out) == 2 and all(r["reranked"] for r in out)
    tuples = rerank("red", [(c["id"], c["score"]) for c in candidates], ce, lookup=images, k=3)
    assert tuples[0]["id"] == "red2"
    with pytest.raises(XmrError, match="mode"):
        rerank("red", candidates, ce, lookup=images, mode="sum")
    with pytest.raises(XmrError, match="k .how many candidates to rescore. must be at least 1"):
        rerank("red", candidates, ce, lookup=images, k=0)
    with pytest.raises(XmrError, match="no image or text"):
        rerank("red", [{"id": "nope", "score": 1.0}], ce, lookup=images)


def test_real_blip_cross_encoder_reranks_end_to_end(tmp_path):
    """Through the transformers BLIP path: set the ITM head so that one known pair scores high
    and check that rerank moves it from third place to first."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from xmr.models.blip_itm import create_tiny_cross_encoder
    from xmr.models.cross_encoders import create_cross_encoder

    ce = create_cross_encoder(
        str(create_tiny_cross_encoder(tmp_path / "blip", "blip")), device="cpu"
    )
    rng = np.random.default_rng(0)
    images = {
        f"img{i}": Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        for i in range(5)
    }
    query = "a small wooden boat"
    # CLS states of the ITM head for (query, image i), captured from the model's own forward.
    captured = []
    hook = ce.model.itm_head.register_forward_hook(lambda m, i, o: captured.append(i[0].clone()))
    ce.logits(list(images.values())[:3], [query] * 3)
    hook.remove()
    hidden = captured[0].double().numpy()
    # Solve w.h = +1 for img2, -1 for img0, -2 for img1: the known pair becomes the match.
    w = np.linalg.lstsq(hidden, np.array([-1.0, -2.0, 1.0]), rcond=None)[0]
    with torch.no_grad():
        ce.model.itm_head.weight.copy_(torch.tensor(np.stack([-w, w]), dtype=torch.float32))
        ce.model.itm_head.bias.zero_()
    cands = [{"id": f"img{i}", "score": 0.5 - 0.1 * i} for i in range(5)]
    out = rerank(query, cands, ce, lookup=images, k=3)
    assert [r["id"] for r in out] == ["img2", "img0", "img1", "img3", "img4"]
    assert out[0]["match_prob"] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-4)
    assert out[1]["match_prob"] == pytest.approx(1 / (1 + np.exp(2.0)), abs=1e-4)


# --- on top of a Searcher (index built by the encode/index pipeline) ---------------------------


def build_color_index(root, model_dir, n: int = 8):
    """Index ``n`` solid red/green/blue images (captions "a <color> thing") under ``root`` with
    the tiny random CLIP at ``model_dir``; returns the index directory. Shared with the service's
    rerank tests."""
    from xmr.data.dataset import Item, Split
    from xmr.data.images import ImageRef
    from xmr.encode import encode_split
    from xmr.models import create_encoder
    from xmr.workflows.index_build import index_embeddings

    (root / "images").mkdir()
    items = {}
    for i in range(n):
        color = ["red", "green", "blue"][i % 3]
        path = root / "images" / f"{color}{i}.png"
        Image.new("RGB", (24, 24), COLORS[color]).save(path)
        items[f"{color}{i}"] = Item(f"{color}{i}", ImageRef(path=str(path)), [f"a {color} thing"])
    encoder = create_encoder(f"hf:{model_dir}", device="cpu")
    encode_split(encoder, Split("test", items), root / "emb", batch_size=4, progress=False)
    index_embeddings(root / "emb", root / "index")
    return root / "index"


@pytest.fixture(scope="module")
def color_index(tmp_path_factory, tiny_clip):
    """An index over eight solid-color images (tiny random CLIP: its ranking is arbitrary)."""
    pytest.importorskip("transformers")
    pytest.importorskip("faiss")
    return build_color_index(tmp_path_factory.mktemp("rerank_index"), tiny_clip)


def test_search_reranked_moves_only_the_top_k(color_index):
    from xmr.search import RerankedResult, Searcher, search_reranked

    searcher = Searcher.from_index_dir(color_index)
    plain = searcher.search_text("red", k=8)
    out = search_reranked(searcher, ["red"], ColorMatcher(), k=8, rerank_k=5)[0]
    assert all(isinstance(r, RerankedResult) for r in out)
    top = [r.id for r in plain[:5]]
    want = [i for i in top if i.startswith("red")] + [i for i in top if not i.startswith("red")]
    assert [r.id for r in out[:5]] == want
    assert [r.id for r in out[5:]] == [r.id for r in plain[5:]]
    assert [r.rank for r in out] == list(range(1, 9))
    assert [r.first_stage_rank for r in out[5:]] == [6, 7, 8]
    assert {r.id: r.first_stage_score for r in out} == pytest.approx({r.id: r.score for r in plain})
    assert out[0].captions and out[0].image["path"].endswith(".png")
    # Fewer results than the reranking depth: the first stage still fetched rerank_k.
    assert len(search_reranked(searcher, ["red"], ColorMatcher(), k=2, rerank_k=8)[0]) == 2
    # An image query is reranked against the item captions.
    query = Image.new("RGB", (24, 24), COLORS["blue"])
    by_image = search_reranked(searcher, [query], ColorMatcher(), k=8, rerank_k=8)[0]
    assert sorted(r.id for r in by_image[:2]) == ["blue2", "blue5"]  # the only blue items


def test_cli_search_with_rerank(color_index, tmp_path, capsys):
    import json

    from xmr.cli import main
    from xmr.models.blip_itm import create_tiny_cross_encoder
    from xmr.models.cross_encoders import create_cross_encoder

    blip = create_tiny_cross_encoder(tmp_path / "blip", "blip")
    base = ["search", str(color_index), "a red thing", "-k", "6", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)["results"]
    assert main([*base, "--rerank", str(blip), "--rerank-k", "4"]) == 0
    out = json.loads(capsys.readouterr().out)["results"]
    assert sorted(r["id"] for r in out[:4]) == sorted(r["id"] for r in plain[:4])
    assert [r["id"] for r in out[4:]] == [r["id"] for r in plain[4:]]
    probs = [r["match_prob"] for r in out[:4]]
    assert probs == sorted(probs, reverse=True) and out[4]["match_prob"] is None
    ce = create_cross_encoder(str(blip), device="cpu")
    image = Image.open(out[0]["image"]["path"]).convert("RGB")
    assert probs[0] == pytest.approx(float(ce.score([image], ["a red thing"])[0]), abs=1e-5)
    assert main([*base, "--rerank", str(blip), "--rerank-mode", "itm+sim"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["reranked"] is True


def test_evaluate_reranked_reports_both_stages_on_the_same_queries(tmp_path, tiny_clip):
    pytest.importorskip("transformers")
    from xmr.data.dataset import Item, Query, Split
    from xmr.data.images import ImageRef
    from xmr.eval.evaluate import evaluate_split
    from xmr.eval.reranked import evaluate_reranked
    from xmr.models import create_encoder

    items, queries, relevance = {}, {}, {}
    for i in range(9):
        color = ["red", "green", "blue"][i % 3]
        path = tmp_path / f"{color}{i}.png"
        Image.new("RGB", (16, 16), COLORS[color]).save(path)
        items[f"{color}{i}"] = Item(f"{color}{i}", ImageRef(path=str(path)), [color])
    for color in COLORS:
        queries[color] = Query(color, f"a {color} thing")
        relevance[color] = {i for i in items if i.startswith(color)}
    queries["none"] = Query("none", "nothing relevant")  # skipped by both stages
    split = Split("test", items, queries, relevance)
    enc = create_encoder(f"hf:{tiny_clip}", device="cpu")
    text_emb = enc.encode_texts([q.text for q in queries.values()])
    image_emb = enc.encode_images([it.image for it in items.values()])

    out = evaluate_reranked(
        split, text_emb, image_emb, ColorMatcher(), rerank_k=9, directions=("t2i", "i2t"), k=5
    )
    plain = evaluate_split(split, text_emb, image_emb, k=5, ks=(1, 5))
    for key in ("t2i/R@1", "t2i/R@5", "t2i/mAP@5", "i2t/R@1", "t2i/n_skipped"):
        assert out[f"first_stage/{key}"] == pytest.approx(plain[key])
    # Reranking the whole gallery with a perfect cross-encoder: every stage-2 list is right.
    assert out["t2i/R@1"] == 1.0 and out["t2i/mAP@5"] == 1.0 and out["i2t/R@1"] == 1.0
    assert out["t2i/n_queries"] == 3 and out["t2i/n_skipped"] == 1


def test_evaluate_reranked_gives_two_stage_metrics(tmp_path):
    pytest.importorskip("transformers")
    from xmr.data.dataset import Item, Query, Split
    from xmr.data.images import ImageRef
    from xmr.eval.reranked import evaluate_reranked
    from xmr.models.blip_itm import create_tiny_cross_encoder
    from xmr.models.cross_encoders import create_cross_encoder

    blip = create_tiny_cross_encoder(tmp_path / "blip", "blip")
    items = {}
    for color in COLORS:
        Image.new("RGB", (8, 8), COLORS[color]).save(tmp_path / f"{color}.png")
        items[color] = Item(color, ImageRef(path=str(tmp_path / f"{color}.png")))
    queries = {c: Query(c, f"a {c} thing") for c in COLORS}
    split = Split("test", items, queries, {c: {c} for c in COLORS})
    emb = np.eye(3, dtype=np.float32)
    ce = create_cross_encoder(str(blip), device="cpu")
    out = evaluate_reranked(split, emb, emb, ce, rerank_k=3, mode="itm+sim", k=5)
    assert out["first_stage/t2i/R@1"] == 1.0  # identity embeddings: the first stage is perfect
    assert 0.0 <= out["t2i/R@1"] <= 1.0 and out["t2i/n_queries"] == 3
