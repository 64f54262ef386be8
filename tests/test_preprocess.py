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

from xmr.models.preprocess import OPENAI_CLIP_MEAN, ImagePreprocess, naflex_size  # noqa: E402

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


def test_blip_and_blip2_match_transformers():
    # BLIP and BLIP-2 share BlipImageProcessor: a bicubic resize to a square, no crop.
    for family in ("blip", "blip-2"):
        reference = _blip_processor(size={"height": 40, "width": 40})
        ours = ImagePreprocess.from_hf_config(reference.to_dict(), family)
        assert (ours.mode, ours.size, ours.crop_size) == ("resize", (40, 40), None)
        for img in _images("RGB"):
            expected = reference(img, return_tensors="pt")["pixel_values"][0]
            assert (ours(img) - expected).abs().max().item() < TOL, img.size
    defaults = ImagePreprocess.from_hf_config({}, "blip")
    assert (defaults.size, defaults.mean) == ((384, 384), OPENAI_CLIP_MEAN)


def _blip_processor(**kwargs):
    import transformers

    cls = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
    return cls(**kwargs)


@pytest.mark.parametrize(("family", "kwargs"), CASES[:4])
def test_uint8_crops_normalised_per_batch_match_transformers(family, kwargs):
    """The data path: workers crop to uint8, the batch is normalised at once (bit-identical on
    the CPU; the device formula within float32 rounding)."""
    reference = _processor(family, **kwargs)
    ours = ImagePreprocess.from_hf_config(reference.to_dict(), family)
    images = [im for im in _images("RGB") if im.size != (641, 17)]
    expected = torch.stack([reference(im, return_tensors="pt")["pixel_values"][0] for im in images])
    crops = np.stack([ours.crop(im) for im in images])
    assert crops.dtype == np.uint8 and crops.shape[-1] == 3
    batch = ours.normalize(torch.from_numpy(crops))
    assert batch.dtype == torch.float32 and batch.is_contiguous()
    assert torch.equal(batch, expected)  # the lookup table is the processor's own arithmetic
    assert torch.equal(ours.normalize(crops), expected)
    scale, offset = ours._affine(torch.device("cpu"))  # what a CUDA batch computes
    on_device = torch.from_numpy(crops).permute(0, 3, 1, 2).float() * scale + offset
    assert (on_device - expected).abs().max().item() < TOL
    with pytest.raises(ValueError, match="uint8"):
        ours.normalize(batch)


def test_naflex_uint8_patches_normalised_per_batch():
    reference = _processor("siglip2", patch_size=8, max_num_patches=64)
    ours = ImagePreprocess.from_hf_config(reference.to_dict(), "siglip2")
    from xmr.data.loading import collate_images

    images = list(_images("RGB"))
    positions, batch, failed = collate_images(
        [(i, ours.crop(im), None) for i, im in enumerate(images)]
    )
    assert batch["pixel_values"].dtype == torch.uint8 and not failed
    got = ours.normalize(batch)
    for i, img in enumerate(images):
        expected = reference(img, return_tensors="pt")
        for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
            diff = (got[key][i].double() - expected[key][0].double()).abs().max().item()
            assert diff < TOL, (key, img.size)


def _jpeg(tmp_path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    base = base + rng.normal(0, 20, base.shape)
    path = tmp_path / f"{w}x{h}.jpg"
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def test_default_decode_gives_the_processors_pixels_on_large_jpegs(tmp_path):
    """Issue 12 item 4: without --draft, a big non-square JPEG decoded by xmr and preprocessed
    equals transformers' processor on the PIL image of the same file; --draft does not."""
    from xmr.data.images import ImageRef

    reference = _processor(
        "clip", size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    ours = ImagePreprocess.from_hf_config(reference.to_dict(), "clip")
    draft = ImagePreprocess.from_hf_config(reference.to_dict(), "clip")
    draft.draft = True
    assert ours.draft_size is None and draft.draft_size == (64, 64)
    assert "draft" not in ours.to_dict() and draft.to_dict()["draft"] is True
    worst_draft = 0.0
    for w, h in [(1000, 640), (317, 900)]:
        path = _jpeg(tmp_path, w, h)
        expected = reference(Image.open(path), return_tensors="pt")["pixel_values"][0]
        ref = ImageRef(path=str(path))
        assert (ours(ref.open()) - expected).abs().max().item() < TOL
        drafted = draft(ref.open(draft_size=draft.draft_size))
        worst_draft = max(worst_draft, (drafted - expected).abs().max().item())
    assert worst_draft > 1e-3  # draft decoding changes the pixels: that is why it is opt-in


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from xmr.data.images import ImageRef

    values = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    rgb = np.asarray(ImageRef(path=str(path)).open())
    assert rgb.shape == (32, 32, 3)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected)
    assert 0 < rgb.mean() < 250  # PIL's own conversion makes almost all of it white


def test_decoded_transparency_is_composited_on_white_like_transformers(tmp_path):
    from xmr.data.images import ImageRef

    rgba = np.random.default_rng(1).integers(0, 256, (50, 70, 4), dtype=np.uint8)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    reference = _processor(
        "clip", size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    ours = ImagePreprocess.from_hf_config(reference.to_dict(), "clip")
    expected = reference(Image.open(path), return_tensors="pt")["pixel_values"][0]
    assert (ours(ImageRef(path=str(path)).open()) - expected).abs().max().item() < TOL
