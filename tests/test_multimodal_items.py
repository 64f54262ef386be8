"""BLIP-2 multimodal items (seed 001's image + caption items) as an encode kind and an index:
`xmr encode --kinds multimodal` shards that equal `encode_items` and resume, `xmr index build
--fused blip2` whose search equals `xmr evaluate --fused blip2`, adding and upserting such items
(`xmr index add`, `POST /api/items`), and `xmr predict --fused blip2`."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("faiss")

from xmr.cli import main  # noqa: E402
from xmr.data.dataset import Item, Split  # noqa: E402
from xmr.data.images import ImageRef  # noqa: E402
from xmr.errors import XmrError  # noqa: E402

COMMON = ("--workers", "0", "--batch-size", "4", "--device", "cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from xmr.data.readers import load_dataset
    from xmr.data.synth_tianchi import generate_tianchi
    from xmr.models import create_encoder
    from xmr.models.tiny import create_tiny_blip

    root = tmp_path_factory.mktemp("mmitems")
    data = generate_tianchi(root / "data", n_train=0, n_test=0, n_valid=10, image_size=16, seed=3)
    split = load_dataset(data).split("valid")
    texts = [c for it in split.items.values() for c in it.captions]
    texts += [q.text for q in split.queries.values()]
    model = create_tiny_blip(root / "blip2", "blip2", texts=texts, seed=4)
    spec = f"hf:{model}"
    return {"root": root, "data": data, "split": split, "spec": spec,
            "encoder": create_encoder(spec, device="cpu")}  # fmt: skip


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _mixed_split(split, tmp_path) -> Split:
    """The data set's items plus one without a caption, one whose image is not an image and
    one with a caption but no image."""
    mixed = Split(name="valid")
    mixed.items.update(split.items)
    first = next(iter(split.items.values()))
    mixed.items["nocap"] = Item("nocap", first.image, captions=[])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    mixed.items["broken"] = Item("broken", ImageRef(path=str(bad)), captions=["a caption"])
    mixed.items["textonly"] = Item("textonly", None, captions=["blue shoe"])
    mixed.queries.update(split.queries)
    return mixed


def test_multimodal_kind_equals_encode_items_lists_failures_and_resumes(world, tmp_path):
    from xmr.encode import encode_split, load_embeddings

    enc = world["encoder"]
    split = _mixed_split(world["split"], tmp_path)
    opts = {"kinds": ("multimodal",), "batch_size": 3, "shard_size": 4, "progress": False}
    full = encode_split(enc, split, tmp_path / "full", **opts)
    mm = load_embeddings(tmp_path / "full", "multimodal")
    k = enc.image_vectors
    assert "textonly" not in mm.ids and "broken" not in mm.ids  # no image; undecodable
    assert full.kinds["multimodal"].failed == 1 and len(mm) == len(split.items) - 2
    assert mm.vectors.shape == (len(mm), k, enc.embed_dim)
    with_caption = [i for i in mm.ids if split.items[i].captions]
    want = enc.encode_items([split.items[i].image for i in with_caption],
                            [split.items[i].captions[0] for i in with_caption])  # fmt: skip
    rows = {i: n for n, i in enumerate(mm.ids)}
    np.testing.assert_allclose(mm.vectors[[rows[i] for i in with_caption]], want, atol=1e-5)
    # the item without a caption is its image vectors (the Q-Former without text)
    image = enc.encode_images([split.items["nocap"].image])[0]
    np.testing.assert_allclose(mm.vectors[rows["nocap"]], image, atol=1e-5)
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    entry = manifest["kinds"]["multimodal"]
    assert entry["vectors"] == k and entry["image_only"] == 1 and "first caption" in entry["items"]
    failed = [json.loads(line) for line in (tmp_path / "full" / "failed.jsonl").open()]
    assert [(f["kind"], f["id"]) for f in failed] == [("multimodal", "broken")]

    # killed after two batches (one whole shard), then resumed: the same vectors
    def kill(kind, done):
        if done >= 6:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        encode_split(enc, split, run, on_batch=kill, **opts)
    assert [p.name for p in (run / "multimodal").glob("*.npz")] == ["00000.npz"]
    again = encode_split(enc, split, run, **opts)
    assert again.kinds["multimodal"].shards_reused == 1
    resumed = load_embeddings(run, "multimodal")
    assert resumed.ids == mm.ids
    np.testing.assert_allclose(resumed.vectors, mm.vectors, atol=1e-6)

    # the caption is part of the input: an edited caption is not resumed over
    edited = _mixed_split(world["split"], tmp_path)
    some = next(iter(world["split"].items))
    edited.items[some] = Item(some, split.items[some].image, captions=["another caption"])
    with pytest.raises(XmrError, match="different list of inputs"):
        encode_split(enc, edited, run, **opts)
    # K recorded and checked on resume
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["kinds"]["multimodal"]["vectors"] = 1
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(XmrError, match=f"hold 1 vector\\(s\\) each, this run makes {k}"):
        encode_split(enc, split, run, **opts)


def test_an_encoder_without_encode_items_is_refused_up_front(world, tmp_path, capsys):
    from builders import tiny_model

    clip = tiny_model(tmp_path / "clip")
    out = tmp_path / "emb"
    code = main(["encode", "--model", f"hf:{clip}", "--data", str(world["data"]), "--out",
                 str(out), "--kinds", "multimodal,texts", *COMMON])  # fmt: skip
    assert code == 2
    assert "no multimodal item embedding (encode_items)" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    sub = tmp_path / "sub.jsonl"
    code = main(["predict", "--model", f"hf:{clip}", "--data", str(world["data"]), "--out",
                 str(sub), "--fused", "blip2", *COMMON])  # fmt: skip
    assert code == 2 and "no multimodal item embedding" in capsys.readouterr().err
    assert not sub.exists()


def test_index_build_fused_blip2_searches_as_evaluate_fused_blip2_ranks(world, tmp_path, capsys):
    from xmr.eval.metrics import reference_metrics
    from xmr.index import load_index
    from xmr.search import Searcher

    data, spec, split = world["data"], world["spec"], world["split"]
    emb, idx = tmp_path / "emb", tmp_path / "index"
    run_cli(capsys, "encode", "--model", spec, "--data", data, "--out", emb, "--kinds",
            "multimodal,captions,texts", *COMMON)  # fmt: skip
    out = run_cli(capsys, "index", "build", emb, "--out", idx, "--fused", "blip2", "--spec", "Flat")
    assert "BLIP-2 multimodal" in out and f"{len(split.items)} items" in out
    info = json.loads(run_cli(capsys, "index", "info", idx, "--json"))
    assert info["items"] == "multimodal" and info["fusion"]["kind"] == "multimodal"
    assert "Q-Former" in run_cli(capsys, "index", "info", idx)
    metrics = json.loads(run_cli(capsys, "evaluate", "--model", spec, "--data", data,
                                 "--fused", "blip2", *COMMON, "--json"))  # fmt: skip
    searcher = Searcher.from_index_dir(idx, device="cpu")
    qids = list(split.queries)
    hits = searcher.search_texts([split.queries[q].text for q in qids], 10)
    rankings = {q: [h.id for h in row] for q, row in zip(qids, hits, strict=True)}
    want = reference_metrics(rankings, split.relevance, ks=(1, 5, 10), k=10)
    for name in ("R@1", "R@5", "R@10"):
        assert metrics[f"multimodal/t2i/{name}"] == pytest.approx(want[name], abs=1e-9), name
    # xmr predict --fused blip2, scored by the official-format scorer: the same numbers
    sub = tmp_path / "sub.jsonl"
    summary = json.loads(run_cli(capsys, "predict", "--model", spec, "--data", data, "--out",
                                 sub, "--fused", "blip2", "--json", *COMMON))  # fmt: skip
    assert summary["fused"] == "blip2"
    scored = json.loads(run_cli(capsys, "evaluate", "--predictions", sub, "--data", data,
                                "--json"))  # fmt: skip
    for name in ("R@1", "R@5", "R@10", "MRR"):
        assert scored[f"t2i/{name}"] == pytest.approx(metrics[f"multimodal/t2i/{name}"]), name
    # the stored items are the encoder's multimodal items
    index = load_index(idx)
    some = index.ids[0]
    item = split.items[some]
    np.testing.assert_allclose(index.vector(some),
                               world["encoder"].encode_items([item.image], item.captions[:1])[0],
                               atol=1e-5)  # fmt: skip
    # xmr search with BLIP-2's ITM head reranking the multimodal first stage
    query = split.queries[qids[0]].text
    first = [h.id for h in hits[0][:4]]
    body = json.loads(run_cli(capsys, "search", idx, query, "-k", "4", "--rerank",
                              f"blip2:{spec[3:]}", "--rerank-k", "4", "--json"))  # fmt: skip
    assert sorted(r["id"] for r in body["results"]) == sorted(first)


def test_caption_only_items_take_their_caption_as_evaluate_does(world, tmp_path):
    from xmr.encode import encode_split
    from xmr.fusion import encode_items
    from xmr.workflows.index_build import index_embeddings

    enc = world["encoder"]
    split = _mixed_split(world["split"], tmp_path)
    del split.items["broken"]
    emb = tmp_path / "emb"
    encode_split(enc, split, emb, kinds=("multimodal", "captions"), progress=False)
    index = index_embeddings(emb, spec="Flat", fusion="blip2")
    fusion = index.manifest["source"]["fusion"]
    assert (fusion["caption_only"], fusion["image_only"], fusion["caption_only_left_out"]) == (
        1, 1, 0)  # fmt: skip
    evaluated = encode_items(enc, split.items, multimodal=True)
    assert sorted(index.ids) == sorted(evaluated.ids)
    for n, item_id in enumerate(evaluated.ids):
        np.testing.assert_allclose(index.vector(item_id), evaluated.multimodal[n], atol=1e-5)
    # without the captions kind such items are left out, and said so
    only = tmp_path / "only"
    encode_split(enc, split, only, kinds=("multimodal",), progress=False)
    index = index_embeddings(only, spec="Flat", fusion="blip2")
    assert "textonly" not in index
    assert index.manifest["source"]["fusion"]["caption_only_left_out"] == 1
    # a directory without multimodal items: a clear error saying how to make them
    plain = tmp_path / "plain"
    encode_split(enc, split, plain, kinds=("captions",), progress=False)
    with pytest.raises(XmrError, match="no multimodal embeddings.*kinds=multimodal"):
        index_embeddings(plain, spec="Flat", fusion="blip2")


def test_add_upsert_delete_and_serve_adds_on_a_multimodal_index(world, tmp_path, capsys):
    import io
    import urllib.parse
    import urllib.request

    from PIL import Image

    from test_multivector_e2e import _get, _post_form, _serve
    from xmr.encode import encode_split
    from xmr.index import load_index
    from xmr.search import Searcher

    enc, split = world["encoder"], world["split"]
    k = enc.image_vectors
    emb, idx = tmp_path / "emb", tmp_path / "index"
    encode_split(enc, split, emb, kinds=("multimodal",), progress=False)
    run_cli(capsys, "index", "build", emb, "--out", idx, "--fused", "blip2", "--spec", "Flat")
    n = len(split.items)
    old_id, first = list(split.items)[:2]
    # new items (xmr encode --kinds multimodal), one of them an old id with another caption
    extra = Split(name="valid")
    extra.items["new-one"] = Item("new-one", split.items[first].image, ["a new caption"])
    extra.items[old_id] = Item(old_id, split.items[old_id].image, ["an edited caption"])
    emb2 = tmp_path / "emb2"
    encode_split(enc, extra, emb2, kinds=("multimodal",), progress=False)
    code = main(["index", "add", str(idx), str(emb2)])
    assert code == 2 and "already" in capsys.readouterr().err  # a known id without --upsert
    run_cli(capsys, "index", "add", idx, emb2, "--upsert")
    index = load_index(idx)
    assert len(index) == n + 1 and index.backend.ntotal == (n + 1) * k
    want = enc.encode_items([split.items[first].image, split.items[old_id].image],
                            ["a new caption", "an edited caption"])  # fmt: skip
    np.testing.assert_allclose(index.vector("new-one"), want[0], atol=1e-5)
    np.testing.assert_allclose(index.vector(old_id), want[1], atol=1e-5)
    assert index.item(old_id)["captions"] == ["an edited caption"]
    run_cli(capsys, "index", "delete", idx, "new-one")
    assert load_index(idx).backend.ntotal == n * k
    # image-only vectors are not mixed into a multimodal index, and the error says what to do
    images = tmp_path / "images"
    encode_split(enc, extra, images, kinds=("images",), progress=False)
    code = main(["index", "add", str(idx), str(images)])
    assert code == 2 and "--kinds multimodal" in capsys.readouterr().err
    code = main(["index", "add", str(idx), str(images), "--kind", "images"])
    assert code == 2 and "the index holds multimodal items" in (err := capsys.readouterr().err)
    assert "kinds=" not in err and "--kinds multimodal" in err  # the flag, on the command line

    # POST /api/items: the upload is read with its caption, as encode_items does
    buf = io.BytesIO()
    Image.open(split.items[first].image.path).convert("RGB").save(buf, format="PNG")
    token = "multimodal-token-1"
    searcher = Searcher.from_index_dir(idx, device="cpu")
    server, thread, base = _serve(searcher, allow_writes=True, token=token)
    try:
        query = next(iter(split.queries.values())).text
        body = _get(f"{base}/api/search?" + urllib.parse.urlencode({"q": query, "k": 3}))
        local = Searcher.from_index_dir(idx, device="cpu").search_text(query, 3)
        assert [r["id"] for r in body["results"]] == [h.id for h in local]
        png = {"image": ("a.png", buf.getvalue(), "image/png")}
        assert _post_form(f"{base}/api/items", {"id": "up", "caption": "red shoe"}, png, token)
        assert _post_form(f"{base}/api/items", {"id": "bare"}, png, token)
        assert _get(f"{base}/api/health")["items"] == n + 2
        req = urllib.request.Request(f"{base}/api/items/bare", method="DELETE",
                                     headers={"authorization": f"Bearer {token}"})  # fmt: skip
        urllib.request.urlopen(req, timeout=30).close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    final = load_index(idx)
    assert "bare" not in final and final.backend.ntotal == (n + 1) * k
    upload = Image.open(io.BytesIO(buf.getvalue()))
    np.testing.assert_allclose(final.vector("up"), enc.encode_items([upload], ["red shoe"])[0],
                               atol=1e-4)  # fmt: skip

    # a Searcher whose model cannot read image and caption together refuses the add
    class ImagesAndTexts:
        """The BLIP-2 encoder without its encode_items."""

        def __init__(self, encoder):
            self.encoder = encoder
            self.embed_dim, self.spec = encoder.embed_dim, "images-and-texts"

        def encode_images(self, images, **kw):
            return self.encoder.encode_images(images, **kw)

    plain = Searcher(final, ImagesAndTexts(enc), check_model=False)
    with pytest.raises(XmrError, match="needs a model that reads image and caption together"):
        plain.encode_item(upload, "red shoe")


def test_a_served_add_to_weighted_fused_items_is_refused_not_stored_unfused(world, tmp_path):
    from xmr.encode import encode_split
    from xmr.search import Searcher
    from xmr.workflows.index_build import index_embeddings

    enc, split = world["encoder"], world["split"]
    encode_split(enc, split, tmp_path / "emb", kinds=("images", "captions"), progress=False)
    fused = index_embeddings(tmp_path / "emb", spec="Flat", fusion=0.5)
    item = next(iter(split.items.values()))
    with pytest.raises(XmrError, match="fused image\\+caption items.*xmr index add"):
        Searcher(fused, enc).encode_item(item.image, "a caption")


def test_evaluate_side_takes_the_caption_of_an_undecodable_image(world, tmp_path):
    """``encode_items(multimodal=True)`` (what ``evaluate`` / ``predict --fused blip2`` rank by)
    lists an image that cannot be decoded and gives its item its caption, as the weighted fusion
    and the multimodal index do, instead of failing the whole run."""
    from xmr.fusion import encode_items

    encoder = world["encoder"]
    mixed = _mixed_split(world["split"], tmp_path)
    got = encode_items(encoder, mixed.items, 4, multimodal=True)
    assert got.failed == ["broken"]
    row = got.ids.index("broken")
    caption = np.asarray(encoder.encode_texts(["a caption"]), dtype=np.float32)[0]
    np.testing.assert_allclose(got.multimodal[row], np.tile(caption, (encoder.image_vectors, 1)),
                               atol=1e-6)  # fmt: skip
    good = got.ids.index(next(iter(world["split"].items)))
    first = next(iter(world["split"].items.values()))
    direct = encoder.encode_items([first.image], [first.captions[0]], batch_size=4)[0]
    np.testing.assert_allclose(got.multimodal[good], direct, atol=1e-5)
