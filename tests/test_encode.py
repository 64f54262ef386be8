"""The encoding pipeline: shards equal the encoder's own output, resume, bad images, manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from builders import N_IMAGES, make_images, make_split, tiny_model  # noqa: E402
from xmr.data import ImageRef, Item, Query, Split  # noqa: E402
from xmr.encode import encode_split, load_embeddings, read_manifest  # noqa: E402
from xmr.errors import ModelMismatchError, XmrError  # noqa: E402


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    from xmr.models import create_encoder

    torch.set_num_threads(2)
    return create_encoder(f"hf:{tiny_clip}", device="cpu")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_split(make_images(tmp_path_factory.mktemp("images")))


class Counting:
    """Wraps an encoder and counts the images it embeds (to prove shards are not recomputed)."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.images = 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_images(self, pixels, *args, **kwargs):
        out = self._encoder.encode_images(pixels, *args, **kwargs)
        self.images += len(out)
        return out


def test_shards_equal_the_encoders_own_output(tmp_path, encoder, split):
    summary = encode_split(
        encoder, split, tmp_path / "emb", batch_size=4, shard_size=8, progress=False
    )
    assert summary.kinds["images"].encoded == N_IMAGES and summary.kinds["images"].shards == 3
    images = load_embeddings(tmp_path / "emb", "images")
    texts = load_embeddings(tmp_path / "emb", "texts")
    assert images.ids == list(split.items) and texts.ids == list(split.queries)
    refs = [it.image for it in split.items.values()]
    np.testing.assert_allclose(images.vectors, encoder.encode_images(refs), atol=1e-5)
    np.testing.assert_allclose(
        texts.vectors, encoder.encode_texts([q.text for q in split.queries.values()]), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.norm(images.vectors, axis=1), 1.0, atol=1e-5)

    manifest = read_manifest(tmp_path / "emb")
    assert manifest["model"] == encoder.manifest() and manifest["dim"] == 32
    assert manifest["preprocessing"]["size"] == 32 and manifest["precision"] == "fp32"
    assert manifest["kinds"]["images"]["complete"] and manifest["kinds"]["texts"]["count"] == 5
    items = [
        json.loads(line) for line in (tmp_path / "emb" / "items.jsonl").read_text().splitlines()
    ]
    assert items[0]["image"]["path"].endswith("img000.jpg") and items[0]["category"] == "b"
    assert not (tmp_path / "emb" / "failed.jsonl").exists()


def test_worker_processes_give_the_same_embeddings(tmp_path, encoder, split):
    encode_split(encoder, split, tmp_path / "a", kinds=("images",), progress=False)
    encode_split(
        encoder, split, tmp_path / "b", kinds=("images",), workers=2, batch_size=5, progress=False
    )
    a, b = load_embeddings(tmp_path / "a"), load_embeddings(tmp_path / "b")
    assert a.ids == b.ids
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)


def test_killed_run_resumes_from_finished_shards(tmp_path, encoder, split):
    opts = {"kinds": ("images",), "batch_size": 2, "shard_size": 4, "progress": False}
    encode_split(encoder, split, tmp_path / "full", **opts)
    full = load_embeddings(tmp_path / "full")

    def kill_after_five_batches(kind, done):
        if done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_split(encoder, split, tmp_path / "run", on_batch=kill_after_five_batches, **opts)
    shards = sorted((tmp_path / "run" / "images").glob("*.npz"))
    assert [p.name for p in shards] == ["00000.npz", "00001.npz"]  # 2.5 shards done: 2 written
    assert not list((tmp_path / "run" / "images").glob(".*"))  # nothing half-written
    with pytest.raises(XmrError, match="unfinished"):
        load_embeddings(tmp_path / "run")
    first_mtime = shards[0].stat().st_mtime_ns

    counting = Counting(encoder)
    summary = encode_split(counting, split, tmp_path / "run", **opts)
    assert counting.images == N_IMAGES - 8 and summary.kinds["images"].shards_reused == 2
    assert shards[0].stat().st_mtime_ns == first_mtime
    resumed = load_embeddings(tmp_path / "run")
    assert resumed.ids == full.ids
    np.testing.assert_allclose(resumed.vectors, full.vectors, atol=1e-6)

    # A truncated (corrupt) shard is re-encoded, and only that one.
    last = tmp_path / "run" / "images" / "00004.npz"
    last.write_bytes(last.read_bytes()[:50])
    counting.images = 0
    encode_split(counting, split, tmp_path / "run", **opts)
    assert counting.images == N_IMAGES - 16
    np.testing.assert_allclose(load_embeddings(tmp_path / "run").vectors, full.vectors, atol=1e-6)


def test_resume_refuses_other_data_or_model(tmp_path, encoder, split):
    from xmr.models import create_encoder

    encode_split(encoder, split, tmp_path / "emb", kinds=("texts",), progress=False)
    other_split = Split("test", split.items, {"q0": Query("q0", "something else")})
    with pytest.raises(XmrError, match="different list of inputs"):
        encode_split(encoder, other_split, tmp_path / "emb", kinds=("texts",), progress=False)
    other = create_encoder(f"hf:{tiny_model(tmp_path / 'm2', seed=1)}", device="cpu")
    with pytest.raises(ModelMismatchError):
        encode_split(other, split, tmp_path / "emb", kinds=("texts",), progress=False)
    encode_split(other, split, tmp_path / "emb", kinds=("texts",), progress=False, overwrite=True)
    assert read_manifest(tmp_path / "emb")["model"]["fingerprint"] == other.fingerprint()


def test_undecodable_images_are_reported_and_skipped(tmp_path, encoder, split):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    extra = [
        Item("broken", ImageRef(path=str(bad))),
        Item("missing", ImageRef(path=str(tmp_path / "nope.jpg"))),
        Item("text-only", None, ["a document without an image"]),
    ]
    paths = [it.image.path for it in list(split.items.values())[:5]]
    bad_split = make_split(paths, extra)
    summary = encode_split(
        encoder,
        bad_split,
        tmp_path / "emb",
        kinds=("images", "captions"),
        batch_size=3,
        progress=False,
    )
    s = summary.kinds["images"]
    assert (s.count, s.encoded, s.failed) == (7, 5, 2)
    assert {f["id"] for f in s.first_failures} == {"broken", "missing"}
    failed = [json.loads(x) for x in (tmp_path / "emb" / "failed.jsonl").read_text().splitlines()]
    assert {f["id"] for f in failed} == {"broken", "missing"}
    assert any("broken.jpg" in f["error"] for f in failed)
    images = load_embeddings(tmp_path / "emb", "images")
    assert images.ids == [f"it{i:03d}" for i in range(5)]
    captions = load_embeddings(tmp_path / "emb", "captions")
    assert captions.ids[-1] == "text-only" and len(captions) == 6


def test_unknown_kind_is_an_error(tmp_path, encoder, split):
    with pytest.raises(XmrError, match="unknown embedding kind"):
        encode_split(encoder, split, tmp_path / "emb", kinds=("videos",), progress=False)


def test_bad_output_directories_and_options_are_clear_errors(tmp_path, encoder, split):
    texts = {"kinds": ("texts",), "progress": False}
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(XmrError, match="a_file: exists and is not a directory"):
        encode_split(encoder, split, a_file, **texts)
    with pytest.raises(XmrError, match="a file is in the way"):
        encode_split(encoder, split, a_file / "emb", **texts)
    # A data set (or a model) given as --out by mistake is neither written into nor cleared.
    data = tmp_path / "data"
    data.mkdir()
    (data / "train_label.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(XmrError, match="not an xmr embeddings directory"):
            encode_split(encoder, split, data, overwrite=overwrite, **texts)
    assert sorted(p.name for p in data.iterdir()) == ["train_label.txt"]
    with pytest.raises(XmrError, match="workers must be >= 0"):
        encode_split(encoder, split, tmp_path / "emb", workers=-1, **texts)
    for kinds in ((), "images"):  # --kinds "" used to encode nothing and say it was done
        with pytest.raises(XmrError, match="kinds: name what to encode"):
            encode_split(encoder, split, tmp_path / "emb", kinds=kinds, progress=False)


def test_unreadable_manifests_are_clear_errors(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(XmrError, match="a_file: is a file"):
        read_manifest(tmp_path / "a_file")
    emb = tmp_path / "emb"
    emb.mkdir()
    for content, message in (
        (b"[]", "expected a JSON object, got list"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'{"format": ', "bad JSON"),
    ):
        (emb / "manifest.json").write_bytes(content)
        with pytest.raises(XmrError, match=rf"emb.manifest.json.*{message}"):
            read_manifest(emb)
        with pytest.raises(XmrError, match=message):
            load_embeddings(emb)


def _photo_jpegs(root, sizes):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx * yy) % 256], -1) + rng.normal(
            0, 15, (h, w, 3)
        )
        path = root / f"p{i}.jpg"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=88)
        paths.append(path)
    return paths


def test_default_encode_equals_the_transformers_reference_loop(tmp_path, encoder):
    """Issue 12 item 4 / issue 20: workers crop to uint8, batches are normalised in the encoder,
    and the vectors equal transformers' processor + get_image_features on the same files
    (large non-square JPEGs, where draft decoding would differ)."""
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel

    paths = _photo_jpegs(tmp_path / "big", [(181, 317), (640, 300), (300, 700), (90, 90)])
    split = Split("big", {p.stem: Item(p.stem, ImageRef(path=str(p))) for p in paths})
    summary = encode_split(
        encoder, split, tmp_path / "emb", kinds=("images",), workers=1, batch_size=3, progress=False
    )
    model_dir = encoder.spec.split(":", 1)[1]
    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        inputs = processor(images=[Image.open(p) for p in paths], return_tensors="pt")
        feats = model.get_image_features(**inputs)
        feats = getattr(feats, "pooler_output", feats)
        expected = torch.nn.functional.normalize(feats, dim=-1).numpy()
    got = load_embeddings(tmp_path / "emb", "images").vectors
    assert np.abs(got - expected).max() < 1e-5
    manifest = read_manifest(tmp_path / "emb")
    assert manifest["draft"] is False and manifest["preprocessing"]["jpeg_draft"] is False
    info = summary.to_dict()
    assert info["loader"] == {"workers": 1, "batch_size": 3, "reason": "as given"}
    kind = info["kinds"]["images"]
    assert kind["encoded"] == 4 and 0.0 <= kind["data_wait_share"] <= 1.0
    assert kind["data_wait_s"] <= kind["seconds"]

    # --draft: recorded, differs from the reference, and never mixed with full decoding.
    encode_split(encoder, split, tmp_path / "draft", kinds=("images",), draft=True, progress=False)
    drafted = read_manifest(tmp_path / "draft")
    assert drafted["draft"] is True and drafted["model"]["preprocess"]["draft"] is True
    assert np.abs(load_embeddings(tmp_path / "draft", "images").vectors - expected).max() > 1e-4
    with pytest.raises(XmrError, match="draft and full-decode embeddings are not mixed"):
        encode_split(encoder, split, tmp_path / "draft", kinds=("images",), progress=False)
    with pytest.raises(XmrError, match="draft and full-decode embeddings are not mixed"):
        encode_split(
            encoder, split, tmp_path / "emb", kinds=("images",), draft=True, progress=False
        )


def test_draft_and_full_decode_embeddings_are_not_mixed_in_an_index(tmp_path, encoder):
    pytest.importorskip("faiss")
    from xmr.workflows.index_build import add_embeddings, index_embeddings

    paths = _photo_jpegs(tmp_path / "big", [(300, 200), (200, 300)])
    more = _photo_jpegs(tmp_path / "more", [(400, 250)])
    first = Split("a", {p.stem: Item(p.stem, ImageRef(path=str(p))) for p in paths})
    second = Split("b", {"m0": Item("m0", ImageRef(path=str(more[0])))})
    encode_split(encoder, first, tmp_path / "e1", kinds=("images",), progress=False)
    encode_split(encoder, second, tmp_path / "e2", kinds=("images",), draft=True, progress=False)
    index_embeddings(tmp_path / "e1", tmp_path / "index")
    with pytest.raises(XmrError, match="not mixed in one index"):
        add_embeddings(tmp_path / "index", tmp_path / "e2")


def test_loader_choice_comes_from_the_machine(monkeypatch):
    import os

    from xmr.encode import choose_loader

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    cpu = choose_loader(torch.device("cpu"))
    assert (cpu.workers, cpu.batch_size) == (4, 64) and "8 CPU core(s)" in cpu.reason
    gpu = choose_loader(torch.device("cuda"))
    assert (gpu.workers, gpu.batch_size) == (7, 256)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert choose_loader("cpu").workers == 0  # one core: decode in the process
    assert choose_loader("cpu", 3, 8) == choose_loader(torch.device("cpu"), 3, 8)
    assert (choose_loader("cpu", 3, 8).workers, choose_loader("cpu", 3, 8).batch_size) == (3, 8)


def test_cli_draft_is_opt_in_recorded_and_refused_when_mixed(tmp_path, encoder, capsys):
    """`xmr encode` decodes in full unless --draft; `evaluate --model --emb-dir` on a draft
    directory without --draft is refused (and accepted with it); the loader choice and the
    data-wait share are printed."""
    from xmr.cli import main
    from xmr.data.synth import generate_synthetic

    data = tmp_path / "data"
    generate_synthetic(data, n_train=4, n_test=12, n_valid=4, image_size=80)
    model = encoder.spec
    out = tmp_path / "emb"
    assert (
        main(
            ["encode", "--model", model, "--data", str(data), "--split", "test"]
            + ["--out", str(out), "--draft", "--workers", "0"]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "0 decoding worker(s), batch 64" in printed.err and "draft JPEG decoding" in printed.err
    assert "waiting for data" in printed.out
    assert read_manifest(out)["draft"] is True
    args = ["evaluate", "--model", model, "--data", str(data), "--split", "test"]
    args += ["--emb-dir", str(out), "--workers", "0", "--json"]
    assert main(args) == 2
    assert "not mixed" in capsys.readouterr().err
    assert main([*args, "--draft"]) == 0
    assert "t2i/R@1" in json.loads(capsys.readouterr().out)


def test_a_shard_of_only_undecodable_images_is_written(encoder, split, tmp_path):
    bad = [Item(f"bad{i}", ImageRef(data=b"not an image"), ["x"]) for i in range(3)]
    mixed = Split("test", {**split.items, **{b.id: b for b in bad}}, split.queries)
    # The last shard holds the three bad images and nothing else: (0, dim) vectors.
    summary = encode_split(
        encoder, mixed, tmp_path / "emb", kinds=["images"], shard_size=N_IMAGES, progress=False
    )
    assert (summary.kinds["images"].encoded, summary.kinds["images"].failed) == (N_IMAGES, 3)
    emb = load_embeddings(tmp_path / "emb")
    assert emb.ids == list(split.items) and emb.vectors.shape == (N_IMAGES, 32)


def test_resume_refuses_other_preprocessing_but_not_an_older_manifests_gap(tmp_path):
    """Shards made from other pixels or token lengths are never reused; a key an older manifest
    does not record (``backend`` there means pil) is not a change."""
    from xmr.encode.manifest import check_resumable
    from xmr.errors import XmrError

    def manifest(**preprocess):
        return {"model": {"fingerprint": "f", "preprocess": preprocess}, "kinds": {},
                "precision": "fp32"}  # fmt: skip

    new = manifest(size=224, context_length=77, backend="pil")
    check_resumable(manifest(size=224), new, tmp_path)  # an older manifest: no change
    check_resumable(manifest(size=224, context_length=77), new, tmp_path)
    with pytest.raises(XmrError, match="context_length: 32 -> 77"):
        check_resumable(manifest(size=224, context_length=32), new, tmp_path)
    with pytest.raises(XmrError, match="backend: 'torchvision' -> 'pil'"):
        check_resumable(manifest(size=224, backend="torchvision"), new, tmp_path)
