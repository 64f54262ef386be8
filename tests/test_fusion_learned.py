"""Learned fusion (``xmr train --fused``): the gate learns to trust the informative side, beats
every fixed weight where the sides are informative in different dimensions, round-trips through
its files, and builds indexes and evaluations like a weight does."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from test_fusion import write_tianchi  # noqa: E402
from xmr.errors import ModelMismatchError, XmrError  # noqa: E402
from xmr.eval.fused import evaluate_modes  # noqa: E402
from xmr.fusion import (  # noqa: E402
    DEFAULT_WEIGHT_GRID,
    GatedFusion,
    ItemEmbeddings,
    WeightedFusion,
    create_fusion,
    fuse_embeddings,
    list_fusions,
    load_fusion,
    normalize,
)
from xmr.train.fusion import FusionData, FusionTrainConfig, train_fusion  # noqa: E402


def synthetic(seed: int, n: int = 120, dim: int = 16, *, mode: str = "noisy_caption"):
    """One query per item. ``noisy_caption``: the image carries the item and the caption is
    noise. ``split_dims``: the image carries the first half of the dimensions and the caption
    the second half, each with noise where the other side is informative."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n, dim))
    query = normalize(signal + 0.3 * rng.normal(size=(n, dim)))
    if mode == "noisy_caption":
        image = normalize(signal)
        caption = normalize(rng.normal(size=(n, dim)))
    else:
        half = dim // 2
        image = signal.copy()
        caption = signal.copy()
        image[:, half:] = 1.5 * rng.normal(size=(n, dim - half))
        caption[:, :half] = 1.5 * rng.normal(size=(n, half))
        image, caption = normalize(image), normalize(caption)
    ids = [f"i{seed}-{k}" for k in range(n)]
    qids = [f"q{seed}-{k}" for k in range(n)]
    return FusionData(
        query,
        qids,
        ItemEmbeddings(ids, image, caption),
        {q: {i} for q, i in zip(qids, ids, strict=True)},
    )


def r_at_1(data: FusionData, fusion) -> float:
    out = evaluate_modes(
        data.query_emb, data.query_ids, data.items, data.relevance, modes=("fused",), weight=fusion
    )
    return out["fused/t2i/R@1"]


@pytest.mark.parametrize("content", [True, False])
def test_training_lowers_the_loss_and_learns_to_ignore_a_noise_caption(content):
    train, valid = synthetic(0), synthetic(1)
    config = FusionTrainConfig(
        content=content, epochs=15, batch_size=32, negatives=64, metric="R@1"
    )
    result = train_fusion(train, config=config, valid=valid)
    losses = [h["loss"] for h in result.history[1:]]
    assert losses[-1] < 0.5 * losses[0]
    assert result.last_loss == losses[-1] and result.first_loss == losses[0]
    gated = result.model
    assert isinstance(gated, GatedFusion) and gated.content is content
    assert result.trainer == "fusion" and result.best_metric == "R@1"
    # On held-out items it is at least as good as the weighted sum it started from ...
    half = r_at_1(valid, WeightedFusion(0.5))
    assert result.baseline == pytest.approx(half)
    assert r_at_1(valid, gated) == pytest.approx(result.best_value)
    assert result.best_value >= half and result.best_value > 0.9
    # ... here clearly better: half of every fused vector was noise.
    assert result.best_value > half + 0.2
    assert result.history[0]["epoch"] == 0 and result.history[0]["R@1"] == half
    best_epoch = result.details["best_epoch"]
    assert result.model.training["best_epoch"] == best_epoch > 0
    assert result.best_step == result.history[best_epoch]["step"] > 0
    if not content:
        # One gate per dimension: every one of them moved towards the image.
        g = gated.gates(valid.items.image, valid.items.caption)
        assert (g > 0.5).all() and g.mean() > 0.65


def test_a_per_dimension_gate_beats_every_fixed_weight():
    """Image informative in half the dimensions, caption in the other half: no single weight
    can take the good half of each, a gate per dimension can."""
    train, valid = synthetic(2, mode="split_dims"), synthetic(3, mode="split_dims")
    config = FusionTrainConfig(content=False, epochs=25, batch_size=32, metric="R@1")
    result = train_fusion(train, config=config, valid=valid)
    best_weighted = max(r_at_1(valid, WeightedFusion(w)) for w in DEFAULT_WEIGHT_GRID)
    assert r_at_1(valid, result.model) > best_weighted + 0.05
    g = result.model.gates(valid.items.image, valid.items.caption)[0]
    assert g[:8].mean() > 0.7 and g[8:].mean() < 0.3  # image dims vs caption dims


def test_selection_never_loses_to_the_starting_weight():
    """With nothing to learn (both sides equally informative), the kept fusion is no worse on
    the selection data than the weighted sum: epoch 0 is a candidate."""
    data = synthetic(4)
    data.items.caption[:] = data.items.image  # the two sides agree
    result = train_fusion(data, config=FusionTrainConfig(epochs=2, metric="R@1"))
    assert result.details["selected_on"] == "train"
    assert result.best_value >= result.baseline == r_at_1(data, WeightedFusion(0.5))


def test_gate_formula_and_missing_sides():
    rng = np.random.default_rng(0)
    img, cap = normalize(rng.normal(size=(5, 4))), normalize(rng.normal(size=(5, 4)))
    bias, weight = rng.normal(size=4), 0.3 * rng.normal(size=(4, 8))
    fusion = GatedFusion(bias, weight)
    g = 1 / (1 + np.exp(-(np.concatenate([img, cap], 1) @ weight.T + bias)))
    np.testing.assert_allclose(fusion.fuse(img, cap), normalize(g * img + (1 - g) * cap), atol=1e-6)
    # At its initial state the gate is the weighted sum.
    start = GatedFusion.initial(4, weight=0.3)
    np.testing.assert_allclose(start.fuse(img, cap), fuse_embeddings(img, cap, 0.3), atol=1e-6)
    np.testing.assert_allclose(
        WeightedFusion(0.3).fuse(img, cap), fuse_embeddings(img, cap, 0.3), atol=1e-6
    )
    img[1], cap[3] = np.nan, np.nan
    out = fusion.fuse(img, cap)
    np.testing.assert_allclose(out[1], cap[1])
    np.testing.assert_allclose(out[3], img[3])
    assert not np.isnan(out).any()
    with pytest.raises(XmrError, match="4-d"):
        fusion.fuse(np.ones((2, 3)), np.ones((2, 3)))
    assert list_fusions() == ["gated", "weighted"]
    assert create_fusion("weighted", weight=0.2).weight == 0.2
    with pytest.raises(XmrError, match="unknown fusion kind"):
        create_fusion("attention")


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    model = {"spec": "hf:/m", "fingerprint": "abc", "embed_dim": 6}
    for content in (True, False):
        fusion = GatedFusion(rng.normal(size=6), rng.normal(size=(6, 12)) if content else None)
        fusion.model = model
        fusion.training = {"best_epoch": 3}
        out = fusion.save(tmp_path / f"f{content}")
        meta = json.loads((out / "fusion.json").read_text())
        assert meta["format"] == "xmr-fusion" and meta["version"] == 1
        assert meta["kind"] == "gated" and meta["dim"] == 6
        assert meta["params"] == {"content": content} and meta["model"] == model
        back = load_fusion(out)
        assert isinstance(back, GatedFusion) and back.content is content
        assert back.model == model and back.training == {"best_epoch": 3}
        img, cap = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
        np.testing.assert_array_equal(back.fuse(img, cap), fusion.fuse(img, cap))
        assert load_fusion(out / "fusion.json").source == str(out.resolve())
        assert back.describe()["path"] == str(out.resolve()) and back.describe()["sha256"]
    weighted = load_fusion(WeightedFusion(0.25).save(tmp_path / "w"))
    assert isinstance(weighted, WeightedFusion) and weighted.weight == 0.25
    assert not (tmp_path / "w" / "fusion.safetensors").exists()
    assert load_fusion("0.7").weight == 0.7 and load_fusion(0.1).weight == 0.1
    assert load_fusion(back) is back


def test_bad_fusion_files_are_clear_errors(tmp_path):
    good = GatedFusion(np.zeros(4), np.zeros((4, 8))).save(tmp_path / "good")
    meta = json.loads((good / "fusion.json").read_text())

    def broken(name: str, text: str):
        d = tmp_path / name
        d.mkdir()
        (d / "fusion.json").write_text(text)
        if (good / "fusion.safetensors").exists():
            (d / "fusion.safetensors").write_bytes((good / "fusion.safetensors").read_bytes())
        return d

    with pytest.raises(XmrError, match=r"fusion.json:3: not valid JSON"):
        load_fusion(broken("json", '{\n"format": "xmr-fusion",\n oops}'))
    with pytest.raises(XmrError, match="field 'format'"):
        load_fusion(broken("format", json.dumps({**meta, "format": "other"})))
    with pytest.raises(XmrError, match="field 'version' is 9"):
        load_fusion(broken("version", json.dumps({**meta, "version": 9})))
    with pytest.raises(XmrError, match=r"field 'kind' is 'mlp' \(known: gated, weighted\)"):
        load_fusion(broken("kind", json.dumps({**meta, "kind": "mlp"})))
    with pytest.raises(XmrError, match="field 'params.content' must be bool"):
        load_fusion(broken("params", json.dumps({**meta, "params": {"content": "yes"}})))
    with pytest.raises(XmrError, match="field 'dim' is 5"):
        load_fusion(broken("dim", json.dumps({**meta, "dim": 5})))
    weighted = {**meta, "kind": "weighted", "params": {"weight": 2}}
    with pytest.raises(XmrError, match=r"field 'params.weight': .*\[0, 1\]"):
        load_fusion(broken("weight", json.dumps(weighted)))
    (good / "fusion.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(XmrError, match="not a readable safetensors file"):
        load_fusion(good)
    with pytest.raises(XmrError, match="nor a directory with fusion.json"):
        load_fusion(tmp_path / "nowhere")
    with pytest.raises(XmrError, match=r"in \[0, 1\]"):
        load_fusion("1.5")


def test_a_fusion_refuses_another_models_embeddings():
    fusion = GatedFusion.initial(4)
    fusion.model = {"spec": "hf:/a", "fingerprint": "aaa", "embed_dim": 4}
    fusion.check_model({"spec": "hf:/copy-of-a", "fingerprint": "aaa", "embed_dim": 4}, what="x")
    with pytest.raises(ModelMismatchError, match="fingerprint bbb"):
        fusion.check_model({"spec": "hf:/b", "fingerprint": "bbb", "embed_dim": 4}, what="x")
    with pytest.raises(ModelMismatchError, match="8-d"):
        fusion.check_model({"spec": "hf:/a", "fingerprint": "aaa", "embed_dim": 8}, what="x")


def test_config_options_are_checked():
    config = FusionTrainConfig.from_dict(
        {"content": "false", "epochs": "3", "lr": "5e-2", "metric": "R@1"}
    )
    assert (config.content, config.epochs, config.lr, config.metric) == (False, 3, 0.05, "R@1")
    with pytest.raises(XmrError, match="unknown fusion training option 'epoch'"):
        FusionTrainConfig.from_dict({"epoch": 3})
    with pytest.raises(XmrError, match="content='maybe' is not true/false"):
        FusionTrainConfig.from_dict({"content": "maybe"})
    with pytest.raises(XmrError, match="epochs='2.5' is not a whole number"):
        FusionTrainConfig.from_dict({"epochs": "2.5"})
    with pytest.raises(XmrError, match="init_weight must be in"):
        FusionTrainConfig(init_weight=1.5)
    with pytest.raises(XmrError, match="unknown metric"):
        train_fusion(synthetic(5, n=10), config=FusionTrainConfig(epochs=1, metric="R@2"))


# --- end to end on tianchi-format data: xmr train --fused -> index build --fused DIR ------------


@pytest.fixture(scope="module")
def tianchi(tmp_path_factory, tiny_clip):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("fused-train")
    data = write_tianchi(root / "data", "valid")
    write_tianchi(data, "train")
    return {"data": data, "model": f"hf:{tiny_clip}", "root": root}


def test_cli_train_fused_then_index_build_and_add(tianchi, tmp_path, capsys):
    pytest.importorskip("faiss")
    from xmr.cli import main
    from xmr.encode import load_embeddings
    from xmr.search import Searcher
    from xmr.workflows.index_build import add_embeddings

    data, model = tianchi["data"], tianchi["model"]
    fus = tmp_path / "fusion"
    argv = ["train", "--fused", "--model", model, "--data", str(data), "--out", str(fus)]
    assert main([*argv, "--device", "cpu", "--json", "epochs=3", "metric=R@1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "gated" and summary["selected_on"] == "valid"
    assert summary["gated/R@1"] >= summary["weighted/R@1"]
    assert (fus / "fusion.json").is_file() and (fus / "fusion.safetensors").is_file()
    fusion = load_fusion(fus)
    assert fusion.training["train_split"] == "train" and fusion.training["valid_split"] == "valid"
    assert fusion.model["spec"] == model and fusion.model["fingerprint"]

    emb, index = tmp_path / "emb", tmp_path / "index"
    encode = ["encode", "--model", model, "--data", str(data), "--split", "valid"]
    encode += ["--out", str(emb), "--device", "cpu", "--workers", "0"]
    assert main([*encode, "--kinds", "images,captions,texts"]) == 0
    assert main(["index", "build", str(emb), "--out", str(index), "--fused", str(fus)]) == 0
    capsys.readouterr()
    assert main(["search", str(index), "red circle", "-k", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    img, cap = load_embeddings(emb, "images"), load_embeddings(emb, "captions")
    assert img.ids == cap.ids
    fused = dict(zip(img.ids, fusion.fuse(img.vectors, cap.vectors), strict=True))
    searcher = Searcher.from_index_dir(index)
    q = searcher.encoder.encode_texts(["red circle"])[0]
    for r in results:
        assert r["score"] == pytest.approx(float(q @ fused[r["id"]]), abs=1e-5)
    source = searcher.index.manifest["source"]
    assert source["kind"] == "fused" and "fusion_weight" not in source
    assert source["fusion"]["kind"] == "gated" and source["fusion"]["path"] == str(fus.resolve())

    # Adding items fuses them with the same learned fusion, found again at its path.
    more = write_tianchi(tmp_path / "more")
    for f in (more / "valid_images").iterdir():
        f.rename(f.with_name(f"9{f.name}"))
    queries = more / "MR_valid_queries_with_captions_standard_simple.jsonl"
    queries.write_text(queries.read_text().replace('"1', '"91'))
    emb2 = tmp_path / "emb2"
    encode2 = ["encode", "--model", model, "--data", str(more), "--out", str(emb2)]
    assert main([*encode2, "--kinds", "images,captions", "--workers", "0", "--device", "cpu"]) == 0
    _, added = add_embeddings(index, emb2)
    assert added == 4
    by_id = {r.id: r.score for r in Searcher.from_index_dir(index).search_text("red circle", k=8)}
    assert by_id["91000"] == pytest.approx(by_id["1000"], abs=1e-5)  # same image and caption
    # A learned fusion that changed since is not silently used.
    (fus / "fusion.json").write_text((fus / "fusion.json").read_text() + " ")
    with pytest.raises(XmrError, match="gone or has changed"):
        add_embeddings(index, emb2)


def test_cli_train_fused_refuses_an_unwritable_out_before_encoding(tianchi, tmp_path, capsys):
    from xmr.cli import main

    (tmp_path / "a_file").write_text("x")
    argv = ["train", "--fused", "--model", tianchi["model"], "--data", str(tianchi["data"])]
    assert main([*argv, "--out", str(tmp_path / "a_file"), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "a_file: exists and is not a directory" in captured.err
    assert "encoding split" not in captured.out  # refused before the work, not after it


def test_fused_dir_for_another_model_is_refused(tianchi, tmp_path):
    pytest.importorskip("faiss")
    from xmr.cli import main

    other = GatedFusion.initial(32)
    other.model = {"spec": "hf:/other", "fingerprint": "0" * 16, "embed_dim": 32}
    d = other.save(tmp_path / "other")
    emb = tmp_path / "emb"
    encode = ["encode", "--model", tianchi["model"], "--data", str(tianchi["data"])]
    encode += ["--split", "valid", "--out", str(emb), "--device", "cpu", "--workers", "0"]
    assert main([*encode, "--kinds", "images,captions"]) == 0
    with pytest.raises(ModelMismatchError, match="train a fusion for this model"):
        from xmr.workflows.index_build import index_embeddings

        index_embeddings(emb, None, fusion=str(d))
    assert main(["index", "build", str(emb), "--out", str(tmp_path / "i"), "--fused", "x"]) == 2


def test_evaluate_fused_with_a_learned_fusion(tianchi, tmp_path):
    from xmr.data.readers import load_dataset
    from xmr.models import create_encoder
    from xmr.workflows.evaluate import fused_metrics

    enc = create_encoder(tianchi["model"], device="cpu")
    dataset = load_dataset(tianchi["data"])
    train = FusionData.encode(enc, dataset.split("train"))
    result = train_fusion(train, config=FusionTrainConfig(epochs=2), model=enc.manifest())
    d = result.model.save(tmp_path / "f")
    valid = dataset.split("valid")
    out = fused_metrics(enc, dataset, valid, str(d))
    assert 0.0 < out["fused/image_share"] < 1.0 and "fused/weight" not in out
    items = FusionData.encode(enc, valid)
    assert out["fused/t2i/R@1"] == pytest.approx(r_at_1(items, load_fusion(d)))
    assert out["image/t2i/R@1"] == pytest.approx(r_at_1(items, WeightedFusion(1.0)))
    with pytest.raises(XmrError, match="weight in"):
        fused_metrics(enc, dataset, valid, "half")
