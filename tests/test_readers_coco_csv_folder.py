from __future__ import annotations

import json

import pytest

import xmr
from readers_helpers import assert_data_error, write_image
from xmr.data.readers.csv import CsvReader
from xmr.errors import DataError, XmrError


def karpathy(images):
    return {"dataset": "coco", "images": images}


def coco_image(filename, split, sentences, *, filepath="val2014", sentid=0):
    return {
        "filepath": filepath,
        "filename": filename,
        "split": split,
        "imgid": sentid,
        "sentences": [
            {"raw": s, "sentid": sentid + k, "tokens": s.split()} for k, s in enumerate(sentences)
        ],
    }


@pytest.fixture
def coco(tmp_path):
    names = [
        "COCO_val2014_000000391895.jpg",
        "COCO_val2014_000000522418.jpg",
        "COCO_val2014_000000184613.jpg",
    ]
    for k, name in enumerate(names):
        write_image(tmp_path / "val2014" / name, k)
    doc = karpathy(
        [
            coco_image(
                names[0], "test", ["A man riding a bike.", "A cyclist on a road."], sentid=0
            ),
            coco_image(names[1], "restval", ["A woman cutting a cake."], sentid=10),
            coco_image(names[2], "val", ["A boy with cows."], sentid=20),
        ]
    )
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    return tmp_path


def test_coco_karpathy(coco):
    assert xmr.detect_format(coco) == "coco"
    ds = xmr.load_dataset(coco)
    assert list(ds.splits) == ["train", "val", "test"]
    test = ds.splits["test"]
    name = "COCO_val2014_000000391895.jpg"
    assert list(test.items) == [name]
    assert test.queries["1"].text == "A cyclist on a road."
    assert test.relevance == {"0": {name}, "1": {name}}
    assert test.pairs[name] == ["A man riding a bike.", "A cyclist on a road."]
    assert test.items[name].captions == []  # the sentences are the queries: not item content
    assert list(ds.splits["train"].items) == ["COCO_val2014_000000522418.jpg"]  # restval
    assert list(xmr.load_dataset(coco / "dataset_coco.json", split="val").splits) == ["val"]


def test_flickr_layout_with_images_option(tmp_path):
    write_image(tmp_path / "pics" / "flickr30k-images" / "1000092795.jpg")
    doc = karpathy(
        [{"filename": "1000092795.jpg", "split": "train", "sentences": [{"raw": "Two men."}]}]
    )
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(doc))
    split = xmr.load_dataset(tmp_path, images=tmp_path / "pics").split()
    assert split.relevance == {"1000092795.jpg#0": {"1000092795.jpg"}}


@pytest.mark.parametrize(
    ("mutate", "field", "match"),
    [
        (lambda im: im.pop("filename"), "images[1].filename", "missing field"),
        (lambda im: im.update(filename="nope.jpg"), "images[1].filename", "image file not found"),
        (lambda im: im.update(split="holdout"), "images[1].split", "unknown split"),
        (lambda im: im["sentences"][0].pop("raw"), "images[1].sentences[0].raw", "missing field"),
        (
            lambda im: im["sentences"][0].update(sentid=0),
            "images[1].sentences[0].sentid",
            "duplicate",
        ),
        (lambda im: im.update(sentences="text"), "images[1].sentences", "expected a list"),
    ],
)
def test_coco_malformed(coco, mutate, field, match):
    path = coco / "dataset_coco.json"
    doc = json.loads(path.read_text())
    doc["images"][1]["split"] = "test"
    mutate(doc["images"][1])
    path.write_text(json.dumps(doc))
    err = assert_data_error(
        lambda: xmr.load_dataset(coco), file=path, line=None, field=field, match=match
    )
    assert err.file == str(path)
    ds = xmr.load_dataset(coco, skip_bad=True)
    assert ds.skipped == 1 and len(ds.splits["test"].items) == 1


def test_coco_bad_json(coco):
    path = coco / "dataset_coco.json"
    path.write_text('{"images": [\n{"filename": "x.jpg",,}\n]}')
    assert_data_error(lambda: xmr.load_dataset(coco), file=path, line=2, match="bad JSON")
    path.write_bytes(b'{"images": [\n{"filename": "\xff.jpg"}]}')
    assert_data_error(lambda: xmr.load_dataset(coco), file=path, line=2, match="not valid UTF-8")


def test_csv_open_clip_convention(tmp_path, monkeypatch):
    for k, name in enumerate(["a.jpg", "b.jpg", "c.png"]):
        write_image(tmp_path / "imgs" / name, k)
    table = tmp_path / "train.tsv"
    table.write_text(
        "filepath\ttitle\n"
        "imgs/a.jpg\ta red square\n"
        "imgs/b.jpg\ta red square\n"
        "imgs/a.jpg\tsomething, with a comma\n"
        "imgs/c.png\t\n"
    )
    assert xmr.detect_format(table) == "csv"
    split = xmr.load_dataset(table).split()
    assert split.name == "train"
    assert [q.text for q in split.queries.values()] == ["a red square", "something, with a comma"]
    assert split.relevance == {"q000000": {"imgs/a.jpg", "imgs/b.jpg"}, "q000001": {"imgs/a.jpg"}}
    assert "imgs/c.png" in split.items and "imgs/c.png" not in split.pairs
    # A directory of tables: one split per file; other usual column names.
    (tmp_path / "valid.csv").write_text("Image,Caption\nimgs/c.png,a green square\n")
    ds = xmr.load_dataset(tmp_path, format="csv")
    assert list(ds.splits) == ["train", "valid"]
    assert ds.splits["valid"].queries["q000000"].text == "a green square"
    # Quoted commas and explicit column names.
    other = tmp_path / "more" / "test.csv"
    other.parent.mkdir()
    other.write_text('img,caption,extra\n../imgs/a.jpg,"a, b",1\n')
    split = CsvReader(image_column="img", caption_column="caption").read(other).split()
    assert split.name == "test" and split.queries["q000000"].text == "a, b"


@pytest.mark.parametrize(
    ("row", "field", "match"),
    [
        ("imgs/none.jpg,x", "filepath", "image file not found"),
        (",x", "filepath", "empty image path"),
        ("imgs/a.jpg,x,y", None, "expected 2 columns, found 3"),
    ],
)
def test_csv_malformed(tmp_path, row, field, match):
    write_image(tmp_path / "imgs" / "a.jpg")
    table = tmp_path / "data.csv"
    table.write_text(f"filepath,title\nimgs/a.jpg,ok\n{row}\n")
    assert_data_error(lambda: xmr.load_dataset(table), file=table, line=3, field=field, match=match)
    assert xmr.load_dataset(table, skip_bad=True).skipped == 1


def test_csv_missing_columns(tmp_path):
    table = tmp_path / "data.csv"
    table.write_text("path_to_image,words\nx,y\n")
    with pytest.raises(XmrError, match="cannot detect"):
        xmr.detect_format(tmp_path)
    with pytest.raises(DataError, match="data.csv:1.*no column filepath"):
        xmr.load_dataset(table, format="csv")


def test_folder(tmp_path):
    write_image(tmp_path / "b.jpg", 0)
    write_image(tmp_path / "cars" / "a.png", 1)
    write_image(tmp_path / ".hidden" / "x.jpg", 2)
    (tmp_path / "notes.txt").write_text("not an image")
    assert xmr.detect_format(tmp_path) == "folder"
    ds = xmr.load_dataset(tmp_path)
    split = ds.split()
    assert split.name == "all" and list(split.items) == ["b.jpg", "cars/a.png"]
    assert not split.queries and not split.has_relevance


def test_detection(tmp_path):
    with pytest.raises(XmrError, match="no such file"):
        xmr.detect_format(tmp_path / "missing")
    (tmp_path / "readme.md").write_text("hello")
    with pytest.raises(XmrError, match="cannot detect"):
        xmr.detect_format(tmp_path)
    assert xmr.list_readers() == [
        "track2", "muge", "muge-t2i", "tianchi", "evalscope", "beir", "coco", "csv", "folder"
    ]  # fmt: skip
    with pytest.raises(XmrError, match="unknown dataset format 'nope'"):
        xmr.load_dataset(tmp_path, format="nope")
    for fmt in ("track2", "muge", "tianchi", "csv"):
        with pytest.raises(XmrError, match="no split found"):
            xmr.load_dataset(tmp_path, format=fmt)
    for fmt in ("evalscope", "beir", "coco"):
        with pytest.raises(XmrError, match="no such file|no Karpathy-split JSON"):
            xmr.load_dataset(tmp_path, format=fmt)
