"""Encoders: the tiny CLIP, the hf backend, spec forms, manifest/fingerprint, training hooks."""

from __future__ import annotations

import io
import json
import pickle
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from xmr.errors import XmrError  # noqa: E402
from xmr.models import create_encoder, create_tiny_clip, list_backends, parse_spec  # noqa: E402

torch.set_num_threads(2)

TEXTS = ["A white SUV.", "a red sedan driving north", "a black pickup truck", "people crossing"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return create_tiny_clip(tmp_path_factory.mktemp("tiny") / "clip", texts=TEXTS, seed=0)


@pytest.fixture(scope="module")
def enc(tiny_dir):
    return create_encoder(f"hf:{tiny_dir}", device="cpu")


def random_images(n, seed=0, sizes=((80, 120), (64, 64), (200, 50))):
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8))
        for i in range(n)
    ]


def test_backends_registered():
    assert {"hf", "open_clip"} <= set(list_backends())


def test_tiny_clip_files_and_config(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "preprocessor_config.json" in names
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "clip"
    assert config["projection_dim"] == 64
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    # CLIP's text tower pools at the first eos_token_id of the config: it must be the tokenizer's.
    assert config["text_config"]["eos_token_id"] == tok.eos_token_id != 2
    ids = tok("A white SUV.")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [
        "<|startoftext|>",
        "a",
        "white",
        "suv",
        ".",
        "<|endoftext|>",
    ]
    # Unseen words spell out of pieces instead of becoming <unk>.
    assert tok.unk_token_id not in tok("zebra crossing")["input_ids"]


def test_encoder_outputs_are_normalised_float32(enc):
    t = enc.encode_texts(TEXTS)
    i = enc.encode_images(random_images(5), batch_size=2)
    assert t.shape == (4, 64) and i.shape == (5, 64)
    assert t.dtype == np.float32 and i.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)
    as_tensor = enc.encode_texts(TEXTS, as_tensor=True)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_tensor.cpu().numpy(), t, atol=1e-6)
    assert enc.encode_texts([]).shape == (0, 64)
    assert enc.encode_images([]).shape == (0, 64)
    with pytest.raises(TypeError):
        enc.encode_texts("one string")


def test_batching_and_padding_do_not_change_embeddings(enc):
    # Batch composition changes padding; EOS pooling must make it irrelevant.
    together = enc.encode_texts(TEXTS, batch_size=4)
    alone = np.concatenate([enc.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_long_texts_are_truncated_to_context_length(enc):
    tokens = enc.tokenize(["word " * 500])
    assert tokens["input_ids"].shape[1] == enc.context_length == 48
    assert tokens["input_ids"][0, -1].item() == enc.tokenizer.eos_token_id
    assert enc.encode_texts(["word " * 500]).shape == (1, 64)


def test_image_inputs_forms(enc, tmp_path):
    from xmr.data.images import ImageRef

    img = random_images(1)[0]
    path = tmp_path / "x.png"
    img.save(path)
    data = path.read_bytes()
    pixels = enc.preprocess(img).unsqueeze(0)
    ref = enc.encode_images([img])
    for form in (pixels, [str(path)], [path], [data], [ImageRef(path=str(path))], [np.array(img)]):
        np.testing.assert_allclose(enc.encode_images(form), ref, atol=1e-6)


def test_transformers_loads_tiny_clip_and_agrees(tiny_dir, enc):
    model = transformers.CLIPModel.from_pretrained(tiny_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_dir)
    images = random_images(3)
    with torch.no_grad():
        out = model(
            **tok(TEXTS, padding=True, return_tensors="pt"),
            pixel_values=processor(images, return_tensors="pt")["pixel_values"],
        )
    np.testing.assert_allclose(out.text_embeds.numpy(), enc.encode_texts(TEXTS), atol=1e-5)
    np.testing.assert_allclose(out.image_embeds.numpy(), enc.encode_images(images), atol=1e-5)


def test_spec_forms_resolve_to_the_same_model(tiny_dir, enc):
    assert parse_spec(f"hf:{tiny_dir}") == ("hf", str(tiny_dir))
    assert parse_spec(str(tiny_dir)) == ("hf", str(tiny_dir))
    bare = create_encoder(str(tiny_dir), device="cpu")
    assert bare.spec == enc.spec == f"hf:{tiny_dir.resolve()}"
    assert bare.fingerprint() == enc.fingerprint()
    np.testing.assert_allclose(bare.encode_texts(TEXTS), enc.encode_texts(TEXTS), atol=1e-6)


def test_manifest(enc):
    m = enc.manifest()
    keys = {"spec", "backend", "embed_dim", "image_vectors", "preprocess", "fingerprint"}
    assert set(m) == keys
    assert m["backend"] == "hf" and m["embed_dim"] == 64 and m["image_vectors"] == 1
    assert m["preprocess"]["size"] == 64 and m["preprocess"]["crop_size"] == [64, 64]
    assert m["preprocess"]["context_length"] == 48
    assert len(m["fingerprint"]) == 64
    json.dumps(m)  # JSON-ready


def test_save_round_trip(enc, tmp_path):
    out = enc.save(tmp_path / "saved")
    assert (out / "model.safetensors").is_file()
    again = create_encoder(f"hf:{out}", device="cpu")
    assert again.fingerprint() == enc.fingerprint()
    assert again.preprocess == enc.preprocess
    assert again.context_length == enc.context_length
    np.testing.assert_allclose(again.encode_texts(TEXTS), enc.encode_texts(TEXTS), atol=1e-6)
    images = random_images(2)
    np.testing.assert_allclose(again.encode_images(images), enc.encode_images(images), atol=1e-6)
    # transformers itself loads the saved directory.
    transformers.CLIPModel.from_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(out)
    transformers.AutoImageProcessor.from_pretrained(out)


def test_fingerprint_is_stable_and_tracks_weights(tiny_dir, tmp_path):
    a = create_encoder(f"hf:{tiny_dir}", device="cpu")
    b = create_encoder(
        f"hf:{create_tiny_clip(tmp_path / 'same', texts=TEXTS, seed=0)}", device="cpu"
    )
    c = create_encoder(
        f"hf:{create_tiny_clip(tmp_path / 'other', texts=TEXTS, seed=1)}", device="cpu"
    )
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    before = a.fingerprint()
    with torch.no_grad():
        a.model.visual_projection.weight[0, 0] += 1.0
    assert a.fingerprint() != before


def test_training_hooks(tiny_dir):
    enc = create_encoder(f"hf:{tiny_dir}", device="cpu")
    enc.model.train()
    tokens = enc.tokenize(TEXTS[:2])
    assert set(tokens) == {"input_ids", "attention_mask"}
    pixels = torch.stack([enc.preprocess(im) for im in random_images(2)])
    img = enc.image_features(pixels)
    txt = enc.text_features(tokens)
    assert img.shape == (2, 64) and txt.shape == (2, 64)
    assert img.requires_grad and txt.requires_grad
    assert not torch.allclose(img.norm(dim=-1), torch.ones(2))  # unnormalised
    assert isinstance(enc.logit_scale, torch.nn.Parameter) and enc.logit_bias is None
    logits = (
        enc.logit_scale.exp()
        * torch.nn.functional.normalize(img, dim=-1)
        @ (torch.nn.functional.normalize(txt, dim=-1).T)
    )
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    loss.backward()
    assert enc.logit_scale.grad is not None
    assert enc.model.text_model.embeddings.token_embedding.weight.grad is not None


def test_precision_on_cpu(tiny_dir, enc):
    bf16 = create_encoder(f"hf:{tiny_dir}", device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    ref, low = enc.encode_texts(TEXTS), bf16.encode_texts(TEXTS)
    assert low.dtype == np.float32
    assert np.min(np.sum(ref * low, axis=1)) > 0.98
    with pytest.warns(UserWarning, match="fp16"):
        fp16 = create_encoder(f"hf:{tiny_dir}", device="cpu", precision="fp16")
    assert fp16.precision == "fp32"
    with pytest.raises(XmrError, match="precision"):
        create_encoder(f"hf:{tiny_dir}", device="cpu", precision="int3")


def test_preprocess_is_picklable(enc):
    clone = pickle.loads(pickle.dumps(enc.preprocess))
    img = random_images(1)[0]
    assert torch.equal(clone(img), enc.preprocess(img))


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(XmrError, match="unknown model spec"):
        create_encoder("no-such-model")
    with pytest.raises(XmrError, match="cannot tell"):
        create_encoder(str(tmp_path))
    with pytest.raises(XmrError, match="names no model"):
        create_encoder("hf:")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(XmrError, match="not a CLIP-family"):
        create_encoder(str(tmp_path))
    with pytest.raises(XmrError, match="not a CLIP-family"):
        create_encoder(f"hf:{tmp_path}")
    # A missing local path is not mistaken for a hub id (transformers' repo-id message).
    with pytest.raises(XmrError, match=r"missing: no such directory$"):
        create_encoder(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(XmrError, match=r"config.json: is not a directory$"):
        create_encoder(f"hf:{tmp_path / 'config.json'}")


def test_unreadable_image_bytes_raise_data_error(enc):
    from xmr.errors import DataError

    with pytest.raises(DataError):
        enc.encode_images([b"not an image"])
    buf = io.BytesIO()
    random_images(1)[0].save(buf, format="JPEG")
    assert enc.encode_images([buf.getvalue()]).shape == (1, 64)


def test_no_warnings_on_plain_use(enc):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode_texts(TEXTS)
        enc.encode_images(random_images(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_precisions(tiny_dir, enc, precision):
    gpu = create_encoder(f"hf:{tiny_dir}", device="cuda", precision=precision)
    assert gpu.device.type == "cuda" and gpu.precision == precision
    images = random_images(3)
    for got, ref in (
        (gpu.encode_texts(TEXTS), enc.encode_texts(TEXTS)),
        (gpu.encode_images(images), enc.encode_images(images)),
    ):
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-3)
        assert np.min(np.sum(got * ref, axis=1)) > 0.99
    on_gpu = gpu.encode_texts(TEXTS, as_tensor=True)
    assert on_gpu.is_cuda and on_gpu.dtype == torch.float32
    assert gpu.fingerprint() == enc.fingerprint()
