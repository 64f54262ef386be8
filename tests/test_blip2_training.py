"""BLIP-2 ITC training: the max-over-query-tokens score (``xmr.vectors.max_sim``, the loss, the
validation ranking), the frozen ViT by default, and ``xmr train`` on a tiny BLIP-2 improving
retrieval over zero-shot on generated data."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from xmr import vectors  # noqa: E402
from xmr.eval.ranking import topk_from_embeddings  # noqa: E402
from xmr.train.losses import ClipLoss, SigLipLoss  # noqa: E402
from xmr.vectors import max_sim  # noqa: E402


def _unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_max_sim_is_the_max_over_vectors_in_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    queries, items = _unit(rng, 5, 8), _unit(rng, 11, 3, 8)
    brute = np.array([[max(q @ v for v in item) for item in items] for q in queries])
    # 60 elements a block = 4 items of 5 queries x 3 vectors: several blocks, a ragged last one
    monkeypatch.setattr(vectors, "MAX_SIM_BLOCK", 60)
    got = max_sim(queries, items)
    assert got.dtype == np.float32 and got.shape == (5, 11)
    np.testing.assert_allclose(got, brute, atol=1e-6)
    # Single-vector items are the K = 1 case: plain dot products.
    np.testing.assert_allclose(max_sim(queries, items[:, 0]), queries @ items[:, 0].T, atol=1e-6)
    nan_items = items.copy()
    nan_items[2] = np.nan
    assert np.isnan(max_sim(queries, nan_items)[:, 2]).all()
    with pytest.raises(ValueError, match="sizes differ"):
        max_sim(queries, items[..., :4])


def test_ranking_multi_vector_images_equals_brute_force_both_directions():
    rng = np.random.default_rng(1)
    texts, images = _unit(rng, 7, 8), _unit(rng, 9, 4, 8)
    scores = np.array([[max(t @ v for v in im) for im in images] for t in texts])
    idx, val = topk_from_embeddings(texts, images, 5, query_chunk=3, item_chunk=4)
    np.testing.assert_array_equal(idx, np.argsort(-scores, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(val, np.sort(scores, axis=1)[:, ::-1][:, :5], atol=1e-6)
    idx, _ = topk_from_embeddings(images, texts, 3)  # image -> text: the same matrix transposed
    np.testing.assert_array_equal(idx, np.argsort(-scores.T, axis=1, kind="stable")[:, :3])


def test_itc_loss_takes_the_max_over_query_tokens():
    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 3, 8, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    keys = torch.arange(4)[:, None]
    scale = torch.tensor(np.log(10.0))
    loss = ClipLoss(multi_positive="none")(image, text, image, text, keys, keys, scale)
    # LAVIS's ITC: sim_i2t = max_k <v_ik, t_j>, sim_t2i the same matrix transposed, / temp.
    sim = torch.einsum("ikd,jd->ijk", image, text).amax(-1) * 10.0
    targets = torch.arange(4)
    expected = (
        torch.nn.functional.cross_entropy(sim, targets)
        + torch.nn.functional.cross_entropy(sim.t(), targets)
    ) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # K copies of one vector: the single-vector loss, for CLIP's and SigLIP's losses.
    single = image[:, 0]
    repeated = single[:, None].expand(4, 3, 8)
    for loss_fn in (ClipLoss(), SigLipLoss()):
        a = loss_fn(single, text, single, text, keys, keys, scale, torch.tensor(-1.0))
        b = loss_fn(repeated, text, repeated, text, keys, keys, scale, torch.tensor(-1.0))
        assert float(a) == pytest.approx(float(b), rel=1e-6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from xmr.data.readers import load_dataset
    from xmr.data.synth import generate_synthetic
    from xmr.models.tiny import create_tiny_blip, dataset_texts

    root = tmp_path_factory.mktemp("blip2train")
    data = generate_synthetic(
        root / "data", n_train=64, n_test=0, n_valid=32, image_size=32, seed=1, n_attribute_sets=8
    )
    model = create_tiny_blip(root / "blip2", "blip2", texts=dataset_texts(load_dataset(data)))
    return {"data": str(data), "model": f"hf:{model}", "root": root}


def _train_config(setup, out, **kw):
    from xmr.train import TrainConfig

    base = dict(
        model=setup["model"],
        data=setup["data"],
        out=str(out),
        epochs=6,
        batch_size=16,
        lr=1e-3,
        workers=0,
        progress=False,
        tensorboard=False,
        log_every=1,
        valid_split="valid",
    )
    return TrainConfig(**{**base, **kw})


def test_training_a_tiny_blip2_beats_zero_shot(setup, tmp_path):
    from xmr.data.readers import load_dataset
    from xmr.models import create_encoder
    from xmr.train import train
    from xmr.train.validate import RetrievalEvaluator

    split = load_dataset(setup["data"], split="valid").split("valid")
    evaluator = RetrievalEvaluator(split)
    start = create_encoder(setup["model"], device="cpu")
    vit_before = {k: v.clone() for k, v in start.model.vision_model.state_dict().items()}
    zero_shot = evaluator(start)
    out = tmp_path / "run"
    result = train(_train_config(setup, out, best_metric="t2i/MeanRecall"))
    trained = evaluator(create_encoder(f"hf:{out}", device="cpu"))
    assert trained["t2i/MeanRecall"] > zero_shot["t2i/MeanRecall"], (zero_shot, trained)
    # Validation during training ranked the (N, K, D) images by max-sim: its best is what the
    # saved (best) model scores.
    assert result.best_value == pytest.approx(trained["t2i/MeanRecall"])
    # The ViT stayed frozen (the default for BLIP-2), the Q-Former and projections trained.
    derived = json.loads((out / "train_config.json").read_text())["extra"]["derived"]
    assert derived["frozen_params"]["image"] == sum(t.numel() for t in vit_before.values())
    assert derived["frozen_params"]["text"] == 0
    saved = create_encoder(f"hf:{out}", device="cpu").model
    for name, tensor in saved.vision_model.state_dict().items():
        torch.testing.assert_close(tensor, vit_before[name])
    assert not torch.equal(saved.vision_projection.weight, start.model.vision_projection.weight)


def test_unfrozen_vit_bf16_and_gradient_checkpointing_run(setup, tmp_path):
    from xmr.train import train

    out = tmp_path / "bf16"
    cfg = _train_config(
        setup,
        out,
        epochs=1,
        max_train_items=32,
        freeze_image=False,
        precision="bf16",
        grad_checkpointing=True,
        valid_split=None,
    )
    result = train(cfg)
    assert result.global_step == 2 and np.isfinite(result.last_loss)
    derived = json.loads((out / "train_config.json").read_text())["extra"]["derived"]
    assert derived["frozen_params"]["image"] == 0


def test_gradient_checkpointing_recomputes_the_same_training_and_bf16_learns(setup, tmp_path):
    """``grad_checkpointing=true`` on BLIP-2 recomputes the ViT and Q-Former layers in backward
    and trains to exactly the weights of a run without it; ``precision=bf16`` with it learns
    (the loss falls as in fp32) and saves float32 weights."""
    from safetensors.torch import load_file

    from xmr.models import create_encoder
    from xmr.train import train
    from xmr.train.model import enable_grad_checkpointing

    # Checkpointing is on: a layer's attention runs again in backward.
    encoder = create_encoder(setup["model"], device="cpu")
    model = encoder.model
    assert enable_grad_checkpointing(model)
    model.train()
    calls = {"qformer": 0, "vit": 0}

    def count(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    model.qformer.encoder.layer[0].attention.register_forward_hook(count("qformer"))
    model.vision_model.encoder.layers[0].self_attn.register_forward_hook(count("vit"))
    size = model.config.vision_config.image_size
    features = encoder.image_features(torch.randn(2, 3, size, size))
    (features * torch.randn(features.shape)).sum().backward()
    assert calls == {"qformer": 2, "vit": 2}

    common = dict(epochs=2, max_train_items=32, valid_split=None, freeze_image=False)
    plain = train(_train_config(setup, tmp_path / "fp32", **common))
    checkpointed = train(_train_config(setup, tmp_path / "gc", **common, grad_checkpointing=True))
    assert checkpointed.losses == pytest.approx(plain.losses, abs=1e-6)
    a = load_file(str(tmp_path / "fp32" / "model.safetensors"))
    b = load_file(str(tmp_path / "gc" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    bf16 = train(
        _train_config(setup, tmp_path / "bf16", **common, grad_checkpointing=True, precision="bf16")
    )
    assert np.mean(bf16.losses[-2:]) < np.mean(bf16.losses[:2])
    assert np.mean(bf16.losses[-2:]) == pytest.approx(np.mean(plain.losses[-2:]), rel=0.05)
    saved = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}


COLORS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}
SHAPES = {
    "circle": ["a circle", "round circle shape", "circle"],
    "square": ["a square", "square box shape", "square"],
}


def _write_color_shape_tianchi(root, n_train=48, n_valid=12):
    """tianchi files where the colour is only in the pixels and the shape only in the captions
    (three per training image, one per validation item): a query "red circle" needs both."""
    from PIL import Image

    rng = np.random.default_rng(0)
    combos = [(c, s) for c in COLORS for s in SHAPES]
    for split, n in (("train", n_train), ("valid", n_valid)):
        (root / f"{split}_images").mkdir(parents=True)
        records = []
        for i in range(n):
            color, shape = combos[i % len(combos)]
            iid = f"{split[0]}{i}"
            noise = rng.integers(-40, 40, (32, 32, 3))
            pixels = np.clip(np.array(COLORS[color]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"{split}_images" / f"{iid}.png")
            records.append((iid, color, shape))
        if split == "train":
            lines = [
                {"query_id": i, "query_text": f"{c} {s}", "image_id": iid, "text_input": SHAPES[s]}
                for i, (iid, c, s) in enumerate(records)
            ]
            name = "MR_train_queries_with_captions.json"
        else:
            lines = [
                {
                    "query_id": 100 + q,
                    "query_text": f"{c} {s}",
                    "item_ids": {i: SHAPES[s][0] for i, ci, si in records if (ci, si) == (c, s)},
                }
                for q, (c, s) in enumerate(combos)
            ]
            name = "MR_valid_queries_with_captions_standard_simple.jsonl"
        (root / name).write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return root


def test_training_on_multimodal_items_beats_zero_shot(tmp_path):
    """Seed 001's fine-tuning: query text -> (image + one sampled caption) through the
    Q-Former's multimodal mode; validation ranks multimodal items by max-sim."""
    from xmr.data.readers import load_dataset
    from xmr.models import create_encoder
    from xmr.models.tiny import create_tiny_blip, dataset_texts
    from xmr.train import TrainConfig, train
    from xmr.train.validate import RetrievalEvaluator

    data = _write_color_shape_tianchi(tmp_path / "data")
    model = create_tiny_blip(tmp_path / "m", "blip2", texts=dataset_texts(load_dataset(data)))
    valid = load_dataset(data, split="valid").split("valid")
    evaluator = RetrievalEvaluator(valid, multimodal=True)
    zero_shot = evaluator(create_encoder(f"hf:{model}", device="cpu"))
    out = tmp_path / "run"
    cfg = dict(model=f"hf:{model}", data=str(data), out=str(out), epochs=6, batch_size=12)
    cfg |= dict(lr=1e-3, workers=0, progress=False, tensorboard=False, valid_split="valid")
    result = train(TrainConfig(**cfg, multimodal_items=True, best_metric="t2i/MeanRecall"))
    trained = evaluator(create_encoder(f"hf:{out}", device="cpu"))
    assert trained["t2i/MeanRecall"] > zero_shot["t2i/MeanRecall"], (zero_shot, trained)
    assert result.best_value == pytest.approx(trained["t2i/MeanRecall"])
    # A model without a multimodal embedding, or items without captions, are refused up front.
    from builders import tiny_model
    from xmr.errors import XmrError

    clip = tiny_model(tmp_path / "clip")
    with pytest.raises(XmrError, match="no multimodal item embedding"):
        train(TrainConfig(**{**cfg, "model": f"hf:{clip}", "out": str(tmp_path / "c")},
                          multimodal_items=True))  # fmt: skip
