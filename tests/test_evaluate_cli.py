"""``xmr evaluate`` on small data sets in the Track2 and MUGE layouts."""

import base64
import csv
import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from xmr.cli import main
from xmr.eval.metrics import reference_metrics

KEYS = ["R@1", "R@5", "R@10", "MeanRecall", "mAP@10", "mAP@10_trec", "nDCG@10", "MRR"]
ATTRS = ["A white Audi.", "A red bus.", "A blue van."]
TEXTS = {  # text -> attribute it is labelled with
    "This is a white Audi.": ATTRS[0],
    "A white Audi car.": ATTRS[0],
    "This is a red bus.": ATTRS[1],
    "A blue van on the road.": ATTRS[2],
    "A man walking.": "0,1,0",
    "A woman walking.": "1,0,0",
}


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def track2(tmp_path):
    """12 images: 10 vehicles over three attribute strings, 2 pedestrians (one label field
    without its extension, as the seed's ``090000``)."""
    root = tmp_path / "track2"
    images = root / "test" / "test_images"
    images.mkdir(parents=True)
    texts_of = {a: [t for t, attr in TEXTS.items() if attr == a] for a in set(TEXTS.values())}
    lines, relevance = [], {t: set() for t in TEXTS}
    for i in range(10):
        name, attr = f"vehicle_{i:04d}.jpg", ATTRS[i % 3]
        lines.append((name, attr, texts_of[attr][i % len(texts_of[attr])]))
    lines += [("000001", "0,1,0", "A man walking."), ("000002.jpg", "1,0,0", "A woman walking.")]
    for name, attr, _ in lines:
        (images / (name if name.endswith(".jpg") else name + ".jpg")).write_bytes(jpeg_bytes())
        for text in texts_of[attr]:
            relevance[text].add(name)  # the label file's spelling: the scorer compares names
    (root / "test" / "test_label.txt").write_text("".join(f"{a}${b}${c}\n" for a, b, c in lines))
    # Without test_text.txt the query order is the texts' first appearance in the label file.
    order = list(dict.fromkeys(text for _, _, text in lines))
    return root, relevance, order


def track2_predictions(path, relevance, order, shift):
    """Per text, ``shift`` irrelevant images, then the relevant ones, then the rest (10 names)."""
    names = sorted({n for rel in relevance.values() for n in rel})
    results = []
    for text in order:
        ranked = [n for n in names if n not in relevance[text]][:shift] + sorted(relevance[text])
        ranked += [n for n in names if n not in ranked]
        results.append({"text": text, "image_names": ranked[:10]})
    path.write_text(json.dumps({"results": results}, indent=2))
    return {r["text"]: r["image_names"] for r in results}


def run_cli(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_track2_json_matches_the_definitions(tmp_path, capsys, track2):
    root, relevance, order = track2
    ranked = track2_predictions(tmp_path / "pred.json", relevance, order, shift=2)
    code, out, err = run_cli(
        capsys, "--predictions", tmp_path / "pred.json", "--data", root, "--json"
    )
    assert code == 0, err
    got = json.loads(out)
    want = reference_metrics(ranked, relevance)
    for key in KEYS:
        assert 0.0 <= got[f"t2i/{key}"] <= 1.0
        assert got[f"t2i/{key}"] == pytest.approx(want[key])
    assert got["t2i/R@1"] == 0.0 and got["t2i/R@5"] == 1.0
    assert got["t2i/vehicle/n_queries"] == 4 and got["t2i/pedestrian/n_queries"] == 2
    assert not any(k.startswith("i2t/") for k in got)


def test_track2_table_and_per_query_csv(tmp_path, capsys, track2):
    root, relevance, order = track2
    track2_predictions(tmp_path / "pred.json", relevance, order, shift=0)
    csv_path = tmp_path / "out" / "per_query.csv"
    code, out, err = run_cli(
        capsys, "--predictions", tmp_path / "pred.json", "--data", root, "--per-query", csv_path
    )
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["t2i", "all", "pedestrian", "vehicle"]
    r1 = next(r for r in rows if r.startswith("R@1 %"))
    assert r1.split()[2:] == ["100.00", "100.00", "100.00"]
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["id", "text", "first_hit_rank", "AP", "hits"]
    assert len(table) == 6 and all(row["first_hit_rank"] == "1" for row in table)
    assert all(float(row["AP"]) == 1.0 for row in table)
    assert {row["text"] for row in table} == set(TEXTS)


@pytest.fixture
def muge(tmp_path):
    root = tmp_path / "muge"
    root.mkdir()
    b64 = base64.b64encode(jpeg_bytes()).decode()
    (root / "MR_valid_imgs.tsv").write_text("".join(f"{1000 + i}\t{b64}\n" for i in range(12)))
    queries = [
        {"query_id": 1, "query_text": "红色连衣裙", "item_ids": [1000, 1001]},
        {"query_id": 2, "query_text": "蓝色牛仔裤", "item_ids": [1005]},
        {"query_id": 3, "query_text": "白色运动鞋", "item_ids": [1011]},
    ]
    (root / "MR_valid_queries.jsonl").write_text(
        "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries)
    )
    return root


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_muge_recall_as_the_official_scorer(tmp_path, capsys, muge):
    pred = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {"query_id": 1, "item_ids": [1001, *range(1002, 1011)]},  # hit at 1
            {
                "query_id": 2,
                "item_ids": [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009],
            },
            {"query_id": 3, "item_ids": list(range(1000, 1010))},  # miss
        ],
    )
    code, out, err = run_cli(capsys, "--predictions", pred, "--data", muge, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["t2i/R@1"] == pytest.approx(1 / 3)
    assert got["t2i/R@5"] == pytest.approx(1 / 3)
    assert got["t2i/R@10"] == pytest.approx(2 / 3)
    assert got["t2i/MeanRecall"] == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    assert got["t2i/mAP@10"] == pytest.approx((1 + 1 / 6) / 3)
    assert got["t2i/mAP@10_trec"] == pytest.approx((1 / 2 + 1 / 6) / 3)
    assert got["t2i/MRR"] == pytest.approx((1 + 1 / 6) / 3)
    assert got["t2i/NotFound"] == pytest.approx(1 / 3)


def test_image_to_text_predictions(tmp_path, capsys, muge):
    rows = [{"image_id": i, "text_ids": [1, 2, 3]} for i in (1000, 1001, 1005, 1011)]
    pred = write_jsonl(tmp_path / "i2t.jsonl", rows)
    code, out, err = run_cli(capsys, "--predictions", pred, "--data", muge, "--json", "--k", "3")
    assert code == 0, err
    got = json.loads(out)
    assert got["i2t/n_queries"] == 4
    assert got["i2t/R@1"] == 0.5 and got["i2t/R@3"] == 1.0
    assert got["i2t/MRR"] == pytest.approx((1 + 1 + 1 / 2 + 1 / 3) / 4)


def test_bad_prediction_file_is_one_clear_error(tmp_path, muge):
    pred = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {"query_id": 1, "item_ids": [1000] * 10},
            {"query_id": 2, "item_ids": [9999, *range(1000, 1009)]},
        ],
    )
    out = subprocess.run(
        [sys.executable, "-m", "xmr", "evaluate", "--predictions", str(pred), "--data", str(muge)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "3 problems" in out.stderr
    assert "line 1: query 1: repeated ids '1000'" in out.stderr
    assert "line 2: query 2: ids not in the data set: '9999'" in out.stderr
    assert "no prediction for query '3'" in out.stderr


def test_predictions_and_model_are_exclusive(tmp_path, capsys, muge):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--predictions", "x", "--model", "m", "--data", str(muge)])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_split_must_be_chosen_when_several_have_relevance(tmp_path, capsys, muge):
    for name in ("MR_valid_queries.jsonl", "MR_valid_imgs.tsv"):
        (muge / name.replace("valid", "test")).write_bytes((muge / name).read_bytes())
    pred = write_jsonl(
        tmp_path / "p.jsonl",
        [{"query_id": q, "item_ids": list(range(1000, 1010))} for q in (1, 2, 3)],
    )
    code, _, err = run_cli(capsys, "--predictions", pred, "--data", muge)
    assert code == 2 and "--split" in err and "test" in err and "valid" in err
    code, out, err = run_cli(
        capsys, "--predictions", pred, "--data", muge, "--split", "test", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["t2i/R@10"] == pytest.approx(2 / 3)
