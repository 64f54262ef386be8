"""The muge-t2i reader and the submission validator (library and ``xmr t2i validate``)."""

from __future__ import annotations

import json

import pytest

import xmr
from t2i_helpers import b64, make_image, write_submission, write_t2i_split
from xmr.cli import main
from xmr.errors import DataError
from xmr.eval.t2i_submission import read_t2i_submission, validate_t2i_submission


def test_reader_detects_and_reads_lazily_both_base64_alphabets(tmp_path):
    rows = write_t2i_split(tmp_path, "train", 6, urlsafe=True)
    val = write_t2i_split(tmp_path, "val", 4, seed=1)
    write_t2i_split(tmp_path, "test", 3, images=False)
    (tmp_path / "T2I_test.tsv").write_text("".join(f"{i}\n" for i, _ in rows[:3]))
    assert xmr.detect_format(tmp_path) == "muge-t2i"
    assert xmr.detect_format(tmp_path / "T2I_val.img.tsv") == "muge-t2i"
    data = xmr.load_dataset(tmp_path)
    assert list(data.splits) == ["train", "val", "test"]
    train = data.splits["train"]
    iid, text = rows[2]
    assert train.queries[iid].text == text and train.relevance[iid] == {iid}
    assert train.pairs[iid] == [text] and train.items[iid].captions == [text]
    ref = train.items[iid].image
    assert ref.kind == "tsv" and ref.line == 3  # indexed by offset, decoded on demand
    assert ref.open().size == (48, 48)
    assert data.splits["val"].items[val[0][0]].image.open().mode == "RGB"
    test = data.splits["test"]
    assert len(test.queries) == 3 and not test.items and not test.has_relevance
    only_val = xmr.load_dataset(tmp_path / "T2I_val.txt.tsv")
    assert list(only_val.splits) == ["val"]


def test_reader_errors_name_file_and_line(tmp_path):
    write_t2i_split(tmp_path, "val", 3)
    texts = tmp_path / "T2I_val.txt.tsv"
    lines = texts.read_text(encoding="utf-8").splitlines()
    texts.write_text("\n".join([lines[0], "unknownid\t一件衬衫", *lines[1:]]) + "\n", "utf-8")
    with pytest.raises(DataError, match=r"T2I_val.txt.tsv:2.*'unknownid' is not a line of"):
        xmr.load_dataset(tmp_path)
    texts.write_text("\n".join([lines[0], lines[0]]) + "\n", "utf-8")
    with pytest.raises(DataError, match=r"T2I_val.txt.tsv:2.*duplicate image id .*line 1"):
        xmr.load_dataset(tmp_path)
    texts.write_text("no tab here\n", "utf-8")
    with pytest.raises(DataError, match=r"T2I_val.txt.tsv:1.*no tab"):
        xmr.load_dataset(tmp_path)
    skipped = xmr.load_dataset(tmp_path, skip_bad=True)
    assert skipped.skipped == 1


def test_validate_accepts_a_good_submission(tmp_path, capsys):
    rows = write_t2i_split(tmp_path, "test", 5, images=False)
    pred = write_submission(tmp_path / "pred.tsv", rows)
    check = validate_t2i_submission(pred, tmp_path / "T2I_test.txt.tsv")
    assert check.ok and check.expected == 5 and len(check.images) == 5
    assert check.sizes == {(48, 48): 5} and check.modes == {"RGB": 5}
    ids, refs = read_t2i_submission(pred, tmp_path / "T2I_test.txt.tsv")
    assert ids == [i for i, _ in rows] and refs[0].open().size == (48, 48)
    assert main(["t2i", "validate", str(pred), "--texts", str(tmp_path / "T2I_test.txt.tsv")]) == 0
    assert "valid, 5 images (48x48: 5; modes RGB: 5)" in capsys.readouterr().out


def test_validate_lists_every_problem_with_its_line(tmp_path, capsys):
    rows = write_t2i_split(tmp_path, "test", 6, images=False)
    good = [f"{i}\t{b64(make_image(k), urlsafe=k % 2 == 1)}" for k, (i, _) in enumerate(rows)]
    truncated = b64(make_image(9)[:60])
    lines = [
        good[0],
        good[2],  # line 2: out of order (before rows[1])
        good[1],
        f"{rows[3][0]}\t!!!not base64!!!",  # line 4: undecodable base64
        good[0],  # line 5: duplicate
        "strangerid\t" + b64(make_image(1)),  # line 6: not in the texts
        "",  # line 7: an empty (extra) line
        f"{rows[4][0]}\t{truncated}",  # line 8: base64 fine, image truncated
        # rows[5] is missing
    ]
    pred = tmp_path / "pred.tsv"
    pred.write_text("\n".join(lines) + "\n", encoding="utf-8")
    check = validate_t2i_submission(pred, tmp_path / "T2I_test.txt.tsv")
    found = {(p.line, p.field): p.message for p in check.problems}
    assert "out of order" in found[(3, "id")]
    assert "bad base64" in found[(4, "image")]
    assert "duplicate id" in found[(5, "id")] and "line 1" in found[(5, "id")]
    assert "unknown id 'strangerid'" in found[(6, "id")]
    assert "empty line" in found[(7, None)]
    assert "undecodable image" in found[(8, "image")]
    assert f"missing id '{rows[5][0]}'" in found[(None, "id")]
    assert len(check.problems) == 7 and not check.ok
    texts = str(tmp_path / "T2I_test.txt.tsv")
    assert main(["t2i", "validate", str(pred), "--texts", texts, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and len(report["problems"]) == 7
    assert main(["t2i", "validate", str(pred), "--texts", texts]) == 1
    out = capsys.readouterr()
    assert f"{pred}:4: bad base64" in out.out and "7 problems" in out.err
    with pytest.raises(xmr.XmrError, match="not a valid submission"):
        read_t2i_submission(pred, texts)
