"""ChineseCLIP, SigLIP and SigLIP2 through the hf backend: tiny random models saved in their real
on-disk formats (offline tokenizers), loaded by spec, checked against transformers itself."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from xmr.models import create_encoder  # noqa: E402
from xmr.models.tiny import (  # noqa: E402
    create_tiny_chinese_clip,
    create_tiny_siglip,
    create_tiny_siglip2,
)

torch.set_num_threads(2)

ZH = ["一辆白色的轿车", "红色卡车在路上", "a white suv"]
EN = ["a white suv", "a red truck on the road", "people crossing"]


def _images():
    rng = np.random.default_rng(1)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(40, 60), (32, 32), (90, 35)]
    ]


def _reference(model_cls, directory, texts, images, text_kwargs, drop_mask=False):
    """Embeddings computed the plain transformers way."""
    model = model_cls.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    if drop_mask:  # SigLIP: the tokenizer xmr saved is a generic fast tokenizer
        tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(directory)
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    tokens = dict(tokenizer(texts, return_tensors="pt", **text_kwargs))
    if drop_mask:
        tokens.pop("attention_mask", None)
    with torch.no_grad():
        out = model(**tokens, **processor(images, return_tensors="pt"))
    return out.text_embeds.numpy(), out.image_embeds.numpy()


@pytest.mark.parametrize(
    ("family", "make", "model_cls", "texts"),
    [
        ("chinese_clip", create_tiny_chinese_clip, "ChineseCLIPModel", ZH),
        ("siglip", create_tiny_siglip, "SiglipModel", EN),
        ("siglip2", create_tiny_siglip2, "Siglip2Model", EN),
    ],
)
def test_family_round_trip(family, make, model_cls, texts, tmp_path):
    directory = make(tmp_path / family, texts=texts)
    enc = create_encoder(f"hf:{directory}", device="cpu")
    assert enc.model_type == family
    images = _images()
    t, i = enc.encode_texts(texts), enc.encode_images(images)
    assert t.shape == (3, enc.embed_dim) and i.shape == (3, enc.embed_dim)
    assert t.dtype == np.float32 and i.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)

    # Agrees with transformers' own model + tokenizer + image processor.
    siglip = family.startswith("siglip")
    text_kwargs = (
        {"padding": "max_length", "max_length": enc.context_length} if siglip else {"padding": True}
    )
    ref_t, ref_i = _reference(
        getattr(transformers, model_cls), directory, texts, images, text_kwargs, drop_mask=siglip
    )
    np.testing.assert_allclose(t, ref_t, atol=1e-5)
    np.testing.assert_allclose(i, ref_i, atol=1e-5)

    # Bare directory and a re-saved copy load the same weights.
    bare = create_encoder(str(directory), device="cpu")
    assert bare.fingerprint() == enc.fingerprint()
    saved = enc.save(tmp_path / f"{family}-saved")
    again = create_encoder(f"hf:{saved}", device="cpu")
    assert again.fingerprint() == enc.fingerprint()
    assert again.preprocess == enc.preprocess
    np.testing.assert_allclose(again.encode_texts(texts), t, atol=1e-6)
    np.testing.assert_allclose(again.encode_images(images), i, atol=1e-6)
    getattr(transformers, model_cls).from_pretrained(saved)

    # Training hooks: unnormalised features with grad; SigLIP has a logit bias.
    feats = enc.text_features(enc.tokenize(texts[:2]))
    assert feats.requires_grad and feats.shape == (2, enc.embed_dim)
    assert (enc.logit_bias is not None) == siglip


def test_siglip_pads_to_context_length_without_mask(tmp_path):
    enc = create_encoder(f"hf:{create_tiny_siglip(tmp_path / 's', texts=EN)}", device="cpu")
    tokens = enc.tokenize(["a white suv", "a"])
    assert set(tokens) == {"input_ids"}
    assert tokens["input_ids"].shape == (2, enc.context_length)
    tok = enc.tokenizer
    assert tok.convert_ids_to_tokens(tokens["input_ids"][0][:4]) == [
        "a",
        "white",
        "suv",
        tok.eos_token,
    ]


def test_chinese_clip_tokenizes_characters(tmp_path):
    enc = create_encoder(f"hf:{create_tiny_chinese_clip(tmp_path / 'c', texts=ZH)}", device="cpu")
    tokens = enc.tokenize(["白色的轿车"])
    assert set(tokens) == {"input_ids", "attention_mask", "token_type_ids"}
    pieces = enc.tokenizer.convert_ids_to_tokens(tokens["input_ids"][0])
    assert pieces == ["[CLS]", "白", "色", "的", "轿", "车", "[SEP]"]


def test_siglip2_accepts_collated_naflex_batches(tmp_path):
    from torch.utils.data import default_collate

    enc = create_encoder(f"hf:{create_tiny_siglip2(tmp_path / 's2', texts=EN)}", device="cpu")
    images = _images()
    batch = default_collate([enc.preprocess(im) for im in images])
    assert set(batch) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    np.testing.assert_allclose(
        enc.encode_images(batch, batch_size=2), enc.encode_images(images), atol=1e-6
    )
