"""BLIP-2 multimodal items (seed 001's text -> image+caption): the Q-Former over image and
caption equals transformers' own computation, and ``evaluate --fused blip2`` puts the
multimodal items beside image-only, caption-only and weighted ones."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from xmr.errors import XmrError  # noqa: E402
from xmr.fusion import multimodal_embeddings  # noqa: E402
from xmr.models import create_encoder  # noqa: E402
from xmr.models.tiny import create_tiny_blip  # noqa: E402

WORDS = ["red", "blue", "circle", "square", "green", "cushion"]


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    return create_tiny_blip(tmp_path_factory.mktemp("mm") / "blip2", "blip2", texts=WORDS, seed=5)


def _images():
    rng = np.random.default_rng(2)
    return [
        Image.fromarray(rng.integers(0, 255, (30 + 4 * i, 34, 3), dtype=np.uint8)) for i in range(3)
    ]


def test_multimodal_item_equals_the_qformer_computed_with_transformers(blip2_dir):
    images, captions = _images(), ["red circle", "a green cushion", "blue"]
    encoder = create_encoder(f"hf:{blip2_dir}", device="cpu")
    ours = encoder.encode_items(images, captions, batch_size=2)
    assert ours.shape == (3, 4, encoder.embed_dim) and ours.dtype == np.float32
    # By hand with transformers: its ITM forward runs the Q-Former over query tokens + caption
    # tokens with the image (LAVIS's multimodal mode); its first K positions are LAVIS's
    # multimodal_embeds, projected here with the ITC image projection and normalised.
    model = transformers.Blip2ForImageTextRetrieval.from_pretrained(blip2_dir).eval()
    processor = transformers.AutoProcessor.from_pretrained(blip2_dir)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = processor.tokenizer(captions, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(
            pixel_values=pixels,
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            use_image_text_matching_head=True,
        )
        queries = out.text_model_output.last_hidden_state[:, : model.config.num_query_tokens]
        reference = torch.nn.functional.normalize(model.vision_projection(queries), dim=-1)
    assert np.abs(ours - reference.numpy()).max() < 1e-5
    # The caption matters: the same image with another caption is another item.
    other = encoder.encode_items(images[:1], ["blue square"])
    assert np.abs(other[0] - ours[0]).max() > 1e-4
    # ...and differs from the image alone (the Q-Former without text).
    assert np.abs(encoder.encode_images(images[:1])[0] - ours[0]).max() > 1e-4
    with pytest.raises(XmrError, match="2 images but 1 captions"):
        encoder.encode_items(images[:2], ["x"])


def test_items_lacking_a_side_take_the_other(blip2_dir):
    encoder = create_encoder(f"hf:{blip2_dir}", device="cpu")
    image = _images()[0]
    items = [
        SimpleNamespace(image=image, captions=["red circle"]),
        SimpleNamespace(image=image, captions=[]),
        SimpleNamespace(image=None, captions=["blue square"]),
    ]
    image_emb = np.full((3, 4, encoder.embed_dim), np.nan, dtype=np.float32)
    image_emb[:2] = encoder.encode_images([image, image])
    caption_emb = np.full((3, encoder.embed_dim), np.nan, dtype=np.float32)
    caption_emb[[0, 2]] = encoder.encode_texts(["red circle", "blue square"])
    got = multimodal_embeddings(encoder, items, image_emb, caption_emb)
    np.testing.assert_allclose(got[0], encoder.encode_items([image], ["red circle"])[0], atol=1e-6)
    np.testing.assert_array_equal(got[1], image_emb[1])
    np.testing.assert_array_equal(got[2], np.repeat(caption_emb[2:3], 4, axis=0))
    with pytest.raises(XmrError, match="no multimodal item embedding"):
        multimodal_embeddings(SimpleNamespace(), items, image_emb, caption_emb)


def test_evaluate_fused_blip2_side_by_side(blip2_dir, tmp_path, capsys):
    from builders import tiny_model
    from test_fusion import write_tianchi
    from xmr.cli import main

    data = write_tianchi(tmp_path / "tianchi")
    args = ["evaluate", "--model", f"hf:{blip2_dir}", "--data", str(data), "--device", "cpu"]
    assert main([*args, "--fused", "blip2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for mode in ("image", "caption", "fused", "multimodal"):
        assert 0.0 <= metrics[f"{mode}/t2i/R@1"] <= 1.0
    assert metrics["fused/weight"] == 0.5
    # The library's numbers: multimodal items ranked by max-sim against the queries.
    from xmr.data.readers import load_dataset
    from xmr.eval.metrics import hits_from_topk, summarize
    from xmr.eval.ranking import topk_from_embeddings

    split = load_dataset(data).split("valid")
    encoder = create_encoder(f"hf:{blip2_dir}", device="cpu")
    items = list(split.items.values())
    item_emb = encoder.encode_items([it.image for it in items], [it.captions[0] for it in items])
    qids = list(split.queries)
    query_emb = encoder.encode_texts([split.queries[q].text for q in qids])
    scores = np.einsum("qd,nkd->qnk", query_emb, item_emb).max(-1)
    top, _ = topk_from_embeddings(query_emb, item_emb, len(items))
    np.testing.assert_array_equal(top, np.argsort(-scores, axis=1, kind="stable"))
    expected = summarize(
        hits_from_topk(top, qids, [it.id for it in items], split.relevance), (1, 5, 10), 10
    )
    assert metrics["multimodal/t2i/R@1"] == pytest.approx(expected["R@1"])
    # The table shows the four columns side by side.
    assert main([*args, "--fused", "0.3"]) == 0
    table = capsys.readouterr().out
    assert "t2i side by side" in table and "multimodal" in table
    # A model without a multimodal embedding: a clear error, not a silent three-column table.
    clip = tiny_model(tmp_path / "clip")
    assert main(["evaluate", "--model", f"hf:{clip}", "--data", str(data), "--fused", "blip2"]) == 2
    assert "no multimodal item embedding" in capsys.readouterr().err


def test_itm_training_and_lavis_two_stage_evaluation_on_one_blip2_dir(tmp_path, capsys):
    """One BLIP-2 directory is the first stage (ITC, max-sim) and the reranker (ITM): the
    existing cross-encoder trainer fine-tunes its ITM head with the first stage's hard
    negatives, and ``--rerank-mode itm+sim`` is LAVIS's k_test score = ITM logit + ITC."""
    from test_cross_encoders import _color_tianchi
    from xmr.cli import main

    data = _color_tianchi(tmp_path / "data")
    start = create_tiny_blip(tmp_path / "start", "blip2", texts=["a red thing", "a blue thing"])
    out = tmp_path / "itm"
    args = ["train", "--cross-encoder", f"blip2:{start}", "--model", f"hf:{start}"]
    args += ["--data", str(data), "--out", str(out), "--device", "cpu", "--rerank-k", "4"]
    assert main([*args, "--json", "steps=20", "batch_size=4", "lr=1e-3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["negatives"] == "first-stage" and summary["steps"] == 20
    assert "first_stage/t2i/R@1" in summary["valid"]
    evaluate = ["evaluate", "--model", f"hf:{start}", "--data", str(data), "--split", "valid"]
    evaluate += ["--rerank", f"blip2:{out}", "--rerank-k", "4", "--rerank-mode", "itm+sim"]
    evaluate += ["--device", "cpu"]
    assert main([*evaluate, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["t2i/R@1"] <= 1.0 and "first_stage/t2i/R@1" in metrics


def test_evaluate_report_has_the_multimodal_column(blip2_dir, tmp_path, capsys):
    """`xmr evaluate --fused blip2 --report`: the multimodal items are a stage of their own
    (a "multimodal · text → image" table, like image / caption / fused), its numbers the JSON's."""
    import re

    pytest.importorskip("matplotlib")
    from test_fusion import write_tianchi
    from xmr.cli import main

    data = write_tianchi(tmp_path / "tianchi")
    rep = tmp_path / "rep"
    args = ["evaluate", "--model", f"hf:{blip2_dir}", "--data", str(data), "--device", "cpu",
            "--directions", "t2i", "--fused", "blip2", "--json", "--report", str(rep)]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    page = (rep / "index.html").read_text()
    headings = re.findall(r"<h3>([^<]*)</h3>", page)
    for stage in ("image", "caption", "fused", "multimodal"):
        assert f"{stage} · text → image" in headings, headings
    assert "multimodal" not in headings  # not a stray table of its own with a "t2i" row
    cells = dict(re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', page))
    assert set(cells) == set(metrics)
    mm = {k: v for k, v in metrics.items() if k.startswith("multimodal/t2i/")}
    assert mm and all(float(cells[k]) == v for k, v in mm.items())
