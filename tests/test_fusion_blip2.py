"""Learned (gated) fusion on BLIP-2's multi-vector items: the gate fuses each of an item's K
query vectors with its caption, training scores candidates by the same max-sim as evaluation,
and ``evaluate --fused DIR`` reports the numbers of that fusion."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from test_fusion import write_tianchi  # noqa: E402
from xmr.eval.metrics import hits_from_topk, summarize  # noqa: E402
from xmr.fusion import GatedFusion, ItemEmbeddings, load_fusion, normalize  # noqa: E402
from xmr.models.tiny import create_tiny_blip  # noqa: E402
from xmr.train.fusion import FusionData, FusionTrainConfig, train_fusion  # noqa: E402
from xmr.train.fusion_step import Gate, ItemTensors, fusion_step  # noqa: E402
from xmr.vectors import max_sim  # noqa: E402


def _random_gate(dim: int, seed: int) -> GatedFusion:
    rng = np.random.default_rng(seed)
    return GatedFusion(rng.normal(size=dim), 0.3 * rng.normal(size=(dim, 2 * dim)))


def _multi_vector(seed: int, n: int = 7, k: int = 3, dim: int = 8) -> FusionData:
    rng = np.random.default_rng(seed)
    image = normalize(rng.normal(size=(n * k, dim))).reshape(n, k, dim)
    caption = normalize(rng.normal(size=(n, dim)))
    image[1] = np.nan  # an item without an image: its caption alone, over the K vectors
    caption[2] = np.nan  # one without a caption: its image vectors alone
    ids, qids = [f"i{j}" for j in range(n)], [f"q{j}" for j in range(n)]
    query = normalize(rng.normal(size=(n, dim)))
    relevance = {q: {i} for q, i in zip(qids, ids, strict=True)}
    return FusionData(query, qids, ItemEmbeddings(ids, image, caption), relevance)


def test_the_torch_gate_and_its_loss_are_the_numpy_fusion_scored_by_max_sim():
    data = _multi_vector(0)
    fusion = _random_gate(8, 1)
    expected = fusion.fuse(data.items.image, data.items.caption)
    assert expected.shape == (7, 3, 8)
    np.testing.assert_allclose(expected[1], np.repeat(data.items.caption[1:2], 3, 0), atol=1e-6)
    np.testing.assert_allclose(expected[2], data.items.image[2], atol=1e-6)
    tensors = ItemTensors.of(data, "cpu")
    gate = Gate(fusion, "cpu")
    fused = gate.fuse(tensors.image, tensors.caption, tensors.no_image, tensors.no_caption)
    np.testing.assert_allclose(fused.detach().numpy(), expected, atol=1e-5)
    # One step's loss is InfoNCE over max-sim scores (query 0's positive: item 0, ...).
    pairs = np.array([[0, 0], [3, 3], [5, 5]])
    cand = np.arange(7)
    positive = cand[None, :] == pairs[:, 1:]
    logits = max_sim(data.query_emb[pairs[:, 0]], expected) / 0.1
    top = logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    reference = float(np.mean(lse - logits[positive]))
    optimizer = torch.optim.SGD(gate.parameters(), lr=0.0)
    assert fusion_step(gate, optimizer, tensors, pairs, cand, positive, 0.1) == pytest.approx(
        reference, rel=1e-5
    )


def test_training_on_multi_vector_items_moves_the_loss_and_never_loses_to_the_start():
    data = _multi_vector(3, n=40)
    result = train_fusion(data, config=FusionTrainConfig(epochs=6, negatives=8, batch_size=8))
    assert result.losses[-1] < result.losses[0]
    assert result.best_value >= result.baseline
    assert isinstance(result.model, GatedFusion) and result.model.dim == 8


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    """A tiny BLIP-2, tianchi-format data and a gate trained on it with ``xmr train --fused``
    (``summary``: what it printed with --json)."""
    import contextlib
    import io

    from xmr.cli import main

    root = tmp_path_factory.mktemp("fused-blip2")
    model = create_tiny_blip(root / "blip2", "blip2", texts=["red", "blue", "circle", "square"])
    data = write_tianchi(root / "data", "valid")
    write_tianchi(data, "train")
    out = root / "gate"
    argv = ["train", "--fused", "0.5", "--model", f"hf:{model}", "--data", str(data)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([*argv, "--out", str(out), "--device", "cpu", "--json", "epochs=4", "lr=0.5"])
    assert code == 0
    summary = json.loads(printed.getvalue())
    return {"data": data, "model": f"hf:{model}", "gate": out, "summary": summary}


def _evaluate(blip2, capsys, *options: str) -> dict:
    from xmr.cli import main

    args = ["evaluate", "--model", blip2["model"], "--data", str(blip2["data"]), "--split"]
    assert main([*args, "valid", "--device", "cpu", "--json", *options]) == 0
    return json.loads(capsys.readouterr().out)


def test_gate_trained_on_blip2_is_what_evaluate_reports(blip2, capsys):
    from xmr.data.readers import load_dataset
    from xmr.models import create_encoder

    summary = blip2["summary"]
    assert summary["kind"] == "gated" and summary["last_loss"] != summary["first_loss"]
    fusion = load_fusion(blip2["gate"])
    encoder = create_encoder(blip2["model"], device="cpu")
    assert encoder.image_vectors > 1 and fusion.dim == encoder.embed_dim

    metrics = _evaluate(blip2, capsys, "--fused", str(blip2["gate"]))
    # By hand: each item's K query vectors fused with its caption, ranked by max-sim.
    split = load_dataset(blip2["data"]).split("valid")
    items = FusionData.encode(encoder, split).items
    # The K query vectors of an item differ, so fusing each of them is not fusing one.
    assert np.abs(items.image[:, 0] - items.image[:, 1]).max() > 1e-2
    fused = fusion.fuse(items.image, items.caption)
    assert fused.shape == items.image.shape
    qids = [q for q in split.queries if split.relevance.get(q)]
    scores = max_sim(encoder.encode_texts([split.queries[q].text for q in qids]), fused)
    top = np.argsort(-scores, axis=1, kind="stable")
    expected = summarize(hits_from_topk(top, qids, items.ids, split.relevance), (1, 5, 10), 10)
    for name in ("R@1", "R@5", "MeanRecall"):
        assert metrics[f"fused/t2i/{name}"] == pytest.approx(expected[name])
    assert metrics["fused/image_share"] == pytest.approx(
        fusion.image_share(items.image, items.caption)
    )


def test_the_whole_side_by_side_table_in_one_run(blip2, tmp_path, capsys):
    """``--fused blip2 --gate DIR``: image, caption, weighted (0.5), gated, multimodal; the JSON,
    the plain table and the report carry every column, each the number of its own run."""
    import re

    from xmr.cli import main

    capsys.readouterr()
    rep = tmp_path / "rep"
    gate = str(blip2["gate"])
    table = _evaluate(blip2, capsys, "--fused", "blip2", "--gate", gate, "--report", str(rep))
    for mode in ("image", "caption", "fused", "gated", "multimodal"):
        assert f"{mode}/t2i/R@1" in table, mode
    assert table["fused/weight"] == 0.5 and 0.0 < table["gated/image_share"] < 1.0
    modes = list(dict.fromkeys(k.split("/")[0] for k in table if "/t2i/" in k))
    assert modes[-5:] == ["image", "caption", "fused", "gated", "multimodal"]
    # Each column is what its own single-value run reports.
    alone = _evaluate(blip2, capsys, "--fused", gate)
    weighted = _evaluate(blip2, capsys, "--fused", "blip2")
    for name in ("R@1", "R@5", "MeanRecall"):
        assert table[f"gated/t2i/{name}"] == pytest.approx(alone[f"fused/t2i/{name}"])
        for mode in ("image", "caption", "fused", "multimodal"):
            key = f"{mode}/t2i/{name}"
            assert table[key] == pytest.approx(weighted[key])
    assert "gated/t2i/R@1" not in weighted
    # --gate alone: the weighted default (0.5) beside it.
    only_gate = _evaluate(blip2, capsys, "--gate", gate)
    assert only_gate["fused/weight"] == 0.5 and "gated/t2i/R@1" in only_gate
    page = (rep / "index.html").read_text()
    headings = re.findall(r"<h3>([^<]*)</h3>", page)
    for stage in ("image", "caption", "fused", "gated", "multimodal"):
        assert f"{stage} · text → image" in headings, headings
    cells = dict(re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', page))
    assert set(cells) == set(table)
    args = ["evaluate", "--model", blip2["model"], "--data", str(blip2["data"])]
    assert main([*args, "--split", "valid", "--fused", "blip2", "--gate", gate]) == 0
    text = capsys.readouterr().out
    assert "t2i side by side" in text and "gated" in text and "multimodal" in text
    # A weight is not a learned gate; --gate needs --model.
    assert main([*args, "--split", "valid", "--gate", "0.3"]) == 2
    assert "learned fusion directory" in capsys.readouterr().err
    other = GatedFusion.initial(16)
    other.model = {"spec": "hf:/other", "fingerprint": "0" * 16, "embed_dim": 16}
    assert main([*args, "--split", "valid", "--gate", str(other.save(tmp_path / "other"))]) == 2
    assert "train a fusion for this model" in capsys.readouterr().err
    assert main(["evaluate", "--predictions", "p.json", "--data", "d", "--gate", gate]) == 2
    assert "--gate does not apply with --predictions" in capsys.readouterr().err
