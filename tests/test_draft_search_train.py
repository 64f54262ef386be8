"""``--draft`` beyond encode: search and serve decode query images as the index's images were
(an explicit other setting is an error), and training records it, validates with it and refuses
to resume with the other setting. Big generated JPEGs, so draft decoding really changes pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("faiss")

from xmr.data import ImageRef, Item, Split  # noqa: E402
from xmr.encode import encode_split  # noqa: E402
from xmr.errors import XmrError  # noqa: E402
from xmr.models import create_encoder, create_tiny_clip  # noqa: E402
from xmr.search import Searcher  # noqa: E402
from xmr.workflows.index_build import index_embeddings  # noqa: E402


def photo_jpeg(path, w, h, seed):
    """A photo-like JPEG (smooth gradients and noise): draft decoding changes its pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx * yy) % 256], -1)
    base = base + rng.normal(0, 15, (h, w, 3))
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=88)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft")
    model = create_tiny_clip(
        root / "model", embed_dim=16, image_size=32, patch_size=8, vision_width=32,
        vision_layers=1, text_width=32, text_layers=1, heads=2, context_length=16,
    )  # fmt: skip
    (root / "img").mkdir()
    paths = [photo_jpeg(root / "img" / f"p{i}.jpg", 200 + 40 * i, 160, i) for i in range(4)]
    split = Split("s", {p.stem: Item(p.stem, ImageRef(path=str(p))) for p in paths})
    encoder = create_encoder(f"hf:{model}", device="cpu")
    for name, draft in (("full", False), ("draft", True)):
        emb = root / f"emb-{name}"
        encode_split(encoder, split, emb, kinds=("images",), draft=draft, progress=False)
        index_embeddings(emb, root / f"index-{name}")
    query = photo_jpeg(root / "query.jpg", 300, 240, 9)
    return {"root": root, "model": f"hf:{model}", "query": query}


def test_searcher_follows_the_index_and_refuses_the_other_setting(built):
    root, query = built["root"], built["query"]
    draft = create_encoder(built["model"], device="cpu", draft=True).encode_images([query])
    full = create_encoder(built["model"], device="cpu").encode_images([query])
    assert np.abs(draft - full).max() > 1e-4  # draft decoding really changes this query
    for name, expected in (("draft", draft), ("full", full)):
        searcher = Searcher.from_index_dir(root / f"index-{name}")
        assert searcher.encoder.preprocess.draft is (name == "draft")
        assert searcher.info()["model"]["draft"] is (name == "draft")
        np.testing.assert_array_equal(searcher.encode_images([query]), expected)
        # The agreeing explicit setting is accepted; the other one is an error naming both.
        Searcher.from_index_dir(root / f"index-{name}", draft=name == "draft")
        with pytest.raises(XmrError, match="decoded the same way"):
            Searcher.from_index_dir(root / f"index-{name}", draft=name != "draft")
    # A loaded encoder passed in is used with the index's setting, and left as it was.
    mine = create_encoder(built["model"], device="cpu")
    searcher = Searcher.from_index_dir(root / "index-draft", model=mine)
    assert searcher.encoder.preprocess.draft and not mine.preprocess.draft
    np.testing.assert_array_equal(searcher.encode_images([query]), draft)


def test_search_cli_draft_flags(built, capsys):
    from xmr.cli import main

    args = ["search", str(built["root"] / "index-draft"), "--image", str(built["query"])]
    assert main([*args, "--json", "--k", "1"]) == 0
    hit = json.loads(capsys.readouterr().out)["results"][0]
    searcher = Searcher.from_index_dir(built["root"] / "index-draft")
    expected = searcher.search_image(str(built["query"]), 1)[0]
    assert hit["id"] == expected.id and hit["score"] == pytest.approx(expected.score, abs=1e-6)
    assert main([*args, "--draft"]) == 0
    capsys.readouterr()
    assert main([*args, "--no-draft"]) == 2
    assert "decoded the same way" in capsys.readouterr().err


def test_serve_uploads_decode_as_the_index(built):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xmr.serve import ServeSettings, create_app

    root, query = built["root"], built["query"]
    data = query.read_bytes()
    for name in ("draft", "full"):
        app = create_app(root / f"index-{name}", ServeSettings(max_k=4))
        with TestClient(app) as client:
            r = client.post("/api/search", files={"image": ("q.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            got = {x["id"]: x["score"] for x in r.json()["results"]}
        expected = Searcher.from_index_dir(root / f"index-{name}").search_image(str(query), 4)
        assert got == pytest.approx({x.id: x.score for x in expected}, abs=1e-6)
    with pytest.raises(XmrError, match="decoded the same way"):
        create_app(root / "index-full", ServeSettings(draft=True))


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory):
    from xmr.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("train-draft")
    # 96 px JPEGs for a 16 px model: draft decoding (at least twice the input) applies.
    data = generate_synthetic(root / "data", n_train=16, n_test=0, n_valid=8, image_size=96)
    model = create_tiny_clip(
        root / "tiny", embed_dim=16, image_size=16, patch_size=8, vision_width=32,
        text_width=32, vision_layers=1, text_layers=1, heads=2, context_length=16,
    )  # fmt: skip
    return {"data": str(data), "model": f"hf:{model}"}


def test_train_draft_is_recorded_used_and_fixed_on_resume(train_setup, tmp_path):
    from safetensors.torch import load_file

    from xmr.train import TrainConfig, train

    def config(out, **kw):
        fields = dict(
            model=train_setup["model"], data=train_setup["data"], out=str(out), epochs=1,
            batch_size=8, workers=0, progress=False, tensorboard=False, valid_split="valid",
            cache_images="no",
        )  # fmt: skip
        return TrainConfig(**{**fields, **kw})

    full = train(config(tmp_path / "full"))
    draft = train(config(tmp_path / "draft", draft=True))
    saved = json.loads((tmp_path / "draft" / "train_config.json").read_text())
    assert saved["draft"] is True and saved["extra"]["derived"]["jpeg_draft"] is True
    assert json.loads((tmp_path / "full" / "train_config.json").read_text())["draft"] is False
    # Other pixels -> other weights: draft decoding reached the training batches (validation
    # encodes through the same encoder's preprocessing).
    wf, wd = (
        load_file(str(tmp_path / "full" / "model.safetensors")),
        load_file(str(tmp_path / "draft" / "model.safetensors")),
    )
    assert any(not torch.equal(wf[k], wd[k]) for k in wf)
    assert full.last_loss != draft.last_loss
    with pytest.raises(XmrError, match="draft"):
        train(config(tmp_path / "draft", draft=False, epochs=2))


def test_train_cli_draft_flag(train_setup, tmp_path, capsys):
    from xmr.cli import main

    out = tmp_path / "cli"
    args = ["train", "--model", train_setup["model"], "--data", train_setup["data"]]
    args += ["--out", str(out), "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    assert main([*args, "--draft", "--quiet", "valid_split=none", "tensorboard=false"]) == 0
    assert json.loads((out / "train_config.json").read_text())["draft"] is True
    capsys.readouterr()
    assert main([*args, "--draft", "--fused", "x"]) == 2
    assert "--draft is for contrastive training" in capsys.readouterr().err
