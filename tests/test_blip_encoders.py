"""BLIP / BLIP-2 ITC bi-encoders under ``hf:``: tiny random models saved in transformers' format,
loaded back like a user's checkpoint, scores equal to transformers' own retrieval forward pass
(``use_itm_head=False`` / ``use_image_text_matching_head=False``) through xmr's preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from xmr.errors import XmrError  # noqa: E402
from xmr.models import create_encoder  # noqa: E402
from xmr.models.tiny import create_tiny_blip  # noqa: E402

TEXTS = ["a red car", "blue shoes on a table", "cat", "a long caption about a green cushion"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blipenc")
    return {
        family: create_tiny_blip(root / family, family, texts=TEXTS, seed=3)
        for family in ("blip", "blip2")
    }


def _images():
    rng = np.random.default_rng(0)
    sizes = [(40, 48), (33, 30), (36, 36)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _reference_scores(directory, family, images, texts):
    """(images x texts) ITC scores from transformers' model and processor themselves."""
    cls = {
        "blip": transformers.BlipForImageTextRetrieval,
        "blip2": transformers.Blip2ForImageTextRetrieval,
    }[family]
    model = cls.from_pretrained(directory).eval()
    processor = transformers.AutoProcessor.from_pretrained(directory)
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        if family == "blip":
            return model(**inputs, use_itm_head=False).itm_score.numpy()
        out = model(**inputs, use_image_text_matching_head=False)
        return out.logits_per_image.numpy()


@pytest.mark.parametrize("family", ["blip", "blip2"])
def test_itc_scores_equal_transformers(tiny_dirs, family):
    images = _images()
    texts = TEXTS[: len(images)]
    encoder = create_encoder(f"hf:{tiny_dirs[family]}", device="cpu")
    image_emb = encoder.encode_images(images)
    text_emb = encoder.encode_texts(texts)
    k = 4 if family == "blip2" else 1
    assert encoder.image_vectors == k
    if family == "blip2":
        assert image_emb.shape == (3, 4, encoder.embed_dim)
        ours = np.einsum("nkd,td->ntk", image_emb, text_emb).max(axis=-1)
    else:
        assert image_emb.shape == (3, encoder.embed_dim)
        ours = image_emb @ text_emb.T
    assert image_emb.dtype == np.float32 and text_emb.shape == (3, encoder.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=-1), 1.0, atol=1e-5)
    reference = _reference_scores(tiny_dirs[family], family, images, texts)
    assert reference.shape == ours.shape
    assert np.abs(ours - reference).max() < 1e-5
    # Not a degenerate model: the texts are told apart.
    assert np.ptp(ours) > 1e-3


@pytest.mark.parametrize("family", ["blip", "blip2"])
def test_save_and_load_keep_weights_and_temperature(tiny_dirs, family, tmp_path):
    encoder = create_encoder(f"hf:{tiny_dirs[family]}", device="cpu")
    assert float(encoder.logit_scale.detach()) == pytest.approx(np.log(1 / 0.07), rel=1e-6)
    with torch.no_grad():
        encoder.logit_scale.fill_(2.5)
    out = encoder.save(tmp_path / "saved")
    assert json.loads((out / "config.json").read_text())["xmr_logit_scale"] == 2.5
    again = create_encoder(f"hf:{out}", device="cpu")
    assert type(again) is type(encoder) and float(again.logit_scale.detach()) == 2.5
    assert again.fingerprint() == encoder.fingerprint()
    images = _images()
    np.testing.assert_array_equal(again.encode_images(images), encoder.encode_images(images))
    # The saved weights are transformers' own (no extra tensor in them).
    reloaded = transformers.AutoConfig.from_pretrained(out)
    assert reloaded.architectures[0].endswith("ForImageTextRetrieval")


def test_checkpoint_without_itc_heads_is_refused(tiny_dirs, tmp_path):
    import shutil

    copy = tmp_path / "captioner"
    shutil.copytree(tiny_dirs["blip2"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["architectures"] = ["Blip2ForConditionalGeneration"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(XmrError, match="no image-text contrastive heads"):
        create_encoder(f"hf:{copy}", device="cpu")


def test_bf16_autocast_is_close_to_fp32(tiny_dirs):
    images = _images()
    fp32 = create_encoder(f"hf:{tiny_dirs['blip2']}", device="cpu")
    bf16 = create_encoder(f"hf:{tiny_dirs['blip2']}", device="cpu", precision="bf16")
    a, b = fp32.encode_images(images), bf16.encode_images(images)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    assert 0 < np.abs(a - b).max() < 0.05  # bf16 ran (not bitwise fp32), and stayed close


def test_model_tiny_cli_writes_loadable_blip2(tmp_path, capsys):
    from xmr.cli import main

    out = tmp_path / "tb2"
    args = ["model", "tiny", "--family", "blip2", "--out", str(out), "--query-tokens", "3"]
    assert main([*args, "--embed-dim", "8", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["embed_dim"] == 8 and manifest["backend"] == "hf"
    encoder = create_encoder(f"hf:{out}", device="cpu")
    assert encoder.image_vectors == 3
    assert encoder.encode_images(_images()[:2]).shape == (2, 3, 8)
    # The same directory is the ITM cross-encoder.
    from xmr.models.cross_encoders import create_cross_encoder

    assert create_cross_encoder(f"blip2:{out}", device="cpu").logits(
        _images()[:1], ["a red car"]
    ).shape == (1, 2)
    assert main(["model", "tiny", "--family", "blip", "--out", str(tmp_path / "tb")]) == 0
    assert "--model hf:" in capsys.readouterr().out
    assert create_encoder(f"hf:{tmp_path / 'tb'}", device="cpu").image_vectors == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["blip", "blip2"])
def test_cuda_embeddings_match_the_cpu(tiny_dirs, family):
    images, texts = _images(), TEXTS
    cpu = create_encoder(f"hf:{tiny_dirs[family]}", device="cpu")
    want_images, want_texts = cpu.encode_images(images), cpu.encode_texts(texts)
    for precision, tol in (("fp32", 1e-4), ("fp16", 2e-2), ("bf16", 5e-2)):
        gpu = create_encoder(f"hf:{tiny_dirs[family]}", device="cuda", precision=precision)
        np.testing.assert_allclose(gpu.encode_images(images), want_images, atol=tol)
        np.testing.assert_allclose(gpu.encode_texts(texts), want_texts, atol=tol)
        if family == "blip2":
            fused = gpu.encode_items(images, texts[: len(images)])
            want = cpu.encode_items(images, texts[: len(images)])
            np.testing.assert_allclose(fused, want, atol=tol)
