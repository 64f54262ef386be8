from __future__ import annotations

import pytest

import xmr
from readers_helpers import assert_data_error, write_image
from xmr.data.readers.track2 import attribute_category
from xmr.errors import XmrError

# Seed 000's two example lines, byte for byte.
SEED_LINES = (
    "pmitevanhx.jpg$A white Audi.$This is a white Audi.\n"
    "090000$0,0,1,0,1,0,0,0,1,0,0,0,0,0,1,0,0,0,0,0,0$A female pedestrian is someone who walks "
    "on foot, is between 18 and 60 years old, with her body facing the camera. She is in a short "
    "sleeve shirt with an upper logo.\n"
)
PED_VECTOR = "0,0,1,0,1,0,0,0,1,0,0,0,0,0,1,0,0,0,0,0,0"


def make_split(root, split, lines, images, *, text=None, gt=None):
    folder = root / split
    for k, name in enumerate(images):
        write_image(folder / f"{split}_images" / name, k)
    (folder / f"{split}_label.txt").write_text(
        lines, encoding="utf-8"
    ) if lines is not None else None
    if text is not None:
        (folder / f"{split}_text.txt").write_text(text, encoding="utf-8")
    if gt is not None:
        (folder / f"{split}_gt.txt").write_text(gt, encoding="utf-8")
    return folder


def test_seed_example_lines(tmp_path):
    make_split(tmp_path, "train", SEED_LINES, ["pmitevanhx.jpg", "090000.jpg"])
    assert xmr.detect_format(tmp_path) == "track2"
    ds = xmr.load_dataset(tmp_path)
    split = ds.split("train")
    assert list(split.items) == ["pmitevanhx.jpg", "090000"]
    vehicle, ped = split.items["pmitevanhx.jpg"], split.items["090000"]
    assert (vehicle.category, vehicle.attribute) == ("vehicle", "A white Audi.")
    assert (ped.category, ped.attribute) == ("pedestrian", PED_VECTOR)
    # The extension-less field resolves to the existing file; the id stays as written.
    assert ped.image.path.endswith("090000.jpg")
    assert ped.image.open().size == (8, 8)
    texts = [q.text for q in split.queries.values()]
    assert texts[0] == "This is a white Audi."
    assert texts[1].startswith("A female pedestrian is someone who walks on foot")
    assert list(split.queries) == ["q000000", "q000001"]
    assert [q.category for q in split.queries.values()] == ["vehicle", "pedestrian"]
    assert split.relevance == {"q000000": {"pmitevanhx.jpg"}, "q000001": {"090000"}}
    assert split.pairs["090000"] == [texts[1]]


def test_attribute_category():
    assert attribute_category(PED_VECTOR) == "pedestrian"
    assert attribute_category(" 1, 0 ,1 ") == "pedestrian"
    assert attribute_category("A white Audi.") == "vehicle"


def test_relevance_through_shared_attributes(tmp_path):
    lines = (
        "a.jpg$A white Audi.$This is a white Audi.\n"
        "b.jpg$A white Audi.$A white Audi car.\n"
        "c.jpg$A red BMW.$This is a red BMW.\n"
        "c.jpg$A red BMW.$A red BMW car.\n"
        "d.jpg$A black Audi.$This is a white Audi.\n"  # a text with two attribute strings
        "e.jpg$A white Audi.$Extra $ sign in text.\n"
    )
    make_split(tmp_path, "train", lines, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    split = xmr.load_dataset(tmp_path / "train").split()
    by_text = {split.queries[q].text: r for q, r in split.relevance.items()}
    assert by_text["This is a white Audi."] == {"a.jpg", "b.jpg", "d.jpg", "e.jpg"}
    assert by_text["A white Audi car."] == {"a.jpg", "b.jpg", "e.jpg"}
    assert by_text["A red BMW car."] == {"c.jpg"}
    assert by_text["Extra $ sign in text."] == {"a.jpg", "b.jpg", "e.jpg"}
    assert split.pairs["c.jpg"] == ["This is a red BMW.", "A red BMW car."]
    assert split.item_relevance()["d.jpg"] == {"q000000"}


def test_test_split_text_order_gt_and_prediction_only(tmp_path):
    make_split(tmp_path, "train", "x.jpg$A red BMW.$This is a red BMW.\n", ["x.jpg"])
    # test: texts and images only (what a participant gets), plus a ground-truth file.
    make_split(
        tmp_path,
        "test",
        None,
        ["vehicle_0001886.jpg", "vehicle_0000196.png", "000007.jpg"],
        text="This is a grey Chery Sedan.\nThis is a black Volkswagen Sedan.\n\n",
        gt="This is a black Volkswagen Sedan.$vehicle_0000196$000007.jpg\n"
        "This is a grey Chery Sedan.$vehicle_0001886.jpg\n",
    )
    ds = xmr.load_dataset(tmp_path)
    assert list(ds.splits) == ["train", "test"]
    test = ds.splits["test"]
    assert sorted(test.items) == ["000007.jpg", "vehicle_0000196.png", "vehicle_0001886.jpg"]
    assert [q.text for q in test.queries.values()] == [
        "This is a grey Chery Sedan.",
        "This is a black Volkswagen Sedan.",
    ]
    assert test.relevance == {
        "q000000": {"vehicle_0001886.jpg"},
        "q000001": {"vehicle_0000196.png", "000007.jpg"},
    }
    # The ground truth may also sit beside the split folders.
    (tmp_path / "test" / "test_gt.txt").rename(tmp_path / "test_gt.txt")
    assert xmr.load_dataset(tmp_path, split="test").split().relevance == test.relevance
    (tmp_path / "test_gt.txt").unlink()
    test = xmr.load_dataset(tmp_path, split="test").split()
    assert len(test.queries) == 2 and len(test.items) == 3
    assert not test.has_relevance


def test_single_label_file_with_images_dir(tmp_path):
    write_image(tmp_path / "pics" / "pmitevanhx.jpg", 0)
    write_image(tmp_path / "pics" / "090000.jpg", 1)
    label = tmp_path / "labels.txt"
    label.write_text(SEED_LINES, encoding="utf-8")
    assert xmr.detect_format(label) == "track2"
    ds = xmr.load_dataset(label, images=tmp_path / "pics")
    assert list(ds.splits) == ["labels"]
    assert len(ds.split().items) == 2
    ds = xmr.load_dataset(label, split="train", images=tmp_path / "pics")
    assert list(ds.splits) == ["train"]


def test_missing_split_and_images_dir(tmp_path):
    make_split(tmp_path, "train", "a.jpg$A.$B.\n", ["a.jpg"])
    with pytest.raises(XmrError, match="no split 'valid'.*train"):
        xmr.load_dataset(tmp_path, split="valid")
    with pytest.raises(XmrError, match="nowhere_label.txt: no such file"):
        xmr.load_dataset(tmp_path / "nowhere_label.txt", format="track2")
    ds_dir = tmp_path / "train"
    (ds_dir / "train_images" / "a.jpg").unlink()
    (ds_dir / "train_images").rmdir()
    with pytest.raises(XmrError, match="images directory not found"):
        xmr.load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("line", "field", "match"),
    [
        ("a.jpg\n", "attribute", "expected 'image$attribute$text'"),
        ("a.jpg$A white Audi.\n", "text", "found 2"),
        ("$A white Audi.$This is a white Audi.\n", "image", "empty image"),
        ("a.jpg$ $This is a white Audi.\n", "attribute", "empty attribute"),
        ("a.jpg$A white Audi.$  \n", "text", "empty text"),
        (
            "nothere.jpg$A white Audi.$This is a white Audi.\n",
            "image",
            "no image file 'nothere.jpg'",
        ),
    ],
)
def test_malformed_label_lines(tmp_path, line, field, match):
    good = "a.jpg$A white Audi.$This is a white Audi.\n"
    folder = make_split(tmp_path, "train", good + line + good, ["a.jpg"])
    label = folder / "train_label.txt"
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path), file=label, line=2, field=field, match=match
    )
    ds = xmr.load_dataset(tmp_path, skip_bad=True)
    assert ds.skipped == 1
    assert "train_label.txt:2" in ds.skipped_examples[0]
    assert len(ds.split().items) == 1


def test_non_utf8_and_bad_gt(tmp_path):
    folder = make_split(tmp_path, "train", None, ["a.jpg"])
    label = folder / "train_label.txt"
    label.write_bytes(b"a.jpg$A.$fine\na.jpg$A.$caf\xe9\n")
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path),
        file=label,
        line=2,
        match="not valid UTF-8 (byte 0xe9 at column 13)",
    )
    assert xmr.load_dataset(tmp_path, skip_bad=True).skipped == 1

    label.write_text("a.jpg$A.$fine\n")
    gt = folder / "train_gt.txt"
    gt.write_text("fine$a.jpg\nfine$a.jpg$ghost.jpg\n")
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path),
        file=gt,
        line=2,
        field="image 2",
        match="unknown image 'ghost.jpg'",
    )


def test_synthetic_data_set_reads_consistently(tmp_path):
    from xmr.data.synth import generate_synthetic

    root = generate_synthetic(tmp_path / "syn", n_train=60, n_test=40, image_size=16, seed=1)
    ds = xmr.load_dataset(root)
    assert ds.format == "track2" and list(ds.splits) == ["train", "valid", "test"]
    test = ds.splits["test"]
    assert len(test.items) == 40 and test.has_relevance
    # The test ground truth file and the attribute rule agree.
    (root / "test" / "test_gt.txt").unlink()
    again = xmr.load_dataset(root, split="test").split()
    assert again.relevance == test.relevance
    assert list(again.queries.values()) == list(test.queries.values())


def test_a_directory_where_a_split_file_belongs_is_an_error(tmp_path):
    """A label file that is a directory used to be skipped silently: the split was read as
    'every image of the folder, no texts'."""
    folder = make_split(
        tmp_path, "test", None, ["a.jpg"], text="a red car\n", gt="a red car$a.jpg\n"
    )
    (folder / "test_label.txt").mkdir()
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path),
        file=folder / "test_label.txt",
        line=None,
        match="found a directory",
    )
