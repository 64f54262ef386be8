"""xmr's torchvision-free preprocessing against transformers' own image processors.

Tolerance: max abs difference 1e-5 on normalised pixel values. Both sides resize the uint8 image
with PIL, crop at the same integer offsets and rescale in float64 -> float32; what remains is
float32 rounding in the normalisation, so in practice the outputs are identical or ~1e-7 apart.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from xmr.models.preprocess import ImagePreprocess, naflex_size  # noqa: E402

TOL = 1e-5
# (width, height): portrait, landscape, square, tiny (upscaled), extreme aspect ratios.
SIZES = [(37, 91), (300, 200), (64, 64), (20, 20), (641, 17), (17, 500), (225, 224)]


def _processor(name, **kwargs):
    """transformers' PIL image processor (the torchvision-free reference) for a family."""
    import importlib

    module, cls = {
        "clip": ("transformers.models.clip.image_processing_pil_clip", "CLIPImageProcessorPil"),
        "chinese_clip": (
            "transformers.models.chinese_clip.image_processing_pil_chinese_clip",
            "ChineseCLIPImageProcessorPil",
        ),
        "siglip": (
            "transformers.models.siglip.image_processing_pil_siglip",
            "SiglipImageProcessorPil",
        ),
        "siglip2": (
            "transformers.models.siglip2.image_processing_pil_siglip2",
            "Siglip2ImageProcessorPil",
        ),
    }[name]
    try:
        klass = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):  # transformers 4.x: the slow processors are PIL-based
        from transformers import AutoImageProcessor  # noqa: F401

        legacy = {
            "clip": "CLIPImageProcessor",
            "chinese_clip": "ChineseCLIPImageProcessor",
            "siglip": "SiglipImageProcessor",
            "siglip2": "Siglip2ImageProcessor",
        }[name]
        import transformers

        klass = getattr(transformers, legacy)
    return klass(**kwargs)


def _images(mode):
    rng = np.random.default_rng(abs(hash(mode)) % 1000)
    for w, h in SIZES:
        if mode == "RGBA":
            yield Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
        else:
            yield Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


CASES = [
    ("clip", {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}),
    ("clip", {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 48}}),
    ("chinese_clip", {"size": {"shortest_edge": 48}, "crop_size": {"height": 48, "width": 48}}),
    ("siglip", {"size": {"height": 48, "width": 48}}),
    ("siglip", {"size": {"height": 30, "width": 50}, "resample": 2}),
]


@pytest.mark.parametrize(("family", "kwargs"), CASES)
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_matches_transformers_processor(family, kwargs, mode):
    reference = _processor(family, **kwargs)
    ours = ImagePreprocess.from_hf_config(reference.to_dict(), family)
    for img in _images(mode):
        expected = reference(img, return_tensors="pt")["pixel_values"][0]
        got = ours(img)
        assert got.dtype == torch.float32
        assert got.shape == expected.shape, (img.size, got.shape, expected.shape)
        assert (got - expected).abs().max().item() < TOL, img.size


def test_default_224_matches_transformers():
    reference = _processor("clip")  # class defaults: shortest edge 224, crop 224
    ours = ImagePreprocess.from_hf_config(reference.to_dict(), "clip")
    rng = np.random.default_rng(3)
    for w, h in [(300, 200), (180, 260), (224, 224)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        expected = reference(img, return_tensors="pt")["pixel_values"][0]
        assert (ours(img) - expected).abs().max().item() < TOL


def test_siglip2_naflex_matches_transformers():
    reference = _processor("siglip2", patch_size=8, max_num_patches=64)
    ours = ImagePreprocess.from_hf_config(reference.to_dict(), "siglip2")
    assert ours.mode == "naflex"
    for img in _images("RGB"):
        expected = reference(img, return_tensors="pt")
        got = ours(img)
        for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
            assert got[key].shape == expected[key][0].shape, key
            diff = (got[key].double() - expected[key][0].double()).abs().max().item()
            assert diff < TOL, key
    assert naflex_size(100, 50, 8, 64) == (80, 40)  # 10 x 5 patches <= 64


def test_config_round_trip_and_pickle():
    for family, kwargs in CASES:
        ours = ImagePreprocess.from_hf_config(_processor(family, **kwargs).to_dict(), family)
        again = ImagePreprocess.from_hf_config(ours.to_hf_config(), family)
        assert again == ours
        assert pickle.loads(pickle.dumps(ours)) == ours


def test_defaults_fill_missing_keys():
    # A minimal saved config: the CLIP class defaults (224, OpenAI mean/std, bicubic) apply.
    clip = ImagePreprocess.from_hf_config({"image_processor_type": "CLIPImageProcessor"}, "clip")
    assert (clip.mode, clip.size, clip.crop_size, clip.resample) == (
        "shortest_edge",
        224,
        (224, 224),
        "bicubic",
    )
    # Legacy int size: a shortest edge for CLIP, a square for SigLIP.
    assert ImagePreprocess.from_hf_config({"size": 96}, "clip").size == 96
    siglip = ImagePreprocess.from_hf_config({"size": 96}, "siglip")
    assert (siglip.mode, siglip.size, siglip.crop_size) == ("resize", (96, 96), None)
    assert siglip.output_size == (96, 96)


def test_accepts_uint8_arrays():
    pre = ImagePreprocess(size=32, crop_size=(32, 32))
    arr = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    assert torch.equal(pre(arr), pre(Image.fromarray(arr)))
    with pytest.raises(TypeError):
        pre(arr.astype(np.float32))


def test_legacy_int_sizes_match_transformers():
    # The form of openai/clip-vit-* configs saved by older transformers: ints, a feature extractor.
    legacy = {
        "crop_size": 48,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "resample": 3,
        "size": 48,
    }
    reference = type(_processor("clip")).from_dict(legacy)
    ours = ImagePreprocess.from_hf_config(legacy, "clip")
    assert (ours.mode, ours.size, ours.crop_size) == ("shortest_edge", 48, (48, 48))
    for img in _images("RGB"):
        expected = reference(img, return_tensors="pt")["pixel_values"][0]
        assert (ours(img) - expected).abs().max().item() < TOL
