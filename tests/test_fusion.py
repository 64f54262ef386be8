"""Fused items: the documented formula, caption averaging, weight tuning, and tianchi-format
data evaluated image-only, caption-only and fused on the same queries."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from xmr.data.readers import load_dataset  # noqa: E402
from xmr.errors import XmrError  # noqa: E402
from xmr.eval.fused import evaluate_fused, tune_fusion_weight  # noqa: E402
from xmr.fusion import (  # noqa: E402
    FUSION_MODES,
    ItemEmbeddings,
    encode_items,
    fuse_embeddings,
    normalize,
)
from xmr.models.base import Encoder  # noqa: E402
from xmr.models.preprocess import ImagePreprocess  # noqa: E402

WORDS = ["red", "blue", "circle", "square"]
COLORS = {"red": (220, 10, 10), "blue": (10, 10, 220)}


class WordColorEncoder(Encoder):
    """A hand-made bi-encoder: texts are bags of WORDS, images know only their color. So an
    image cannot tell shapes apart and a caption (the shape) cannot tell colors apart. A real
    :class:`~xmr.models.base.Encoder`, so its images go through the encode pipeline as a
    model's do."""

    spec, backend, embed_dim, context_length = "test:word-color", "test", len(WORDS), 8

    def __init__(self):
        self.model = torch.nn.Module()
        self.model.logit_scale = torch.nn.Parameter(torch.zeros(()))
        self.preprocess = ImagePreprocess(
            mode="resize", size=(8, 8), crop_size=None, mean=None, std=None
        )
        self.device = torch.device("cpu")

    def tokenize(self, texts):
        return {"bags": torch.tensor([[w in t.split() for w in WORDS] for t in texts]).float()}

    def text_features(self, tokens):
        return tokens["bags"]

    def image_features(self, pixel_values):
        r, b = pixel_values[:, 0].mean((1, 2)), pixel_values[:, 2].mean((1, 2))
        zero = torch.zeros_like(r)
        return torch.stack([(r > b).float(), (b > r).float(), zero, zero], dim=1)


def write_tianchi(root, split="valid"):
    """Four items (color x shape) as files named by id, captions naming only the shape, and
    one query per item naming both."""
    images = root / f"{split}_images"
    images.mkdir(parents=True)
    items = {}
    for n, (color, shape) in enumerate(
        [("red", "circle"), ("red", "square"), ("blue", "circle"), ("blue", "square")]
    ):
        iid = str(1000 + n)
        Image.new("RGB", (12, 12), COLORS[color]).save(images / f"{iid}.png")
        items[iid] = (color, shape)
    name = {
        "valid": "MR_valid_queries_with_captions_standard_simple.jsonl",
        "train": "MR_train_queries_with_captions.json",
    }[split]
    with open(root / name, "w") as fh:
        for n, (iid, (color, shape)) in enumerate(items.items()):
            record = {"query_id": n, "query_text": f"{color} {shape}", "item_ids": {iid: shape}}
            fh.write(json.dumps(record) + "\n")
    return root


def test_fused_embedding_and_score_follow_the_documented_formula():
    rng = np.random.default_rng(0)
    img = normalize(rng.normal(size=(6, 8)))
    cap = normalize(rng.normal(size=(6, 8)))
    q = normalize(rng.normal(size=(3, 8)))
    w = 0.3
    fused = fuse_embeddings(img, cap, w)
    mix = w * img + (1 - w) * cap
    np.testing.assert_allclose(fused, mix / np.linalg.norm(mix, axis=1, keepdims=True), atol=1e-6)
    # q . fused = (w q.img + (1 - w) q.cap) / ||w img + (1 - w) cap||
    expected = (w * q @ img.T + (1 - w) * q @ cap.T) / np.linalg.norm(mix, axis=1)
    np.testing.assert_allclose(q @ fused.T, expected, atol=1e-6)
    np.testing.assert_allclose(fuse_embeddings(img, cap, 1.0), img, atol=1e-6)
    np.testing.assert_allclose(fuse_embeddings(img, cap, 0.0), cap, atol=1e-6)
    # A missing side: the other one alone.
    img[2] = np.nan
    cap[4] = np.nan
    fused = fuse_embeddings(img, cap, w)
    np.testing.assert_allclose(fused[2], cap[2])
    np.testing.assert_allclose(fused[4], img[4])
    with pytest.raises(XmrError, match="in \\[0, 1\\]"):
        fuse_embeddings(img, cap, 1.5)
    with pytest.raises(XmrError, match="unknown fusion mode"):
        ItemEmbeddings(["a"], img[:1], cap[:1]).mode("both")


def test_several_captions_are_averaged(tmp_path):
    from xmr.data.dataset import Item

    enc = WordColorEncoder()
    items = [Item("a", None, ["red", "circle"]), Item("b", None, ["square"]), Item("c", None, [])]
    emb = encode_items(enc, items)
    np.testing.assert_allclose(emb.caption[0], normalize(np.array([[1, 0, 1, 0.0]]))[0], atol=1e-6)
    np.testing.assert_allclose(emb.caption[1], [0, 0, 0, 1.0])
    assert np.isnan(emb.caption[2]).all() and np.isnan(emb.image).all()


def test_tianchi_data_evaluates_in_all_three_modes(tmp_path):
    root = write_tianchi(tmp_path / "tianchi")
    split = load_dataset(root).split("valid")
    assert all(item.captions and item.image is not None for item in split.items.values())
    out = evaluate_fused(WordColorEncoder(), split, weight=0.5)
    for mode in FUSION_MODES:
        assert out[f"{mode}/t2i/n_queries"] == 4
    # Each side alone ties the right item with a wrong one (first by id wins): half right.
    assert out["image/t2i/R@1"] == pytest.approx(0.5)
    assert out["caption/t2i/R@1"] == pytest.approx(0.5)
    # Fused, every query finds its item first: what fusion buys, measured.
    assert out["fused/t2i/R@1"] == pytest.approx(1.0)
    assert out["fused/weight"] == 0.5
    keys = list(out)
    assert keys.index("image/t2i/R@1") < keys.index("caption/t2i/R@1") < keys.index("fused/t2i/R@1")


def test_weight_is_tuned_on_a_validation_split(tmp_path):
    valid = load_dataset(write_tianchi(tmp_path / "v")).split("valid")
    enc = WordColorEncoder()
    qids = list(valid.queries)
    items = encode_items(enc, valid.items)
    query = enc.encode_texts([valid.queries[q].text for q in qids])
    best, curve = tune_fusion_weight(query, qids, items, valid.relevance)
    # MeanRecall = mean(R@1, R@5, R@10): each side alone gets R@1 = 0.5 and finds all by 5.
    assert curve[0.0] == pytest.approx((0.5 + 1 + 1) / 3)
    assert curve[1.0] == pytest.approx((0.5 + 1 + 1) / 3)
    assert curve[1.0] < curve[best] and curve[0.0] < curve[best]
    assert 0.0 < best < 1.0
    out = evaluate_fused(enc, valid, tune_split=valid, grid=(0.0, 0.5, 1.0), metric="R@1")
    assert out["fused/weight"] == 0.5
    assert out["fused/tuned/w=0/R@1"] == pytest.approx(0.5)
    assert out["fused/tuned/w=0.5/R@1"] == pytest.approx(1.0)
    with pytest.raises(XmrError, match="unknown metric"):
        tune_fusion_weight(query, qids, items, valid.relevance, metric="R@2")


def test_real_bi_encoder_on_tianchi_data(tmp_path):
    pytest.importorskip("transformers")
    from xmr.models import create_encoder
    from xmr.models.tiny import create_tiny_clip

    clip = create_tiny_clip(
        tmp_path / "clip",
        texts=["red circle", "blue square"],
        embed_dim=16,
        image_size=32,
        vision_width=32,
        vision_layers=1,
        text_width=32,
        text_layers=1,
        heads=2,
    )
    split = load_dataset(write_tianchi(tmp_path / "t")).split("valid")
    enc = create_encoder(clip, device="cpu")
    out = evaluate_fused(enc, split, weight=0.7)
    for mode in FUSION_MODES:
        assert 0.0 <= out[f"{mode}/t2i/R@1"] <= out[f"{mode}/t2i/R@10"] == 1.0
    # The fused scores the evaluation ranked by are the formula's.
    items = encode_items(enc, split.items)
    q = enc.encode_texts(["red circle"])[0]
    mix = 0.7 * items.image + 0.3 * items.caption
    expected = (0.7 * items.image @ q + 0.3 * items.caption @ q) / np.linalg.norm(mix, axis=1)
    np.testing.assert_allclose(items.mode("fused", 0.7) @ q, expected, atol=1e-5)


def test_items_are_embedded_by_the_encode_pipeline(tmp_path, tiny_clip):
    """encode_items embeds images as ``xmr encode`` does: the encoder's own vectors, with any
    number of decoding workers, and an undecodable image is reported instead of stopping the
    run (its item's fused vector is its caption's)."""
    pytest.importorskip("transformers")
    from xmr.data.dataset import Item
    from xmr.data.images import ImageRef
    from xmr.models import create_encoder

    enc = create_encoder(f"hf:{tiny_clip}", device="cpu")
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    items = [
        Item("a", ImageRef(path=str(good)), ["a red thing"]),
        Item("b", ImageRef(path=str(bad)), ["a broken image"]),
        Item("c", None, ["only a text"]),
    ]
    emb = encode_items(enc, items)
    own = enc.encode_images([ImageRef(path=str(good))])[0]
    np.testing.assert_allclose(emb.image[0], own, atol=1e-6)
    assert emb.failed == ["b"] and np.isnan(emb.image[1:]).all()
    np.testing.assert_allclose(emb.caption[1], enc.encode_texts(["a broken image"])[0], atol=1e-6)
    np.testing.assert_allclose(emb.mode("fused", 0.5)[1], emb.caption[1])
    in_workers = encode_items(enc, items, workers=1)
    np.testing.assert_allclose(in_workers.image, emb.image, atol=1e-6)
    assert in_workers.failed == ["b"]


def test_fused_index_through_encode_index_search(tmp_path, capsys, tiny_clip):
    """xmr encode (images, captions, texts) -> xmr index build --fused W -> xmr search: the
    search scores are the documented fused scores."""
    pytest.importorskip("transformers")
    pytest.importorskip("faiss")
    from xmr.cli import main
    from xmr.encode import load_embeddings
    from xmr.search import Searcher
    from xmr.workflows.index_build import add_embeddings

    data = write_tianchi(tmp_path / "tianchi")
    model = f"hf:{tiny_clip}"
    emb, index = tmp_path / "emb", tmp_path / "index"
    encode = ["encode", "--model", model, "--data", str(data), "--out", str(emb), "--device", "cpu"]
    assert main([*encode, "--kinds", "images,captions,texts", "--workers", "0"]) == 0
    assert main(["index", "build", str(emb), "--out", str(index), "--fused", "0.25"]) == 0
    capsys.readouterr()
    assert main(["search", str(index), "red circle", "-k", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]

    img = {i: v for i, v in zip(*_ids_vectors(load_embeddings(emb, "images")), strict=True)}
    cap = {i: v for i, v in zip(*_ids_vectors(load_embeddings(emb, "captions")), strict=True)}
    searcher = Searcher.from_index_dir(index)
    q = searcher.encoder.encode_texts(["red circle"])[0]
    for r in results:
        mix = 0.25 * img[r["id"]] + 0.75 * cap[r["id"]]
        expected = (0.25 * q @ img[r["id"]] + 0.75 * q @ cap[r["id"]]) / np.linalg.norm(mix)
        assert r["score"] == pytest.approx(float(expected), abs=1e-5)
    assert len(results) == 4 and results[0]["captions"]
    assert searcher.index.manifest["source"]["kind"] == "fused"
    assert searcher.index.manifest["source"]["fusion_weight"] == 0.25
    # Adding more items keeps the index's fusion (same weight, same formula).
    more = write_tianchi(tmp_path / "more")
    for f in (more / "valid_images").iterdir():
        f.rename(f.with_name(f"9{f.name}"))
    text = (more / "MR_valid_queries_with_captions_standard_simple.jsonl").read_text()
    (more / "MR_valid_queries_with_captions_standard_simple.jsonl").write_text(
        text.replace('"1', '"91')
    )
    emb2 = tmp_path / "emb2"
    encode2 = ["encode", "--model", model, "--data", str(more), "--out", str(emb2)]
    assert main([*encode2, "--kinds", "images,captions", "--workers", "0", "--device", "cpu"]) == 0
    _, added = add_embeddings(index, emb2)
    assert added == 4
    top = Searcher.from_index_dir(index).search_text("red circle", k=8)
    by_id = {r.id: r.score for r in top}
    assert by_id["91000"] == pytest.approx(by_id["1000"], abs=1e-5)  # same image and caption


def _ids_vectors(emb):
    return emb.ids, emb.vectors


def test_evaluate_fusion_options_tune_on_the_train_split(tmp_path):
    from xmr.workflows.evaluate import fused_metrics

    root = write_tianchi(tmp_path / "t")
    write_tianchi(root, "train")
    dataset = load_dataset(root)
    enc, valid = WordColorEncoder(), dataset.split("valid")
    fixed = fused_metrics(enc, dataset, valid, "0.5")
    assert fixed["fused/t2i/R@1"] == 1.0 and fixed["fused/weight"] == 0.5
    warnings: list[str] = []
    tuned = fused_metrics(enc, dataset, valid, "tune", tune_metric="R@1", warnings=warnings)
    assert 0.0 < tuned["fused/weight"] < 1.0 and tuned["fused/t2i/R@1"] == 1.0
    assert tuned["fused/tuned/w=0/R@1"] == pytest.approx(0.5)  # tuned on train: same data here
    assert warnings == []  # train is not the evaluated split
    fused_metrics(enc, dataset, valid, "tune", tune_split="valid", warnings=warnings)
    assert len(warnings) == 1 and "optimistic" in warnings[0]
    with pytest.raises(XmrError, match="weight in"):
        fused_metrics(enc, dataset, valid, "half")
