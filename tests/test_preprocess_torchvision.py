"""``ImagePreprocess(backend="torchvision")`` against transformers' torchvision processors.

torchvision does not load in this venv, so the reference outputs were saved by the processors
themselves in the crosscheck venv (``benchmarks/crosscheck_processor_backends.py --write-golden``,
torch 2.14.1 + torchvision 0.29.1 + transformers 5.24.0) on seeded images that the file also
holds; that script also compares the two on JPEGs for every family and filter.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xmr.models.preprocess import ImagePreprocess

GOLDEN = Path(__file__).parent / "data" / "torchvision_backend_golden.npz"


def _golden():
    data = np.load(GOLDEN)
    cases = json.loads(bytes(data["cases"]).decode())
    inputs = sorted(k for k in data.files if k.startswith("input"))
    return data, cases, inputs


def test_equals_transformers_torchvision_processors():
    data, cases, inputs = _golden()
    pil_differs = 0
    for c, case in enumerate(cases):
        pre = ImagePreprocess.from_hf_config(case["config"], case["model_type"])
        ours = replace(pre, backend="torchvision")
        for name in inputs:
            expected = data[f"case{c}_{name}"]
            got = ours(data[name]).numpy()
            assert got.shape == expected.shape, (case, name)
            assert np.abs(got - expected).max() < 1e-5, (case["config"]["resample"], name)
            pil_differs += int(np.abs(pre(data[name]).numpy() - expected).max() > 1e-5)
    # The two backends really differ (antialiased bicubic/bilinear): the check can fail.
    assert pil_differs > 0


def test_batch_normalise_equals_one_by_one_and_survives_pickling():
    data, cases, inputs = _golden()
    pre = replace(ImagePreprocess.from_hf_config(cases[0]["config"]), backend="torchvision")
    pre = pickle.loads(pickle.dumps(pre))  # what a decoding worker receives
    crops = np.stack([pre.crop(data[name]) for name in inputs])
    batch = pre.normalize(crops).numpy()
    for n, name in enumerate(inputs):
        np.testing.assert_array_equal(batch[n], data[f"case0_{name}"])


def test_recorded_and_validated():
    pre = replace(ImagePreprocess(), backend="torchvision")
    assert pre.to_dict()["backend"] == "torchvision"
    assert "backend" not in ImagePreprocess().to_dict()  # old manifests stay as they were
    with pytest.raises(ValueError, match="lanczos"):
        ImagePreprocess(resample="lanczos", backend="torchvision")
    with pytest.raises(ValueError, match="NaFlex"):
        ImagePreprocess(mode="naflex", size=0, crop_size=None, backend="torchvision")
    with pytest.raises(ValueError, match="open_clip"):
        ImagePreprocess(crop_rounding="round", backend="torchvision")
    with pytest.raises(ValueError, match="unknown image backend"):
        ImagePreprocess(backend="cv2")


def test_encode_records_the_backend_and_search_follows_it(tiny_clip, tmp_path):
    """A user's path: encode with the torchvision backend, resume it the other way (refused),
    build an index, and query by one of its images: the Searcher decodes the query with the
    index's backend, so the image finds itself at score 1."""
    from builders import make_images, make_split
    from xmr.encode import encode_split
    from xmr.errors import XmrError
    from xmr.models import create_encoder, with_image_backend
    from xmr.search import Searcher
    from xmr.workflows.index_build import index_embeddings

    paths = make_images(tmp_path / "img", n=6, size=(41, 67))
    split = make_split(paths)
    encoder = create_encoder(f"hf:{tiny_clip}", device="cpu", image_backend="torchvision")
    encode_split(encoder, split, tmp_path / "emb", kinds=["images"], workers=0, progress=False)
    with pytest.raises(XmrError, match="backend: 'torchvision' -> 'pil'"):
        encode_split(
            create_encoder(f"hf:{tiny_clip}", device="cpu"), split, tmp_path / "emb",
            kinds=["images"], workers=0, progress=False,
        )  # fmt: skip
    index_embeddings(tmp_path / "emb", tmp_path / "index")
    searcher = Searcher.from_index_dir(tmp_path / "index")
    assert searcher.encoder.preprocess.backend == "torchvision"
    hit = searcher.search_image(str(paths[3]), k=1)[0]
    assert hit.id == "it003" and hit.score == pytest.approx(1.0, abs=1e-6)
    # A preprocessing torchvision has no counterpart for is refused in the library's terms.
    open_clip_like = create_encoder(f"hf:{tiny_clip}", device="cpu")
    open_clip_like.preprocess = replace(open_clip_like.preprocess, crop_rounding="round")
    with pytest.raises(XmrError, match="image_backend='torchvision': .*open_clip"):
        with_image_backend(open_clip_like, "torchvision")
