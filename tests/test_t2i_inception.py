"""The FID Inception: weight formats detected by content, identical features across them, the TF
1.x resize, and parity with torch-fidelity's own extractor loaded in isolation (no torchvision)."""

from __future__ import annotations

import hashlib
import importlib
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_helpers import isolate_torch_fidelity
from xmr.cli import main
from xmr.errors import XmrError
from xmr.models.inception import load_fid_inception, resize_like_tensorflow1x
from xmr.models.inception_features import extract_inception_features
from xmr.models.tiny_inception import random_fid_inception, save_fid_inception


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inception")
    pth = save_fid_inception(
        random_fid_inception(seed=3), folder / "weights-inception-2015-12-05-6726825d.pth"
    )
    # The same weights (same seed) in clean-fid's format, written as a user would.
    ts = folder / "inception-2015-12-05.pt"
    assert (
        main(
            [
                "t2i",
                "tiny-inception",
                "--out",
                str(ts),
                "--out-format",
                "torchscript",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    return pth, ts


@pytest.fixture(scope="module")
def images():
    """Two images of different sizes and content, as PNG bytes and as uint8 arrays."""
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (40, 56, 3), dtype=np.uint8),
        np.clip(rng.normal(90, 30, (64, 48, 3)), 0, 255).astype(np.uint8),
    ]
    encoded = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    return arrays, encoded


def _torch_fidelity_module(name: str):
    if not isolate_torch_fidelity():
        pytest.skip("torch-fidelity not installed (make test installs it with --no-deps)")
    return importlib.import_module(f"torch_fidelity.{name}")


def test_both_formats_give_identical_features_and_match_torch_fidelity(weights, images):
    pth, ts = weights
    arrays, encoded = images
    a, b = load_fid_inception(pth, "cpu"), load_fid_inception(ts, "cpu")
    assert (a.format, b.format) == ("state_dict", "torchscript")
    assert a.sha256 == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert b.sha256 == hashlib.sha256(ts.read_bytes()).hexdigest()
    pool_a, logits_a = extract_inception_features(a, encoded, batch_size=2)
    pool_b, logits_b = extract_inception_features(b, encoded, batch_size=1)
    assert pool_a.shape == (2, 2048) and logits_a.shape == (2, 1008)
    np.testing.assert_array_equal(pool_a, pool_b)
    np.testing.assert_allclose(logits_a, logits_b, rtol=1e-12, atol=1e-12)
    assert np.abs(pool_a[0] - pool_a[1]).max() > 1e-3  # different images, different features

    # torch-fidelity's extractor, on its own terms: uint8 batch, its TF resize, the same file.
    fidelity = _torch_fidelity_module("feature_extractor_inceptionv3")
    ref = fidelity.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased", "logits"], str(pth)
    )
    for k, arr in enumerate(arrays):
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
        with torch.no_grad():
            pool, unbiased, biased = ref(x)
        np.testing.assert_allclose(pool_a[k], pool[0].double().numpy(), rtol=1e-5, atol=1e-6)
        # Logits are ~10 in size; float32 matmul order differs by ~1e-6.
        np.testing.assert_allclose(logits_a[k], unbiased[0].double().numpy(), atol=1e-4)
        with_bias = a.logits(torch.from_numpy(pool_a[k : k + 1]).float(), bias=True)
        np.testing.assert_allclose(with_bias.numpy()[0], biased[0].numpy(), atol=1e-4)


def test_format_is_told_by_content_not_name(weights, tmp_path):
    pth, ts = weights
    swapped_ts = shutil.copy(ts, tmp_path / "weights.pth")
    swapped_sd = shutil.copy(pth, tmp_path / "inception.pt")
    assert load_fid_inception(swapped_ts, "cpu").format == "torchscript"
    assert load_fid_inception(swapped_sd, "cpu").format == "state_dict"


def test_tf1_resize_rule_and_torch_fidelity_parity():
    # TF 1.x align_corners=False samples at i * in/out with no half-pixel offset: 2 -> 4 pixels
    # gives a, (a+b)/2, b, b (PyTorch's half-pixel rule would give a, a+(b-a)/4, ...).
    row = torch.tensor([[[[10.0, 30.0]]]])
    out = resize_like_tensorflow1x(row.expand(1, 1, 2, 2).contiguous(), 4)
    assert out[0, 0, 0].tolist() == [10.0, 20.0, 30.0, 30.0]

    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (1, 3, 5, 7)).astype(np.float32)
    size = 11
    expected = np.empty((1, 3, size, size))
    for i in range(size):
        y = i * 5 / size
        y0, y1, fy = int(np.floor(y)), min(int(np.floor(y)) + 1, 4), y - np.floor(y)
        for j in range(size):
            x = j * 7 / size
            x0, x1, fx = int(np.floor(x)), min(int(np.floor(x)) + 1, 6), x - np.floor(x)
            top = img[0, :, y0, x0] * (1 - fx) + img[0, :, y0, x1] * fx
            bottom = img[0, :, y1, x0] * (1 - fx) + img[0, :, y1, x1] * fx
            expected[0, :, i, j] = top * (1 - fy) + bottom * fy
    got = resize_like_tensorflow1x(torch.from_numpy(img), size).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)

    tf = _torch_fidelity_module("interpolate_compat_tensorflow")
    big = torch.from_numpy(rng.uniform(0, 255, (2, 3, 37, 53)).astype(np.float32))
    theirs = tf.interpolate_bilinear_2d_like_tensorflow1x(big, size=(299, 299), align_corners=False)
    assert torch.equal(resize_like_tensorflow1x(big), theirs)


def test_missing_or_wrong_files_are_clear_errors(tmp_path):
    with pytest.raises(XmrError, match="no such file.*nothing is downloaded.*6726825d.pth"):
        load_fid_inception(tmp_path / "missing.pth")
    with pytest.raises(XmrError, match="is a directory"):
        load_fid_inception(tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(XmrError, match="not a torch weights file.*accepted"):
        load_fid_inception(junk, "cpu")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(XmrError, match="not the FID InceptionV3's parameters.*missing"):
        load_fid_inception(other, "cpu")
    net = random_fid_inception(0)
    state = {k: v for k, v in net.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 2048)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(XmrError, match=r"fc.weight has shape \(10, 2048\)"):
        load_fid_inception(tmp_path / "shape.pth", "cpu")
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "linear.pt"))
    with pytest.raises(XmrError, match="TorchScript file but not clean-fid's Inception"):
        load_fid_inception(tmp_path / "linear.pt", "cpu")
