"""The Ray Data engine (``--engine ray``): the same shards as the local engine, resumable after a
kill, and the same checks. One local Ray (``num_cpus=2``) serves the whole module."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'xmr[ray]'")
import ray  # noqa: E402

from xmr.cli import main  # noqa: E402
from xmr.data import ImageRef, Item, Query, Split  # noqa: E402
from xmr.data.readers import load_dataset  # noqa: E402
from xmr.encode import encode_split, load_embeddings, read_manifest  # noqa: E402
from xmr.encode.engines import EngineOptions  # noqa: E402
from xmr.errors import XmrError  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
N_IMAGES = 24
SHARD = 4  # one batch per shard: many shards, so a kill lands between two of them


@pytest.fixture(scope="module")
def cluster():
    """The module's Ray: started here, joined by the CLI subprocess, shut down at the end."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from xmr.models import create_tiny_clip

    path = create_tiny_clip(
        tmp_path_factory.mktemp("model"), embed_dim=16, image_size=32, patch_size=8,
        vision_width=32, vision_layers=1, text_width=32, text_layers=1, heads=2,
        context_length=16,
    )  # fmt: skip
    return f"hf:{path}"


@pytest.fixture(scope="module")
def encoder(model):
    from xmr.models import create_encoder

    return create_encoder(model, device="cpu")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Photos big enough (900 px) that decoding takes a while, and one undecodable file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        pixels = (rng.random((900, 900, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(root / f"p{i:03d}.jpg", quality=90)
    (root / "p999_broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def photo_split(image_dir: Path) -> Split:
    paths = sorted(image_dir.glob("*.jpg"))
    items = {
        p.name: Item(p.name, ImageRef(path=str(p)), [f"photo {i}"]) for i, p in enumerate(paths)
    }
    queries = {f"q{i}": Query(f"q{i}", f"a white car number {i}") for i in range(7)}
    return Split("test", items, queries)


def assert_same_embeddings(a: Path, b: Path, kinds) -> None:
    for kind in kinds:
        x, y = load_embeddings(a, kind), load_embeddings(b, kind)
        assert x.ids == y.ids, kind
        assert x.vectors.shape == y.vectors.shape
        np.testing.assert_allclose(x.vectors, y.vectors, rtol=0, atol=1e-6, err_msg=kind)
    failed = [(a / "failed.jsonl").read_text(), (b / "failed.jsonl").read_text()]
    assert failed[0] == failed[1]


def test_ray_engine_writes_what_the_local_engine_writes(cluster, encoder, image_dir, tmp_path):
    split = photo_split(image_dir)
    kinds = ["images", "texts", "captions"]
    common = dict(kinds=kinds, shard_size=SHARD + 1, batch_size=3, progress=False)
    encode_split(encoder, split, tmp_path / "local", **common)
    summary = encode_split(
        encoder, split, tmp_path / "ray", engine="ray", engine_options=EngineOptions(actors=1),
        **common,
    )  # fmt: skip
    assert summary.engine["engine"] == "ray" and summary.engine["actors"] == 1
    assert summary.engine["cluster_cpus"] == 2
    assert_same_embeddings(tmp_path / "local", tmp_path / "ray", kinds)
    images = summary.kinds["images"]
    assert (images.encoded, images.failed) == (N_IMAGES, 1)
    assert "p999_broken.jpg" in images.first_failures[0]["id"]
    assert "undecodable" in images.first_failures[0]["error"]
    local, remote = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert remote["kinds"] == local["kinds"] and remote["model"] == local["model"]
    # A finished Ray encoding is resumed like a local one: every shard reused, nothing run.
    again = encode_split(encoder, split, tmp_path / "ray", engine="ray", **common)
    assert all(s.shards_reused == s.shards for s in again.kinds.values())
    assert again.engine["actors"] is None  # nothing to do: no actor pool was started
    # The module's Ray was joined, not started: it is still up.
    assert ray.is_initialized()


@pytest.mark.slow  # a second driver process joins the cluster and starts its own actor
def test_ray_encode_resumes_after_a_kill(cluster, model, encoder, image_dir, tmp_path):
    out = tmp_path / "emb"
    cmd = [
        sys.executable, "-m", "xmr", "encode", "--model", model, "--data", str(image_dir),
        "--format", "folder", "--out", str(out), "--kinds", "images", "--engine", "ray",
        "--ray-address", cluster, "--actors", "1", "--shard-size", str(SHARD),
        "--batch-size", str(SHARD),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log = (tmp_path / "encode.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    first = out / "images" / "00000.npz"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    log.close()
    written = sorted((out / "images").glob("*.npz"))
    n_shards = -(-(N_IMAGES + 1) // SHARD)
    assert first.exists(), (tmp_path / "encode.log").read_text()[-3000:]
    assert len(written) < n_shards, "the run finished before it could be killed"
    assert not (out / "failed.jsonl").exists()

    dataset = load_dataset(image_dir, "folder")
    split = dataset.split("all")
    common = dict(kinds=["images"], shard_size=SHARD, batch_size=SHARD, progress=False)
    resumed = encode_split(encoder, split, out, engine="ray", **common)
    images = resumed.kinds["images"]
    assert images.shards_reused == len(written)
    assert (images.encoded, images.failed) == (N_IMAGES, 1)
    encode_split(encoder, split, tmp_path / "clean", **common)
    assert_same_embeddings(tmp_path / "clean", out, ["images"])
    assert json.loads((out / "failed.jsonl").read_text())["id"] == "p999_broken.jpg"


def test_ray_engine_keeps_the_checks(cluster, encoder, image_dir, tmp_path):
    split = photo_split(image_dir)
    out = tmp_path / "emb"
    encode_split(encoder, split, out, kinds=["texts"], shard_size=3, progress=False)
    with pytest.raises(XmrError, match="different list of inputs"):
        encode_split(encoder, split, out, kinds=["texts"], shard_size=5, engine="ray")
    with pytest.raises(XmrError, match="has 0 GPU"):
        encode_split(
            encoder, split, tmp_path / "gpu", kinds=["texts"], engine="ray",
            engine_options=EngineOptions(gpus_per_actor=1),
        )  # fmt: skip
    with pytest.raises(XmrError, match="none of the Ray cluster's 2 CPU"):
        encode_split(
            encoder, split, tmp_path / "cpu", kinds=["texts"], engine="ray",
            engine_options=EngineOptions(actors=2),
        )  # fmt: skip
    with pytest.raises(XmrError, match="unknown encode engine 'spark'"):
        encode_split(encoder, split, tmp_path / "x", kinds=["texts"], engine="spark")
    with pytest.raises(XmrError, match="belong to --engine ray"):
        encode_split(
            encoder, split, tmp_path / "y", kinds=["texts"],
            engine_options=EngineOptions(actors=1),
        )  # fmt: skip
    assert ray.is_initialized()


@pytest.mark.slow  # one more actor start-up
def test_an_actor_with_other_weights_is_refused(cluster, model, image_dir, tmp_path):
    from xmr.errors import ModelMismatchError
    from xmr.models import create_encoder

    changed = create_encoder(model, device="cpu")
    with torch.no_grad():  # in memory only: the actors load the files, without this change
        next(changed.model.parameters()).add_(1.0)
    with pytest.raises(ModelMismatchError, match="other weights or preprocessing"):
        encode_split(
            changed, photo_split(image_dir), tmp_path / "emb", kinds=["texts"], engine="ray",
            progress=False,
        )  # fmt: skip
    assert not list((tmp_path / "emb" / "texts").glob("*.npz"))


def test_cli_refuses_ray_options_without_the_ray_engine(model, image_dir, tmp_path, capsys):
    args = ["encode", "--model", model, "--data", str(image_dir), "--out", str(tmp_path / "o")]
    assert main([*args, "--actors", "1"]) == 2
    assert "need --engine ray" in capsys.readouterr().err
    assert main([*args, "--engine", "ray", "--device", "cpu"]) == 2
    assert "--device is for the local engine" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_ray_says_how_to_install(monkeypatch):
    from xmr.encode.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(XmrError, match=r"pip install 'xmr\[ray\]'"):
        import_ray()


def test_ray_engine_encodes_blip2_multimodal_items(cluster, image_dir, tmp_path):
    """The multimodal kind (BLIP-2's image + first caption) on Ray: the tasks decode the image
    and pass the caption on, the actor runs the Q-Former over both; the shards equal the local
    engine's, the undecodable image is listed, an item without a caption gets its image vectors."""
    from xmr.models import create_encoder
    from xmr.models.tiny import create_tiny_blip

    split = photo_split(image_dir)
    first = next(iter(split.items))
    split.items[first] = Item(first, split.items[first].image, [])  # no caption: image vectors
    texts = [c for it in split.items.values() for c in it.captions]
    blip2 = create_tiny_blip(tmp_path / "blip2", "blip2", texts=texts, seed=1)
    encoder = create_encoder(f"hf:{blip2}", device="cpu")
    common = dict(kinds=["multimodal"], shard_size=SHARD + 1, batch_size=3, progress=False)
    encode_split(encoder, split, tmp_path / "local", **common)
    summary = encode_split(
        encoder, split, tmp_path / "ray", engine="ray", engine_options=EngineOptions(actors=1),
        **common,
    )  # fmt: skip
    assert_same_embeddings(tmp_path / "local", tmp_path / "ray", ["multimodal"])
    got = summary.kinds["multimodal"]
    assert (got.encoded, got.failed) == (N_IMAGES, 1)
    emb = load_embeddings(tmp_path / "ray", "multimodal")
    assert emb.vectors.shape[1] == encoder.image_vectors > 1
    alone = encoder.encode_images([split.items[first].image])[0]
    np.testing.assert_allclose(emb.vectors[emb.ids.index(first)], alone, atol=1e-5)
