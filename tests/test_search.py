"""tiny model -> encode -> index -> search, through the library and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("faiss")

from builders import make_images, make_split, tiny_model  # noqa: E402
from xmr.encode import encode_split, load_embeddings  # noqa: E402
from xmr.errors import ModelMismatchError, XmrError  # noqa: E402
from xmr.search import Searcher  # noqa: E402
from xmr.workflows.index_build import add_embeddings, index_embeddings  # noqa: E402


@pytest.fixture(scope="module")
def other_encoder(tmp_path_factory):
    """An encoder of the same shape as ``tiny_clip`` with other weights (seed 5)."""
    from xmr.models import create_encoder

    return create_encoder(
        f"hf:{tiny_model(tmp_path_factory.mktemp('other') / 'm', seed=5)}", device="cpu"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_clip):
    from xmr.models import create_encoder

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("e2e")
    model_dir = tiny_clip
    encoder = create_encoder(f"hf:{model_dir}", device="cpu")
    split = make_split(make_images(root / "images", n=12))
    encode_split(encoder, split, root / "emb", batch_size=4, progress=False)
    index = index_embeddings(root / "emb", root / "index")
    return {
        "root": root,
        "model_dir": model_dir,
        "encoder": encoder,
        "split": split,
        "index": index,
    }


def test_text_search_ranks_like_brute_force(built):
    searcher = Searcher.from_index_dir(built["root"] / "index")
    images = load_embeddings(built["root"] / "emb", "images")
    query = "a white car number 3"
    results = searcher.search_text(query, k=5)
    q = built["encoder"].encode_texts([query])[0]
    scores = images.vectors @ q
    order = np.argsort(-scores)[:5]
    assert [r.id for r in results] == [images.ids[i] for i in order]
    np.testing.assert_allclose([r.score for r in results], scores[order], atol=1e-5)
    assert [r.rank for r in results] == [1, 2, 3, 4, 5]
    top = results[0]
    assert top.image["path"].endswith(".jpg") and top.captions and top.category in ("a", "b")
    assert top.to_dict()["id"] == top.id

    batch = searcher.search_texts([query, "photo 1"], k=3)
    assert [r.id for r in batch[0]] == [r.id for r in results[:3]]


def test_image_item_and_category_queries(built):
    searcher = Searcher.from_index_dir(built["root"] / "index")
    item = built["split"].items["it004"]
    hit = searcher.search_image(item.image.path, k=1)[0]
    assert hit.id == "it004" and hit.score == pytest.approx(1.0, abs=1e-4)
    similar = searcher.search_item("it004", k=3)
    assert len(similar) == 3 and "it004" not in [r.id for r in similar]
    assert all(r.category == "a" for r in searcher.search_text("photo", k=6, category="a"))
    assert searcher.categories() == {"a": 6, "b": 6}
    assert searcher.item("it004")["captions"] == ["photo 4"]
    assert searcher.image_ref("it004").path == item.image.path
    info = searcher.info()
    assert info["count"] == 12 and info["dim"] == 32 and info["index"]["type"] == "Flat"
    assert info["model"]["spec"] == f"hf:{built['model_dir']}"
    with pytest.raises(XmrError, match="unknown item id"):
        searcher.item("../../etc/passwd")
    with pytest.raises(XmrError, match="k must be"):
        searcher.search_text("x", k=0)


def test_empty_and_undecodable_query_texts_are_errors(built):
    """Not silently ranked: an empty text, and a command-line argument that was not UTF-8
    (Python hands it over as lone surrogates, which the tokenizer rejects with a TypeError)."""
    searcher = Searcher.from_index_dir(built["root"] / "index")
    for text in ("", "  \t"):
        with pytest.raises(XmrError, match="query text is empty"):
            searcher.search_text(text)
    with pytest.raises(XmrError, match="query text 2 is empty"):
        searcher.search_texts(["red", " "])
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")
    with pytest.raises(XmrError, match="not valid UTF-8"):
        searcher.search_text(bad)
    with pytest.raises(XmrError, match="not valid UTF-8"):
        built["encoder"].encode_texts(["fine", bad])
    with pytest.raises(XmrError, match="must be a string"):
        built["encoder"].encode_texts([b"bytes"])


def test_another_model_is_refused(built, other_encoder, tmp_path):
    from xmr.models import create_encoder

    other = other_encoder
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        Searcher.from_index_dir(built["root"] / "index", model=other)
    wider = create_encoder(f"hf:{tiny_model(tmp_path / 'wide', embed_dim=48)}", device="cpu")
    with pytest.raises(ModelMismatchError, match="48-d"):
        Searcher.from_index_dir(built["root"] / "index", model=wider)
    # The same weights saved elsewhere are the same model.
    copy = built["encoder"].save(tmp_path / "copy")
    searcher = Searcher.from_index_dir(built["root"] / "index", model=f"hf:{copy}")
    assert searcher.search_text("photo 2", k=1)


def test_add_new_items_without_rebuild(built, other_encoder, tmp_path):

    index_dir = tmp_path / "index"
    index_embeddings(built["root"] / "emb", index_dir, "Flat")
    more = make_split(make_images(tmp_path / "more", n=3, seed=9))
    for old_id in list(more.items):
        more.items[f"new-{old_id}"] = more.items.pop(old_id)
        more.items[f"new-{old_id}"].id = f"new-{old_id}"
    encode_split(built["encoder"], more, tmp_path / "emb2", kinds=("images",), progress=False)
    index, added = add_embeddings(index_dir, tmp_path / "emb2")
    assert added == 3 and len(Searcher.from_index_dir(index_dir).index) == 15
    with pytest.raises(XmrError, match="already in the index"):
        add_embeddings(index_dir, tmp_path / "emb2")
    other = other_encoder
    encode_split(other, more, tmp_path / "emb3", kinds=("images",), progress=False)
    with pytest.raises(ModelMismatchError):
        add_embeddings(index_dir, tmp_path / "emb3")


def _track2(root, n=8):
    from PIL import Image

    images = root / "test" / "test_images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n):
        name = f"vehicle_{i:07d}.jpg"
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8")).save(images / name)
        attr, text = ("A white SUV.", "a white suv") if i % 2 else ("A red sedan.", "a red car")
        lines.append(f"{name}${attr}${text}")
    (images / "vehicle_0000099.jpg").write_bytes(b"broken")
    lines.append("vehicle_0000099.jpg$A red sedan.$a red car")
    (root / "test" / "test_label.txt").write_text("\n".join(lines) + "\n")
    return root


def test_cli_encode_index_search(built, tmp_path, capsys):
    pytest.importorskip("xmr.data.readers.track2")
    from xmr.cli import main

    data = _track2(tmp_path / "data")
    model = f"hf:{built['model_dir']}"
    emb, index = tmp_path / "emb", tmp_path / "index"
    args = f"encode --model {model} --data {data} --format track2 --out {emb} --batch-size 4"
    assert main([*args.split(), "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "images: 8 of 9 encoded" in out and "vehicle_0000099.jpg" in out

    assert main(["index", "build", str(emb), "--out", str(index)]) == 0
    assert "exact search (Flat)" in capsys.readouterr().out
    assert main(["search", str(index), "a white suv", "-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 3 and {"id", "score", "image", "attribute"} <= set(results[0])
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]

    assert main(["search", str(index), "a red car", "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "vehicle_" in text and "A " in text

    image = data / "test" / "test_images" / "vehicle_0000003.jpg"
    assert main(["search", str(index), "--image", str(image), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == "vehicle_0000003.jpg"

    approx = tmp_path / "approx"
    assert main(["index", "build", str(emb), "--out", str(approx), "--spec", "HNSW32"]) == 0
    assert "recall@8 vs exact search: 1.0000 (2 queries from the texts)" in capsys.readouterr().out
    assert main(["index", "info", str(approx)]) == 0
    info = capsys.readouterr().out
    assert "HNSW32" in info and "approximate" in info and "recall@" in info

    assert main(["search", str(index), "   "]) == 2
    assert "empty" in capsys.readouterr().err


class _OneAtATime:
    """An encoder wrapper that records how many calls were inside it at once."""

    def __init__(self, inner):
        import threading

        self.inner, self.inside, self.most = inner, 0, 0
        self._count = threading.Lock()

    def _enter(self):
        import time

        with self._count:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.01)  # widen the window in which an unserialised call would overlap

    def _leave(self):
        with self._count:
            self.inside -= 1

    def encode_texts(self, texts):
        self._enter()
        try:
            return self.inner.encode_texts(texts)
        finally:
            self._leave()

    def encode_images(self, images):
        self._enter()
        try:
            return self.inner.encode_images(images)
        finally:
            self._leave()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_encoder_calls_are_serialised_across_threads(built):
    from concurrent.futures import ThreadPoolExecutor

    base = Searcher.from_index_dir(built["root"] / "index")
    guarded = _OneAtATime(base.encoder)
    searcher = Searcher(base.index, guarded)
    image = built["split"].items["it004"].image.path
    jobs = [("text", f"photo {i}") for i in range(8)] + [("image", image)] * 4
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [
            pool.submit(searcher.search_text if kind == "text" else searcher.search_image, q, k=3)
            for kind, q in jobs
        ]
        results = [f.result() for f in futures]
    assert guarded.most == 1
    assert all(len(r) == 3 for r in results)
    assert [r.id for r in results[0]] == [r.id for r in base.search_text("photo 0", k=3)]


def test_search_text_batch_gives_each_query_its_own_k_and_category(built):
    from xmr.search import TextQuery

    searcher = Searcher.from_index_dir(built["root"] / "index")
    asks = [TextQuery("photo 1", 2), TextQuery("photo 1", 5, "a"), TextQuery("photo 7", 1, "b")]
    for ask, row in zip(asks, searcher.search_text_batch(asks), strict=True):
        expected = searcher.search_text(ask.text, ask.k, category=ask.category)
        assert [r.id for r in row] == [r.id for r in expected]
        assert len(row) == ask.k and [r.rank for r in row] == list(range(1, ask.k + 1))


def test_a_failed_save_leaves_the_index_as_it_was(built, tmp_path):
    import errno
    import hashlib

    from xmr.index import load_index

    index_dir = tmp_path / "index"
    index_embeddings(built["root"] / "emb", index_dir, "Flat")
    searcher = Searcher.from_index_dir(index_dir)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in index_dir.iterdir()}
    vector = searcher.encode_texts(["a new item"])[0]
    record = {"id": "new", "image": None, "captions": ["a new item"], "attribute": None}

    def full_disk(directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    searcher.index.backend.save = full_disk
    with pytest.raises(OSError, match="No space left"):
        searcher.add_item(vector, record)
    assert "new" not in searcher and len(searcher) == 12
    assert searcher.missing_sides() == {"image": 0, "caption": 0}
    assert "new" not in [r.id for r in searcher.search_vectors(vector[None, :], 12)[0]]
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in index_dir.iterdir()}
    assert after == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    searcher.add_item(vector, record)  # the reloaded index saves normally
    assert (
        "new" in load_index(index_dir)
        and searcher.search_vectors(vector[None, :], 1)[0][0].id == "new"
    )
    assert searcher.missing_sides() == {"image": 1, "caption": 0}
