"""Readers refuse what they cannot parse instead of taking it as something else, skip a leading
UTF-8 byte order mark in every text file, and call an empty record file an error (issue 13)."""

from __future__ import annotations

import json
import shutil

import pytest

import xmr
from readers_helpers import assert_data_error, b64, image_bytes, write_image
from xmr.cli import main
from xmr.data.synth import generate_synthetic
from xmr.errors import DataError

BOM = b"\xef\xbb\xbf"
TEXT_SUFFIXES = (".txt", ".tsv", ".jsonl", ".json", ".csv")


# --- one small data set per format ----------------------------------------------------------


def _track2(root):
    generate_synthetic(root, n_train=6, n_test=4, n_valid=0, image_size=16, seed=3)


def _muge(root):
    root.mkdir()
    (root / "MR_valid_imgs.tsv").write_text(f"1001\t{b64(0)}\n1002\t{b64(1)}\n")
    (root / "MR_valid_queries.jsonl").write_text(
        '{"query_id": 7, "query_text": "红色", "item_ids": [1001]}\n'
        '{"query_id": 8, "query_text": "绿色", "item_ids": [1002, 1001]}\n',
        encoding="utf-8",
    )


def _tianchi(root):
    root.mkdir()
    records = [
        {"query_id": 1, "query_text": "case", "image_id": 11, "text_input": ["red case"]},
        {"query_id": 2, "query_text": "pillow", "image_id": 12, "text_input": ["a pillow"]},
    ]
    (root / "MR_train_queries_with_captions.json").write_text(json.dumps(records, indent=1))
    (root / "MR_train_imgs.tsv").write_text(f"11\t{b64(0)}\n12\t{b64(1)}\n")


def _evalscope(root):
    write_image(root / "images" / "a.jpg", 0)
    write_image(root / "images" / "b.jpg", 1)
    lines = [
        {"image_path": "images/a.jpg", "query": ["a red square", "red"]},
        {"image_path": "images/b.jpg", "query": ["a green square"]},
    ]
    (root / "image_queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def _beir(root):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "Cars", "text": "a red car"}\n{"_id": "d2", "text": "a van"}\n'
    )
    (root / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "red"}\n{"_id": "q2", "text": "van"}\n'
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")


def _coco(root):
    write_image(root / "val2014" / "x.jpg", 0)
    doc = {
        "images": [
            {
                "filepath": "val2014",
                "filename": "x.jpg",
                "split": "test",
                "sentences": [{"raw": "A cat.", "sentid": 1}],
            }
        ]
    }
    (root / "dataset_coco.json").write_text(json.dumps(doc))


def _csv(root):
    write_image(root / "a.jpg", 0)
    write_image(root / "b.jpg", 1)
    (root / "test.csv").write_text("filepath,title\na.jpg,a red square\nb.jpg,a green one\n")


BUILDERS = {
    "track2": _track2,
    "muge": _muge,
    "tianchi": _tianchi,
    "evalscope": _evalscope,
    "beir": _beir,
    "coco": _coco,
    "csv": _csv,
}


def _summary(dataset):
    """What a reader made of the files: ids, texts, relevance and the image bytes."""
    out = {}
    for name, split in dataset.splits.items():
        out[name] = {
            "items": {
                iid: (item.image.read_bytes() if item.image else None, item.captions)
                for iid, item in split.items.items()
            },
            "queries": {qid: q.text for qid, q in split.queries.items()},
            "relevance": {qid: sorted(ids) for qid, ids in split.relevance.items()},
        }
    return out


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_a_leading_bom_in_every_text_file_is_skipped(tmp_path, fmt):
    plain, marked = tmp_path / "plain", tmp_path / "bom"
    BUILDERS[fmt](plain)
    shutil.copytree(plain, marked)
    changed = 0
    for path in marked.rglob("*"):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            path.write_bytes(BOM + path.read_bytes())
            changed += 1
    assert changed, "the fixture has text files"
    expected = _summary(xmr.load_dataset(plain, fmt))
    got = _summary(xmr.load_dataset(marked, fmt))
    # The ids are compared by value; image bytes prove a TSV line is still read at its offset.
    assert got == expected
    assert not any("\ufeff" in iid for s in got.values() for iid in s["items"])


def test_bom_muge_tsv_first_id_is_clean_and_its_image_reads(tmp_path):
    """The attack run's case: '\\ufeff1001' became the first id, then 'unknown image id 1001'."""
    _muge(tmp_path / "m")
    tsv = tmp_path / "m" / "MR_valid_imgs.tsv"
    tsv.write_bytes(BOM + tsv.read_bytes())
    split = xmr.load_dataset(tmp_path / "m").splits["valid"]
    assert list(split.items) == ["1001", "1002"]
    assert split.relevance["7"] == {"1001"}
    assert split.items["1001"].image.read_bytes() == image_bytes(0)


# --- lines taken as something else are refused ----------------------------------------------


@pytest.fixture
def track2(tmp_path):
    _track2(tmp_path / "t2")
    return tmp_path / "t2"


def test_a_ground_truth_line_without_dollar_is_refused(track2):
    gt = track2 / "test" / "test_gt.txt"
    lines = gt.read_text(encoding="utf-8").splitlines()
    text, first_image = lines[0].split("$")[:2]
    lines.insert(1, f"{text} {first_image}")  # the '$' lost: one field, text and image run together
    gt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert_data_error(
        lambda: xmr.load_dataset(track2, split="test"),
        file=gt,
        line=2,
        field="image 1",
        match="found no '$'",
    )
    # With skip_bad the line is counted and the real queries keep their relevance.
    skipped = xmr.load_dataset(track2, split="test", skip_bad=True)
    assert skipped.skipped == 1 and "test_gt.txt:2" in skipped.skipped_examples[0]
    split = skipped.splits["test"]
    texts = {q.text for q in split.queries.values()}
    assert f"{text} {first_image}" not in texts
    qid = next(q.id for q in split.queries.values() if q.text == text)
    assert split.relevance[qid]


def test_a_text_file_line_with_dollar_is_refused(track2):
    texts = track2 / "test" / "test_text.txt"
    lines = texts.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2] + "$vehicle_0000001.jpg"
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert_data_error(
        lambda: xmr.load_dataset(track2, split="test"),
        file=texts,
        line=3,
        field="text",
        match="holds '$'",
    )
    assert xmr.load_dataset(track2, split="test", skip_bad=True).skipped == 1


@pytest.mark.parametrize(
    "name", ["train/train_label.txt", "test/test_text.txt", "test/test_gt.txt"]
)
@pytest.mark.parametrize("content", [b"", b"\n\n  \n", BOM])
def test_an_empty_track2_file_is_an_error_naming_it(track2, capsys, name, content):
    (track2 / name).write_bytes(content)
    split = name.split("/")[0]
    with pytest.raises(DataError, match="empty file") as info:
        xmr.load_dataset(track2, split=split, skip_bad=True)  # not a bad record: never skipped
    assert info.value.file == str(track2 / name)
    assert main(["data", "inspect", str(track2), "--split", split]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xmr: error: {track2 / name}: empty file: it holds no records"]


@pytest.mark.parametrize(
    "fmt, name",
    [
        ("muge", "MR_valid_imgs.tsv"),
        ("muge", "MR_valid_queries.jsonl"),
        ("tianchi", "MR_train_queries_with_captions.json"),
        ("evalscope", "image_queries.jsonl"),
        ("beir", "corpus.jsonl"),
        ("beir", "queries.jsonl"),
        ("beir", "qrels/test.tsv"),
        ("coco", "dataset_coco.json"),
    ],
)
def test_an_empty_record_file_is_an_error_in_every_format(tmp_path, fmt, name):
    BUILDERS[fmt](tmp_path / "d")
    (tmp_path / "d" / name).write_bytes(b"")
    with pytest.raises(DataError, match="empty file") as info:
        xmr.load_dataset(tmp_path / "d", fmt)
    assert info.value.file == str(tmp_path / "d" / name)


def test_swapped_tsv_columns_are_refused(tmp_path):
    _muge(tmp_path / "m")
    tsv = tmp_path / "m" / "MR_valid_imgs.tsv"
    tsv.write_text(f"1001\t{b64(0)}\n{b64(1)}\t1002\n")
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path / "m"),
        file=tsv,
        line=2,
        field="id",
        match="columns swapped",
    )


def test_a_nan_qrels_score_is_refused(tmp_path):
    _beir(tmp_path / "b")
    qrels = tmp_path / "b" / "qrels" / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\tnan\n")
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path / "b"), file=qrels, line=2, field="score", match="NaN"
    )
