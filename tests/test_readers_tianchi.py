from __future__ import annotations

import json

import pytest

import xmr
from readers_helpers import assert_data_error, b64, write_image

# Seed 001's examples: a train record (in a pretty-printed JSON array) and a valid record.
SEED_TRAIN_RECORD = """{
  "query_id": 1,
  "query_text": "Phone case clay",
  "image_id": 97905,
  "text_input": [
    "Blue glitter phone case with moon and clouds design",
    "Transparent TPU case with blue celestial pattern",
    "Dreamy night sky themed iPhone cover with sparkles"
  ]
}"""
SEED_VALID_RECORD = {
    "query_id": 248816,
    "query_text": "Christmas pillow",
    "item_ids": {
        "1006938": "Green Christmas tree shaped cushion with festive embroidery and star patterns.",
        "561749": "Christmas table runner with snowman and trees.",
        "936929": "Green velvet cushion with white embroidery, festive design.",
        "286314": "Festive gingerbread man plush toy.",
        "141999": "Cushion with Santa face design in cream and red.",
        "183846": "Red Christmas pillow with Santa and reindeer design.",
    },
}
TRAIN = "MR_train_queries_with_captions.json"
VALID = "MR_valid_queries_with_captions_standard_simple.jsonl"


def second_train_record(query_id=1, text="Phone case clay", image_id=12, captions=("Red case",)):
    return json.dumps(
        {
            "query_id": query_id,
            "query_text": text,
            "image_id": image_id,
            "text_input": list(captions),
        },
        indent=2,
    )


@pytest.fixture
def tianchi(tmp_path):
    (tmp_path / TRAIN).write_text(f"[\n{SEED_TRAIN_RECORD},\n{second_train_record()}\n]\n")
    (tmp_path / VALID).write_text(json.dumps(SEED_VALID_RECORD) + "\n")
    (tmp_path / "MR_train_imgs.tsv").write_text(f"97905\t{b64(0)}\n12\t{b64(1)}\n55\t{b64(2)}\n")
    for k, iid in enumerate(SEED_VALID_RECORD["item_ids"]):
        write_image(tmp_path / "valid_images" / f"{iid}.jpg", k)
    write_image(tmp_path / "valid_images" / "777.png", 5)  # in the gallery, wanted by no query
    return tmp_path


def test_seed_records_with_tsv_and_folder_images(tianchi):
    assert xmr.detect_format(tianchi) == "tianchi"
    ds = xmr.load_dataset(tianchi)
    assert list(ds.splits) == ["train", "valid"]
    train = ds.splits["train"]
    assert train.queries["1"].text == "Phone case clay"
    assert train.relevance == {"1": {"97905", "12"}}
    assert train.items["97905"].captions[0] == "Blue glitter phone case with moon and clouds design"
    assert len(train.items["97905"].captions) == 3
    assert train.items["97905"].image.kind == "tsv"
    assert train.items["55"].captions == []  # gallery image without a query
    assert train.pairs["12"] == ["Phone case clay"]
    valid = ds.splits["valid"]
    assert valid.relevance["248816"] == set(SEED_VALID_RECORD["item_ids"])
    assert valid.items["286314"].captions == ["Festive gingerbread man plush toy."]
    assert valid.items["286314"].image.path.endswith("286314.jpg")
    assert "777" in valid.items and len(valid.items) == 7


def test_query_file_alone_and_jsonl_train(tmp_path):
    # Train records as JSON Lines under a .json name; no image source: text-only items.
    lines = [json.loads(SEED_TRAIN_RECORD), json.loads(second_train_record(query_id=2, text="x"))]
    path = tmp_path / "train.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert xmr.detect_format(path) == "tianchi"
    split = xmr.load_dataset(path).split()
    assert split.name == "train" and split.items["97905"].image is None
    assert split.relevance == {"1": {"97905"}, "2": {"12"}}


def test_images_option_points_at_a_tsv(tianchi, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere") / "imgs.tsv"
    other.write_text(f"97905\t{b64(3)}\n12\t{b64(4)}\n")
    split = xmr.load_dataset(tianchi, split="train", images=other).split()
    assert set(split.items) == {"97905", "12"}


def test_array_errors_name_the_record_line(tianchi):
    train = tianchi / TRAIN
    bad = second_train_record(image_id=4242)
    train.write_text(f"[\n{SEED_TRAIN_RECORD},\n{bad}\n]\n")
    # The second record starts on line 12 of the pretty-printed array.
    assert_data_error(
        lambda: xmr.load_dataset(tianchi, split="train"),
        file=train,
        line=12,
        field="image_id",
        match="unknown image id '4242'",
    )
    ds = xmr.load_dataset(tianchi, split="train", skip_bad=True)
    assert ds.skipped == 1 and ds.split().relevance == {"1": {"97905"}}

    train.write_text(f'[\n{SEED_TRAIN_RECORD},\n{{"query_id": 2,,}}\n]\n')
    assert_data_error(
        lambda: xmr.load_dataset(tianchi, split="train", skip_bad=True),
        file=train,
        line=12,
        match="bad JSON",
    )


@pytest.mark.parametrize(
    ("record", "field", "match"),
    [
        ({"query_id": 3, "query_text": "q", "image_id": 12}, "text_input", "missing field"),
        (
            {"query_id": 3, "query_text": "q", "image_id": 12, "text_input": [""]},
            "text_input",
            "entry 0",
        ),
        (
            {"query_id": 3, "query_text": "q", "image_id": 12, "text_input": 5},
            "text_input",
            "expected a list",
        ),
        ({"query_id": 3, "query_text": "q"}, "item_ids", "missing field (or 'image_id')"),
        (
            {"query_id": 3, "query_text": "q", "item_ids": {"12": 7}},
            "item_ids",
            "caption of image '12'",
        ),
        ({"query_id": 3, "query_text": "q", "item_ids": "12"}, "item_ids", "expected an object"),
        (
            {"query_id": 1, "query_text": "other", "item_ids": ["12"]},
            "query_text",
            "had another text",
        ),
    ],
)
def test_malformed_records(tianchi, record, field, match):
    valid = tianchi / VALID
    good = {"query_id": 1, "query_text": "Phone case clay", "item_ids": {"12": "Red case"}}
    (tianchi / "MR_valid_imgs.tsv").write_text(f"12\t{b64(1)}\n")
    valid.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    assert_data_error(
        lambda: xmr.load_dataset(tianchi, split="valid"),
        file=valid,
        line=2,
        field=field,
        match=match,
    )
    assert xmr.load_dataset(tianchi, split="valid", skip_bad=True).skipped == 1
