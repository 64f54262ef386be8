from __future__ import annotations

import json
import subprocess
import sys

import pytest

import xmr
from readers_helpers import b64, relevance_by_content, write_image
from xmr.cli import main
from xmr.data.convert import ImageExporter, convert_dataset, image_extension
from xmr.data.inspect import distribution, inspect_dataset
from xmr.errors import XmrError

LABELS = (
    "v1.jpg$A white Audi.$This is a white Audi.\n"
    "v2.jpg$A white Audi.$A white Audi car.\n"
    "v3.jpg$A red BMW.$This is a red BMW.\n"
    "090000$0,0,1,0,1$A female pedestrian in a short sleeve shirt.\n"
    "090001$0,0,1,0,1$A woman walking, short sleeves.\n"
    "090002$1,0,0,0,0$A man with a hat.\n"
)


@pytest.fixture
def track2(tmp_path):
    root = tmp_path / "track2"
    names = ["v1.jpg", "v2.jpg", "v3.jpg", "090000.jpg", "090001.png", "090002.jpg"]
    for k, name in enumerate(names):
        write_image(root / "train" / "train_images" / name, k)
    (root / "train" / "train_label.txt").write_text(LABELS)
    return root


@pytest.fixture
def muge(tmp_path):
    root = tmp_path / "muge"
    root.mkdir()
    (root / "MR_valid_imgs.tsv").write_text("".join(f"{i}\t{b64(i)}\n" for i in range(1, 5)))
    (root / "MR_valid_queries.jsonl").write_text(
        '{"query_id": 1, "query_text": "红色", "item_ids": [1, 2]}\n'
        '{"query_id": 2, "query_text": "蓝色", "item_ids": [2, 3]}\n',
        encoding="utf-8",
    )
    return root


def run_cli(*argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_distribution():
    assert distribution([]) is None
    assert distribution([1, 2, 6]) == {"min": 1, "mean": 3.0, "median": 2, "max": 6}


def test_inspect_json(track2, capsys):
    code, out, _ = run_cli("data", "inspect", track2, "--json", capsys=capsys)
    assert code == 0
    report = json.loads(out)
    assert report["format"] == "track2" and list(report["splits"]) == ["train"]
    train = report["splits"]["train"]
    assert (train["n_items"], train["n_queries"], train["n_relevant_pairs"]) == (6, 6, 10)
    assert train["categories"] == {"vehicle": 3, "pedestrian": 3}
    assert train["relevant_per_query"] == {"min": 1, "mean": 1.667, "median": 2.0, "max": 2}
    assert train["texts_per_item"]["max"] == 1
    assert train["n_undecodable_images"] is None  # not checked without --check-images
    code, out, _ = run_cli("data", "inspect", track2, capsys=capsys)
    assert "split train" in out and "relevant/query" in out and "pedestrian 3" in out


def test_inspect_reports_bad_images_and_skipped_records(track2, capsys):
    (track2 / "train" / "train_images" / "v2.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with open(track2 / "train" / "train_label.txt", "a") as fh:
        fh.write("broken line without fields\n")
    code, _, err = run_cli("data", "inspect", track2, capsys=capsys)
    assert code == 2 and "train_label.txt:7" in err and "Traceback" not in err
    code, out, _ = run_cli(
        "data", "inspect", track2, "--skip-bad", "--check-images", "--json", capsys=capsys
    )
    report = json.loads(out)
    assert report["n_skipped"] == 1 and "train_label.txt:7" in report["skipped_examples"][0]
    train = report["splits"]["train"]
    assert train["n_undecodable_images"] == 1 and "v2.jpg" in train["image_errors"][0]
    code, out, _ = run_cli("data", "inspect", track2, "--skip-bad", capsys=capsys)
    assert "skipped 1 bad record" in out


def test_undecodable_image_messages_name_the_file_not_a_python_object(tmp_path):
    from xmr.data.images import ImageRef
    from xmr.errors import DataError

    path = tmp_path / "x.jpg"
    for content, what in (
        (b"", "an empty file"),
        (b"plain text", "10 bytes in no image format PIL reads"),
    ):
        path.write_bytes(content)
        with pytest.raises(DataError) as err:
            ImageRef(path=str(path)).open()
        assert str(err.value) == f"{path}: undecodable image ({what})"


def test_inspect_library_counts_missing_files(track2):
    ds = xmr.load_dataset(track2)
    (track2 / "train" / "train_images" / "v3.jpg").unlink()
    report = inspect_dataset(ds)
    assert report["splits"]["train"]["n_missing_images"] == 1


@pytest.mark.parametrize("target", ["evalscope", "beir", "csv"])
def test_convert_round_trip_track2(track2, tmp_path, target, capsys):
    out = tmp_path / f"out_{target}"
    code, stdout, _ = run_cli("data", "convert", track2, "--to", target, out, capsys=capsys)
    assert code == 0 and "10 relevant pairs" in stdout
    original = xmr.load_dataset(track2).split()
    back = xmr.load_dataset(out)
    assert back.format == target
    converted = back.split()
    assert len(converted.items) == len(original.items)
    assert relevance_by_content(converted) == relevance_by_content(original)
    if target == "beir":
        assert set(converted.items) == set(original.items)  # BEIR keeps the ids
        assert set(converted.queries) == set(original.queries)


def test_convert_tsv_images_become_files(muge, tmp_path):
    ds = xmr.load_dataset(muge)
    summary = convert_dataset(ds, "evalscope", tmp_path / "es")
    assert summary["n_images_written"] == 4 and summary["n_relevant_pairs"] == 4
    back = xmr.load_dataset(tmp_path / "es").split()
    assert sorted(p.rsplit("/", 1)[1] for p in back.items) == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    assert relevance_by_content(back) == relevance_by_content(ds.split())
    # beir keeps ids; the image travels as an extra field relative to corpus.jsonl.
    convert_dataset(ds, "beir", tmp_path / "beir")
    beir = xmr.load_dataset(tmp_path / "beir").split()
    assert beir.relevance == ds.split().relevance
    assert beir.items["2"].image.read_bytes() == ds.split().items["2"].image.read_bytes()


def test_convert_refusals(track2, muge, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "file").write_text("x")
    code, _, err = run_cli("data", "convert", track2, "--to", "csv", out, capsys=capsys)
    assert code == 2 and "not empty" in err
    (tmp_path / "empty-file").write_bytes(b"")
    code, _, err = run_cli("data", "convert", track2, "--to", "csv", tmp_path / "empty-file",
                           capsys=capsys)  # fmt: skip
    assert code == 2 and "exists and is not a directory" in err
    with pytest.raises(XmrError, match="cannot convert to 'coco'"):
        convert_dataset(xmr.load_dataset(track2), "coco", tmp_path / "c")
    # Several splits: the user picks one.
    (muge / "MR_test_imgs.tsv").write_text(f"9\t{b64(0)}\n")
    with pytest.raises(XmrError, match="choose a split with split="):
        convert_dataset(xmr.load_dataset(muge), "csv", tmp_path / "c")
    # A bad image found while converting leaves no partial output.
    (muge / "MR_valid_imgs.tsv").write_text(f"1\t{b64(0)}\n2\tAAAA\n3\t{b64(1)}\n")
    ds = xmr.load_dataset(muge, split="valid", skip_bad=True)
    with pytest.raises(XmrError, match="MR_valid_imgs.tsv:2"):
        convert_dataset(ds, "csv", tmp_path / "partial")
    assert not (tmp_path / "partial").exists()
    assert not list(tmp_path.glob(".partial*"))


def test_exported_image_names(tmp_path):
    exporter = ImageExporter(tmp_path / "partial", tmp_path / "final")
    assert exporter._destination("vehicle_0001886.jpg", ".jpg").name == "vehicle_0001886.jpg"
    assert exporter._destination("090000", ".jpg").name == "090000.jpg"
    assert exporter._destination("cars/a.png", ".png").name == "cars__a.png"
    assert exporter._destination("photo", "").name == "photo"
    assert exporter._destination("红色 裙", ".jpg").name == "红色_裙.jpg"
    assert exporter._destination("090000.JPG", ".jpg").name == "090000-2.jpg"  # no clash


def test_image_extension():
    assert image_extension(b"\x89PNG\r\n\x1a\n....") == ".png"
    assert image_extension(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ".webp"
    assert image_extension(b"hello") is None


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "syn"
    code, stdout, _ = run_cli(
        "data", "synth", out, "--n-train", 12, "--n-test", 6, "--image-size", 16, "--seed", 3,
        capsys=capsys,
    )  # fmt: skip
    assert code == 0 and "train 12 images" in stdout and "test 6 images" in stdout
    assert xmr.detect_format(out) == "track2"


def test_cli_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "MR_train_queries.jsonl"
    bad.write_text('{"query_id": 1, "query_text": "x", "item_ids": [5]}\n')
    out = subprocess.run(
        [sys.executable, "-m", "xmr", "data", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "MR_train_queries.jsonl:1, field 'item_ids': unknown image id '5'" in out.stderr
