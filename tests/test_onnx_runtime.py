"""``runtime="onnx"`` / ``--runtime onnx``: the text tower exported with torch.onnx (dynamo) and
run on ONNX Runtime equals eager PyTorch within 1e-5 at any batch and length, is cached by the
weights' fingerprint (a second load does not export again), and reaches encode, search and
serve. One export of a tiny CLIP is shared by the module (the exporter takes 20-100 s here);
the Chinese-CLIP (token_type_ids) and SigLIP (no mask) exports are marked slow."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
for _module in ("onnxruntime", "onnx", "onnxscript"):
    pytest.importorskip(_module, reason="--runtime onnx needs the onnx extra (xmr[onnx])")

from xmr.errors import XmrError  # noqa: E402
from xmr.models import create_encoder, create_tiny_clip, enable_text_runtime  # noqa: E402
from xmr.models.onnx_text import export_key, onnx_cache_dir  # noqa: E402

TEXTS = [
    "a white car parked at night",
    "a red bus",
    "x",
    "a black van turning left at the crossing in heavy rain with its lights on",
]


def tiny(path, make=create_tiny_clip, **kw):
    dims = dict(image_size=32, patch_size=8, width=32, layers=1, heads=2)
    if make is create_tiny_clip:
        dims = dict(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1,
                    text_width=32, text_layers=1, heads=2, context_length=24)  # fmt: skip
    return make(path, **{**dims, **kw})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("xmr-cache")
    mp.setenv("XMR_CACHE_DIR", str(root))
    yield root / "onnx"
    mp.undo()


@pytest.fixture(scope="module")
def model(tmp_path_factory, cache):
    spec = f"hf:{tiny(tmp_path_factory.mktemp('clip') / 'm')}"
    onnx = create_encoder(spec, device="cpu", runtime="onnx")  # the module's one export
    return {"spec": spec, "onnx": onnx, "eager": create_encoder(spec, device="cpu")}


def test_onnx_equals_eager_and_the_export_is_cached(model, cache):
    onnx, eager = model["onnx"], model["eager"]
    assert onnx.text_runtime.exported and onnx_cache_dir() == cache
    for texts in (TEXTS[:1], TEXTS[2:3], TEXTS, TEXTS * 9):  # batch 1..36, lengths 3..24
        got, want = onnx.encode_texts(texts), eager.encode_texts(texts)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.allclose(np.linalg.norm(onnx.encode_texts(TEXTS), axis=1), 1, atol=1e-6)
    # Reused on the next load: no second export; the file is named by the key it records.
    again = create_encoder(model["spec"], device="cpu", runtime="onnx")
    assert not again.text_runtime.exported and again.text_runtime.path == onnx.text_runtime.path
    meta = json.loads(onnx.text_runtime.path.with_suffix(".json").read_text())
    assert meta["fingerprint"] == eager.fingerprint() and meta["family"] == "clip"
    assert meta["torch"] == torch.__version__ and "onnxscript" in meta
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".onnx"]  # no temporaries
    np.testing.assert_allclose(again.encode_texts(TEXTS), eager.encode_texts(TEXTS), atol=1e-5)
    # Training (text_features) stays eager; images are untouched.
    assert eager.text_runtime is None


def test_the_key_follows_the_weights_and_stale_exports_are_refused(model, tmp_path):
    other = create_encoder(f"hf:{tiny(tmp_path / 'other', seed=3)}", device="cpu")
    assert export_key(other)["fingerprint"] != export_key(model["eager"])["fingerprint"]
    assert export_key(create_encoder(model["spec"], device="cpu")) == export_key(model["eager"])
    changed = create_encoder(model["spec"], device="cpu", runtime="onnx")  # cached: no export
    with torch.no_grad():
        changed.model.text_projection.weight.mul_(2)  # an in-place update, as an optimiser's
    with pytest.raises(XmrError, match="weights changed after"):
        changed.encode_texts(["a car"])
    enable_text_runtime(changed, "eager")
    assert changed.encode_texts(["a car"]).shape == (1, 16)


def test_refusals_are_clear(model):
    with pytest.raises(XmrError, match="unknown runtime 'tensorrt'"):
        create_encoder(model["spec"], device="cpu", runtime="tensorrt")
    with pytest.raises(XmrError, match="runs in fp32, not bf16"):
        create_encoder(model["spec"], device="cpu", precision="bf16", runtime="onnx")
    other_backend = SimpleNamespace(backend="open_clip", spec="open_clip:ViT-B-32")
    with pytest.raises(XmrError, match="open_clip backend.*runs eager only"):
        enable_text_runtime(other_backend, "onnx")


def test_cli_encode_search_and_serve_with_onnx(model, tmp_path, capsys):
    pytest.importorskip("faiss")
    from xmr.cli import main
    from xmr.data.synth import generate_synthetic
    from xmr.encode import load_embeddings
    from xmr.search import Searcher
    from xmr.workflows.index_build import index_embeddings

    data = generate_synthetic(tmp_path / "data", n_train=0, n_test=12, n_valid=0, image_size=32)
    base = ["encode", "--model", model["spec"], "--data", str(data), "--split", "test"]
    base += ["--workers", "0", "--json"]
    for runtime in ("eager", "onnx"):
        out = tmp_path / f"emb-{runtime}"
        assert main([*base, "--out", str(out), "--runtime", runtime]) == 0
    capsys.readouterr()
    e, o = tmp_path / "emb-eager", tmp_path / "emb-onnx"
    et, ot = load_embeddings(e, "texts"), load_embeddings(o, "texts")
    assert ot.ids == et.ids and len(ot) == 12
    np.testing.assert_allclose(ot.vectors, et.vectors, rtol=0, atol=1e-5)
    ei, oi = load_embeddings(e, "images"), load_embeddings(o, "images")
    np.testing.assert_array_equal(oi.vectors, ei.vectors)  # images always run eager

    index = tmp_path / "index"
    index_embeddings(tmp_path / "emb-eager", index)
    query = "a white car"
    eager = Searcher.from_index_dir(index).search_text(query, 3)
    assert main(["search", str(index), query, "--k", "3", "--runtime", "onnx", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert [h["id"] for h in hits] == [r.id for r in eager]
    assert [h["score"] for h in hits] == pytest.approx([r.score for r in eager], abs=1e-5)

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xmr.serve import ServeSettings, create_app

    with TestClient(create_app(index, ServeSettings(runtime="onnx"))) as client:
        assert client.get("/api/info").json()["index"]["model"]["text_runtime"] == "onnx"
        r = client.get("/api/search", params={"q": query, "k": 3})
        assert r.status_code == 200, r.text
        served = r.json()["results"]
    assert [h["id"] for h in served] == [r.id for r in eager]
    assert [h["score"] for h in served] == pytest.approx([r.score for r in eager], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["chinese_clip", "siglip"])
def test_other_families_export_with_their_own_inputs(family, tmp_path, cache):
    from xmr.models import create_tiny_chinese_clip, create_tiny_siglip

    make = {"chinese_clip": create_tiny_chinese_clip, "siglip": create_tiny_siglip}[family]
    spec = f"hf:{tiny(tmp_path / family, make)}"
    eager = create_encoder(spec, device="cpu")
    onnx = create_encoder(spec, device="cpu", runtime="onnx")
    # Chinese-CLIP feeds token_type_ids; SigLIP feeds input_ids only (no mask, full padding).
    expected = {"chinese_clip": {"input_ids", "attention_mask", "token_type_ids"},
                "siglip": {"input_ids"}}[family]  # fmt: skip
    assert set(onnx.text_runtime.names) == set(eager.tokenize(["a"])) == expected
    texts = ["白色的汽车", "一辆红色的公交车在路上"] if family == "chinese_clip" else TEXTS
    for batch in (texts[:1], texts * 3):
        np.testing.assert_allclose(
            onnx.encode_texts(batch), eager.encode_texts(batch), rtol=0, atol=1e-5
        )
