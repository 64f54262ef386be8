"""Pair scores: ``xmr.pipeline("image-text-retrieval")`` and ``xmr similarity``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

import xmr  # noqa: E402
from xmr.cli import main  # noqa: E402
from xmr.data.images import ImageRef  # noqa: E402
from xmr.errors import XmrError  # noqa: E402

TEXTS = ["a red square", "a blue circle", "green grass", "a red square"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from xmr.models.blip_itm import create_tiny_cross_encoder
    from xmr.models.tiny import create_tiny_clip

    root = tmp_path_factory.mktemp("sim")
    clip = create_tiny_clip(
        root / "clip",
        texts=TEXTS,
        embed_dim=16,
        image_size=32,
        vision_width=32,
        vision_layers=1,
        text_width=32,
        text_layers=1,
        heads=2,
    )
    blip = create_tiny_cross_encoder(root / "blip", "blip")
    return str(clip), str(blip)


@pytest.fixture(scope="module")
def tianchi(tmp_path_factory):
    """A small tianchi-format valid split with image files named by id."""
    root = tmp_path_factory.mktemp("tianchi")
    (root / "valid_images").mkdir()
    rng = np.random.default_rng(3)
    for iid in ("101", "102"):
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "valid_images" / f"{iid}.png")
    record = {
        "query_id": 1,
        "query_text": "a red square",
        "item_ids": {"101": "red", "102": "blue"},
    }
    (root / "MR_valid_queries_with_captions_standard_simple.jsonl").write_text(
        json.dumps(record) + "\n"
    )
    return root


def _png(path, color=(200, 30, 30)):
    Image.new("RGB", (20, 28), color).save(path)
    return path


def test_similarity_is_the_bi_encoder_cosine(models, tmp_path):
    from xmr.models import create_encoder

    clip, _ = models
    image = _png(tmp_path / "x.png")
    scorer = xmr.pipeline("image-text-retrieval", model=clip, device="cpu")
    out = scorer({"image": str(image), "text": TEXTS})
    enc = create_encoder(clip, device="cpu")
    img_emb = enc.encode_images([Image.open(image).convert("RGB")])
    txt_emb = enc.encode_texts(TEXTS)
    expected = (txt_emb @ img_emb[0]).tolist()
    assert [r["text"] for r in out] == TEXTS
    np.testing.assert_allclose([r["similarity"] for r in out], expected, atol=1e-5)
    assert out[0]["similarity"] == pytest.approx(out[3]["similarity"])  # repeated text
    assert len({round(r["similarity"], 6) for r in out[:3]}) == 3
    assert all("match_prob" not in r for r in out)
    one = scorer({"image": str(image), "question": "green grass"})  # mPLUG's key
    assert one["similarity"] == pytest.approx(expected[2], abs=1e-5)


def test_empty_and_undecodable_texts_are_errors(models, tmp_path):
    """An empty text used to get a similarity like any other."""
    image = str(_png(tmp_path / "x.png"))
    scorer = xmr.pipeline("image-text-retrieval", model=models[0], device="cpu")
    with pytest.raises(XmrError, match="input 0: text 2 is empty"):
        scorer({"image": image, "text": ["a red square", "  "]})
    with pytest.raises(XmrError, match="input 0: text is empty"):
        scorer({"image": image, "text": ""})
    with pytest.raises(XmrError, match="not valid UTF-8"):
        scorer({"image": image, "text": b"\xff".decode("utf-8", "surrogateescape")})
    with pytest.raises(XmrError, match="must be a string"):
        scorer({"image": image, "text": ["ok", 5]})


def test_every_image_source_gives_the_same_score(models, tmp_path, tianchi):
    clip, _ = models
    path = tianchi / "valid_images" / "101.png"
    scorer = xmr.pipeline("image-text-retrieval", model=clip, dataset=tianchi, device="cpu")
    sources = [
        str(path),
        path.read_bytes(),
        Image.open(path),
        ImageRef(path=str(path)),
        "101",  # an item id of the data set
    ]
    scores = [scorer({"image": s, "text": "a red square"})["similarity"] for s in sources]
    np.testing.assert_allclose(scores, scores[0], atol=1e-6)
    other = scorer({"image": "102", "text": "a red square"})["similarity"]
    assert other != pytest.approx(scores[0], abs=1e-6)
    with pytest.raises(XmrError, match="not a file or an item id"):
        scorer({"image": "999", "text": "x"})
    with pytest.raises(XmrError, match="no 'text'"):
        scorer({"image": str(path)})
    batch = scorer([{"image": "101", "text": "a"}, {"image": "102", "text": ["b", "c"]}])
    assert [r["text"] for r in batch] == ["a", "b", "c"]


def test_cross_encoder_adds_its_match_probability(models, tmp_path):
    from xmr.models.cross_encoders import create_cross_encoder

    clip, blip = models
    image = _png(tmp_path / "y.png", (20, 30, 220))
    scorer = xmr.pipeline("image-text-retrieval", model=clip, cross_encoder=blip, device="cpu")
    out = scorer({"image": str(image), "text": TEXTS[:3]})
    ce = create_cross_encoder(blip, device="cpu")
    expected = ce.score([Image.open(image).convert("RGB")] * 3, TEXTS[:3])
    np.testing.assert_allclose([r["match_prob"] for r in out], expected, atol=1e-6)


def test_cli_json_in_the_order_given(models, tmp_path, capsys):
    clip, blip = models
    image = _png(tmp_path / "z.png")
    texts = ["green grass", "a red square", "a blue circle"]
    assert (
        main(["similarity", "--model", clip, "--device", "cpu", str(image), *texts, "--json"]) == 0
    )
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert [s["text"] for s in scores] == texts
    api = xmr.pipeline("image-text-retrieval", model=clip, device="cpu")(
        {"image": str(image), "text": texts}
    )
    np.testing.assert_allclose(
        [s["similarity"] for s in scores], [r["similarity"] for r in api], atol=1e-6
    )

    args = ["similarity", "--model", clip, "--cross-encoder", blip, "--device", "cpu"]
    assert main([*args, str(image), "a red square"]) == 0
    text_out = capsys.readouterr().out
    assert "match_prob" in text_out and "a red square" in text_out
    assert main([*args, "--json", str(image), "a red square"]) == 0
    assert set(json.loads(capsys.readouterr().out)["scores"][0]) == {
        "text",
        "similarity",
        "match_prob",
    }


def test_cli_item_from_a_data_set(models, tianchi, capsys):
    clip, _ = models
    base = ["similarity", "--model", clip, "--device", "cpu", "--json", "--data", str(tianchi)]
    assert main([*base, "--item", "102", "a red square", "blue"]) == 0
    by_item = json.loads(capsys.readouterr().out)["scores"]
    assert [s["text"] for s in by_item] == ["a red square", "blue"]
    path = str(tianchi / "valid_images" / "102.png")
    assert (
        main(
            [
                "similarity",
                "--model",
                clip,
                "--device",
                "cpu",
                "--json",
                path,
                "a red square",
                "blue",
            ]
        )
        == 0
    )
    by_path = json.loads(capsys.readouterr().out)["scores"]
    np.testing.assert_allclose(
        [s["similarity"] for s in by_item], [s["similarity"] for s in by_path], atol=1e-6
    )
    assert main([*base, "--item", "nope", "x"]) == 2
    assert "no item 'nope'" in capsys.readouterr().err
    assert main(["similarity", "--model", clip, "--item", "1", "x"]) == 2


def test_image_bytes_object(models):
    clip, _ = models
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="JPEG")
    out = xmr.pipeline(model=clip, device="cpu")({"image": buf.getvalue(), "text": "x"})
    assert -1.0 <= out["similarity"] <= 1.0
    with pytest.raises(XmrError, match="unknown pipeline task"):
        xmr.pipeline("summarization", model=clip)


def test_pair_scores_agree_with_the_searchers_scores(tmp_path, tiny_clip):
    """The pair score of (item image, query) is the score search gives that item for the query."""
    pytest.importorskip("faiss")
    from builders import make_images, make_split
    from xmr.encode import encode_split
    from xmr.models import create_encoder
    from xmr.search import Searcher
    from xmr.workflows.index_build import index_embeddings

    model = f"hf:{tiny_clip}"
    split = make_split(make_images(tmp_path / "images", n=6))
    encode_split(create_encoder(model, device="cpu"), split, tmp_path / "emb", progress=False)
    index_embeddings(tmp_path / "emb", tmp_path / "index")
    searcher = Searcher.from_index_dir(tmp_path / "index")
    query = "a white car number 3"
    results = searcher.search_text(query, k=6)
    scorer = xmr.pipeline(
        "image-text-retrieval", model=model, dataset=_dataset(split), device="cpu"
    )
    pairs = scorer([{"image": r.id, "text": query} for r in results])
    np.testing.assert_allclose(
        [p["similarity"] for p in pairs], [r.score for r in results], atol=1e-5
    )


def _dataset(split):
    from pathlib import Path

    from xmr.data.dataset import RetrievalDataset

    return RetrievalDataset("memory", Path("."), {split.name: split})
