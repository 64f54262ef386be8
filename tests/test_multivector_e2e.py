"""Multi-vector items end to end, with the test-only K-views encoder (a real tiny CLIP whose
image is K vectors; see multiview_helpers): encode shards of [m, K, dim] that resume, `xmr
evaluate --model` equal to brute-force max-sim metrics in both directions, an index built from
the shards that saves, loads, adds and serves over real HTTP, and fused K-vector items."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("faiss")

import multiview_helpers  # noqa: E402
from xmr.cli import main  # noqa: E402
from xmr.vectors import max_sim  # noqa: E402

K = multiview_helpers.VIEWS
COMMON = ("--workers", "0", "--batch-size", "8", "--device", "cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from builders import tiny_model
    from xmr.data.readers import load_dataset
    from xmr.data.synth import generate_synthetic
    from xmr.models import create_encoder

    root = tmp_path_factory.mktemp("multivec")
    data = generate_synthetic(
        root / "data", n_train=0, n_test=24, n_valid=0, image_size=16, n_attribute_sets=4, seed=5
    )
    spec = f"{multiview_helpers.BACKEND}:{tiny_model(root / 'model', seed=2)}"
    encoder = create_encoder(spec, device="cpu")
    split = load_dataset(data, split="test").split("test")
    return {"root": root, "data": data, "spec": spec, "encoder": encoder, "split": split}


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_the_helper_encoder_gives_k_normalised_vectors_per_image(world):
    enc, split = world["encoder"], world["split"]
    images = [it.image for it in split.items.values()][:5]
    v = np.asarray(enc.encode_images(images))
    assert v.shape == (5, K, enc.embed_dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(v[:, 0], v[:, 1])  # the views differ
    assert np.asarray(enc.encode_images([])).shape == (0, K, enc.embed_dim)
    assert np.asarray(enc.encode_texts(["a red car"])).shape == (1, enc.embed_dim)
    assert enc.manifest()["image_vectors"] == K


def test_shards_hold_k_vectors_and_resume(world, tmp_path):
    from xmr.encode import encode_split, load_embeddings
    from xmr.errors import XmrError

    enc, split = world["encoder"], world["split"]
    out = tmp_path / "emb"
    encode_split(enc, split, out, batch_size=4, shard_size=10, progress=False)
    images, texts = load_embeddings(out, "images"), load_embeddings(out, "texts")
    assert images.vectors.shape == (len(split.items), K, enc.embed_dim)
    assert images.vectors_per_input == K and texts.vectors.ndim == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kinds"]["images"]["vectors"] == K and manifest["image_vectors"] == K
    assert "vectors" not in manifest["kinds"]["texts"]
    direct = np.asarray(enc.encode_images([split.items[i].image for i in images.ids]))
    np.testing.assert_allclose(images.vectors, direct, atol=1e-5)
    again = encode_split(enc, split, out, batch_size=4, shard_size=10, progress=False)
    assert again.kinds["images"].shards_reused == again.kinds["images"].shards == 3
    # a directory whose images were encoded with another number of vectors is not resumed
    manifest["kinds"]["images"]["vectors"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(XmrError, match="hold 1 vector\\(s\\) each, this run makes 3"):
        encode_split(enc, split, out, batch_size=4, shard_size=10, progress=False)


def test_evaluate_model_equals_brute_force_max_sim(world, capsys):
    from xmr.eval.metrics import reference_metrics

    data, spec, enc, split = world["data"], world["spec"], world["encoder"], world["split"]
    out = run_cli(capsys, "evaluate", "--model", spec, "--data", data, "--split", "test",
                  *COMMON, "--json")  # fmt: skip
    got = json.loads(out.strip().splitlines()[-1])
    text = np.asarray(enc.encode_texts([q.text for q in split.queries.values()]))
    image = np.asarray(enc.encode_images([it.image for it in split.items.values()]))
    # independent of max_sim: an explicit max over the K views
    t2i = np.einsum("qd,nkd->qnk", text, image).max(axis=2)
    np.testing.assert_allclose(max_sim(text, image), t2i, atol=1e-6)
    item_ids, query_ids = list(split.items), list(split.queries)
    for direction, scores, q_ids, c_ids, rel in (
        ("t2i", t2i, query_ids, item_ids, split.relevance),
        ("i2t", t2i.T, item_ids, query_ids, split.item_relevance()),
    ):
        rankings = {
            q: [c_ids[j] for j in np.argsort(-scores[n], kind="stable")[:10]]
            for n, q in enumerate(q_ids)
        }
        want = reference_metrics(rankings, rel, ks=(1, 5, 10), k=10)
        for name in ("R@1", "R@5", "R@10", "mAP@10", "nDCG@10", "MRR"):
            assert got[f"{direction}/{name}"] == pytest.approx(want[name], abs=1e-6), name


def _serve(searcher, **settings):
    uvicorn = pytest.importorskip("uvicorn")
    import socket

    from xmr.serve import ServeSettings, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(searcher, ServeSettings(**settings)),
        host="127.0.0.1",
        port=port,
        log_level="critical",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post_json(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _post_form(url, fields, files, token):
    boundary = "xmr-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data, kind) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {kind}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_index_from_multivector_shards_builds_saves_loads_adds_and_serves(world, tmp_path, capsys):
    from PIL import Image

    from xmr.index import load_index
    from xmr.index.multivector import exact_item_search
    from xmr.search import Searcher

    data, spec, enc, split = world["data"], world["spec"], world["encoder"], world["split"]
    emb, idx = tmp_path / "emb", tmp_path / "index"
    run_cli(capsys, "encode", "--model", spec, "--data", data, "--split", "test", "--out", emb,
            *COMMON[:4])  # fmt: skip
    out = run_cli(capsys, "index", "build", emb, "--out", idx, "--spec", "Flat")
    assert f"{K} vectors each" in out
    index = load_index(idx)
    n = len(split.items)
    assert index.item_vectors == K and len(index) == n and index.backend.ntotal == n * K
    info = json.loads(run_cli(capsys, "index", "info", idx, "--json"))
    assert info["item_vectors"] == K and info["vectors"] == n * K

    # search by text, by image (K query vectors) and by example equal brute-force max-sim
    searcher = Searcher.from_index_dir(idx, device="cpu")
    stored = np.stack([index.vector(i) for i in index.ids])
    assert stored.shape == (n, K, enc.embed_dim)
    texts = [q.text for q in split.queries.values()][:6]
    want_s, want_i = exact_item_search(stored, np.asarray(enc.encode_texts(texts)), 5)
    for text, ws, wi in zip(texts, want_s, want_i, strict=True):
        hits = searcher.search_text(text, 5)
        assert [h.id for h in hits] == [index.ids[j] for j in wi]
        np.testing.assert_allclose([h.score for h in hits], ws, atol=1e-5)
    first = index.ids[0]
    img = split.items[first].image
    assert searcher.search_image(img, 1)[0].id == first
    by_example = searcher.search_item(first, 3)
    _, want = exact_item_search(stored, stored[:1], 4)
    assert [h.id for h in by_example] == [index.ids[j] for j in want[0] if j != 0][:3]

    # xmr index add: new items of K vectors from another encoding (the same images, new ids)
    from xmr.data.dataset import Item, Split
    from xmr.encode import encode_split

    extra = Split(name="test")
    for item_id, item in list(split.items.items())[:4]:
        extra.items[f"new-{item_id}"] = Item(f"new-{item_id}", item.image, captions=["extra"])
    emb2 = tmp_path / "emb2"
    encode_split(enc, extra, emb2, kinds=("images",), progress=False)
    run_cli(capsys, "index", "add", idx, emb2)
    grown = load_index(idx)
    assert len(grown) == n + 4 and grown.backend.ntotal == len(grown) * K
    np.testing.assert_allclose(grown.vector(f"new-{first}"), stored[0], atol=1e-5)
    hits = grown.search(stored[:1], 2)[0]  # an image query of K vectors finds both copies
    assert {h.id for h in hits} == {first, f"new-{first}"}

    # serve over real HTTP: text search, query by example, image upload search, add an item
    token = "multivec-token-123"
    server, thread, base = _serve(Searcher.from_index_dir(idx, device="cpu"), allow_writes=True,
                                  token=token)  # fmt: skip
    try:
        q = texts[0]
        body = _get(f"{base}/api/search?" + urllib.parse.urlencode({"q": q, "k": 4}))
        local = Searcher.from_index_dir(idx, device="cpu").search_text(q, 4)
        assert [r["id"] for r in body["results"]] == [h.id for h in local]
        body = _post_json(f"{base}/api/search", {"item_id": first, "k": 3})
        assert len(body["results"]) == 3 and first not in [r["id"] for r in body["results"]]
        buf = io.BytesIO()
        Image.open(split.items[first].image.path).convert("RGB").save(buf, format="PNG")
        body = _post_form(f"{base}/api/search", {"k": "2"}, {"image": ("q.png", buf.getvalue(),
                          "image/png")}, None)  # fmt: skip
        assert body["results"][0]["id"] == first
        added = _post_form(f"{base}/api/items", {"id": "added-one", "caption": "new"},
                           {"image": ("a.png", buf.getvalue(), "image/png")}, token)  # fmt: skip
        assert added
        assert _get(f"{base}/api/health")["items"] == len(grown) + 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    final = load_index(idx)
    assert "added-one" in final and final.vector("added-one").shape == (K, enc.embed_dim)
    np.testing.assert_allclose(final.vector("added-one"), final.vector(first), atol=1e-4)


def test_fused_items_fuse_each_of_the_k_vectors_with_the_caption(world, tmp_path, capsys):
    from xmr.data.dataset import Item, Split
    from xmr.encode import encode_split, load_embeddings
    from xmr.fusion import fused_embeddings
    from xmr.index import load_index
    from xmr.vectors import l2_normalize

    enc = world["encoder"]
    split = Split(name="test", queries=world["split"].queries)
    for n, (item_id, item) in enumerate(world["split"].items.items()):
        captions = [f"item number {n}"] if n % 4 else []  # some items have no caption
        split.items[item_id] = Item(item_id, item.image, captions=captions)
    emb = tmp_path / "emb"
    encode_split(enc, split, emb, kinds=("images", "captions", "texts"), progress=False)
    fused = fused_embeddings(emb, 0.7)
    images, captions = load_embeddings(emb, "images"), load_embeddings(emb, "captions")
    cap = dict(zip(captions.ids, captions.vectors, strict=True))
    img = dict(zip(images.ids, images.vectors, strict=True))
    assert fused.vectors.shape == (len(fused.ids), K, enc.embed_dim)
    for row, item_id in enumerate(fused.ids[:8]):
        if item_id in cap:
            want = l2_normalize(0.7 * img[item_id] + 0.3 * cap[item_id][None, :])
        else:  # no caption: the image's K vectors alone
            want = img[item_id]
        np.testing.assert_allclose(fused.vectors[row], want, atol=1e-6)
    idx = tmp_path / "fused-index"
    run_cli(capsys, "index", "build", emb, "--out", idx, "--fused", "0.7", "--spec", "Flat")
    index = load_index(idx)
    assert index.item_vectors == K
    q = np.asarray(enc.encode_texts(["a car"]))
    hits = index.search(q, 3)[0]
    brute = max_sim(q, fused.vectors)[0]
    assert [h.id for h in hits] == [fused.ids[j] for j in np.argsort(-brute, kind="stable")[:3]]
