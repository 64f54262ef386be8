"""The synthetic e-commerce data set in the tianchi layout (`xmr data synth --layout tianchi`):
the files are what the tianchi reader reads, captions per split are as seed 001's, relevance is
complete, the output follows the seed, and the attributes are in the captions and the pixels."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from xmr.cli import main
from xmr.data.readers import detect_format, load_dataset
from xmr.data.synth_products import PATTERNS, PRODUCT_TYPES, ProductLook, ink_for, render_product
from xmr.data.synth_render import COLOUR_NAMES, PALETTE
from xmr.data.synth_tianchi import _TYPE_WORDS, QUERY_FILES, TIANCHI_MANIFEST, generate_tianchi
from xmr.errors import XmrError


@pytest.fixture(scope="module")
def tianchi_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tianchi") / "data"
    return generate_tianchi(root, n_train=120, n_valid=60, n_test=50, image_size=32, seed=3)


def _tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_files_are_the_tianchi_format(tianchi_set):
    assert detect_format(tianchi_set) == "tianchi"
    dataset = load_dataset(tianchi_set)
    assert list(dataset.splits) == ["train", "valid", "test"]
    train = json.loads((tianchi_set / QUERY_FILES["train"]).read_text())
    assert isinstance(train, list) and train
    assert set(train[0]) == {"query_id", "query_text", "image_id", "text_input"}
    assert isinstance(train[0]["image_id"], int) and isinstance(train[0]["query_id"], int)
    for split, n in (("valid", 60), ("test", 50)):
        lines = (tianchi_set / QUERY_FILES[split]).read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert all(set(r) == {"query_id", "query_text", "item_ids"} for r in records)
        assert all(isinstance(r["item_ids"], dict) and r["item_ids"] for r in records)
        assert len(list((tianchi_set / f"{split}_images").glob("*.jpg"))) == n
        assert len(dataset.splits[split].items) == n
    # ids are distinct over the splits
    all_items = [i for s in dataset.splits.values() for i in s.items]
    assert len(all_items) == len(set(all_items)) == 230
    all_queries = [q for s in dataset.splits.values() for q in s.queries]
    assert len(all_queries) == len(set(all_queries))


def test_three_captions_per_train_image_one_per_valid_item(tianchi_set):
    dataset = load_dataset(tianchi_set)
    train = dataset.splits["train"]
    assert all(len(item.captions) == 3 for item in train.items.values())
    assert all(len(set(item.captions)) == 3 for item in train.items.values())
    for split in ("valid", "test"):
        assert all(len(it.captions) == 1 for it in dataset.splits[split].items.values())
    # every item is relevant to some query; valid/test queries have at most 10 relevant items
    for name, split in dataset.splits.items():
        relevant = set().union(*split.relevance.values())
        assert relevant == set(split.items), name
        if name != "train":
            assert max(len(r) for r in split.relevance.values()) <= 10
    # a train query may recur over several records (one per relevant image)
    records = json.loads((tianchi_set / QUERY_FILES["train"]).read_text())
    assert max(Counter(r["query_id"] for r in records).values()) > 1


def _truth(root) -> dict:
    return json.loads((root / TIANCHI_MANIFEST).read_text())["splits"]


def test_queries_are_keywords_with_complete_relevance(tianchi_set):
    dataset = load_dataset(tianchi_set)
    truth = _truth(tianchi_set)
    keyword = {"dotted": "polka dot", "checked": "plaid", "star": "star print"}
    for name, split in dataset.splits.items():
        items = truth[name]["items"]
        assert set(items) == set(split.items)
        for qid, query in split.queries.items():
            named = truth[name]["queries"][qid]
            assert "ptype" in named and 2 <= len(named) <= 4
            assert not query.text.endswith(".") and len(query.text.split()) <= 7, query.text
            for value in named.values():  # the keywords name every attribute of the query
                assert keyword.get(value, value) in query.text, (query.text, value)
            # complete: relevant == every item of the split with all the named attributes
            matching = {i for i, a in items.items() if all(a[k] == v for k, v in named.items())}
            assert split.relevance[qid] == matching, query.text


# How a caption says each theme (its adjective or its phrase) and each pattern.
THEME_WORDS = {
    "Christmas": ("christmas", "festive"),
    "summer": ("summer",),
    "vintage": ("vintage",),
    "kids": ("kids'", "children"),
    "wedding": ("wedding",),
    "sports": ("sport",),
}
PATTERN_WORDS = {
    "plain": ("plain", "solid"),
    "striped": ("stripe",),
    "dotted": ("dot",),
    "checked": ("check",),
    "star": ("star",),
}


def test_attributes_are_in_the_captions(tianchi_set):
    dataset = load_dataset(tianchi_set)
    truth = _truth(tianchi_set)
    said = Counter()
    for name, split in dataset.splits.items():
        for iid, item in split.items.items():
            attrs = truth[name]["items"][iid]
            for cap in item.captions:
                low = cap.lower().replace(",", " ").replace(".", " ")
                assert any(w in low for w in _TYPE_WORDS[attrs["ptype"]]), cap
                ink = "black" if ink_for(attrs["colour"]) == (20, 20, 20) else "white"
                wrong = set(COLOUR_NAMES) - {attrs["colour"], ink}
                assert not wrong & set(low.split()), cap  # no colour it does not have
                said["colour"] += attrs["colour"] in low.split()
                said["theme"] += any(w in low for w in THEME_WORDS[attrs["theme"]])
                said["pattern"] += any(w in low for w in PATTERN_WORDS[attrs["pattern"]])
                said["n"] += 1
    # every caption names the type; colour, theme and pattern are each in most of them, not
    # in all (the phrasings name different attribute subsets)
    assert said["n"] == 3 * 120 + 60 + 50
    for attr in ("colour", "theme", "pattern"):
        assert 0.5 * said["n"] < said[attr] < said["n"], (attr, said)


def jpeg_pixels(image: Image.Image) -> np.ndarray:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92, subsampling=0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=float)


def nearest(rgb: np.ndarray, names) -> str:
    return min(names, key=lambda c: np.linalg.norm(rgb - np.asarray(PALETTE[c], dtype=float)))


def test_colour_and_pattern_are_in_the_pixels():
    rng = np.random.default_rng(0)
    for i in range(48):
        look = ProductLook(
            PRODUCT_TYPES[i % len(PRODUCT_TYPES)],
            COLOUR_NAMES[i % len(COLOUR_NAMES)],
            PATTERNS[i % len(PATTERNS)],
        )
        image, masks = render_product(look, 64, rng, with_masks=True)
        pixels = jpeg_pixels(image)
        body, ink = masks["body"], masks["pattern"]
        assert body.sum() >= 60, (look, body.sum())
        assert nearest(pixels[body].mean(axis=0), COLOUR_NAMES) == look.colour, look
        if look.pattern == "plain":
            assert ink.sum() == 0
        else:
            assert ink.sum() >= 15, (look, ink.sum())  # the pattern covers a visible share
            ink_rgb = np.asarray(ink_for(look.colour), dtype=float)
            assert np.linalg.norm(pixels[ink].mean(axis=0) - ink_rgb) < 60, look
    # the same look with masks draws the same image
    look = ProductLook("mug", "red", "striped")
    a, _ = render_product(look, 48, np.random.default_rng(5))
    b, _ = render_product(look, 48, np.random.default_rng(5), with_masks=True)
    assert a.tobytes() == b.tobytes()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = {"n_train": 20, "n_valid": 10, "n_test": 10, "image_size": 16}
    a = generate_tianchi(tmp_path / "a", seed=1, **kw)
    b = generate_tianchi(tmp_path / "b", seed=1, **kw)
    c = generate_tianchi(tmp_path / "c", seed=2, **kw)
    assert _tree_digest(a) == _tree_digest(b) != _tree_digest(c)
    # a re-run replaces an earlier output in place, with the same bytes
    generate_tianchi(a, seed=1, **kw)
    assert _tree_digest(a) == _tree_digest(b)


def test_output_directory_and_parameter_errors(tmp_path):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(XmrError):
        generate_tianchi(stranger, n_train=4, n_test=4)
    assert (stranger / "notes.txt").read_text() == "mine"
    with pytest.raises(XmrError, match="image_size"):
        generate_tianchi(tmp_path / "x", image_size=8)
    with pytest.raises(XmrError, match="n_colours"):
        generate_tianchi(tmp_path / "x", n_colours=1)


def test_cli_synth_tianchi_and_inspect(tmp_path, capsys):
    out = tmp_path / "shop"
    assert main(["data", "synth", "--layout", "tianchi", "--out", str(out), "--n-train", "30",
                 "--n-test", "12", "--n-valid", "10", "--image-size", "16", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "tianchi"
    assert {k: v["n_items"] for k, v in summary["splits"].items()} == {
        "train": 30,
        "valid": 10,
        "test": 12,
    }
    assert main(["data", "inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "tianchi"
    # an option of the other layout is refused, naming it
    bad = [
        "data",
        "synth",
        "--layout",
        "tianchi",
        "--out",
        str(tmp_path / "y"),
        "--attribute-sets",
        "4",
    ]
    assert main(bad) != 0
    assert "--attribute-sets is for --layout track2" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
