"""Prediction files: detection, reading, writing, and validation like the official scorers."""

import json

import pytest

from xmr.data.dataset import Item, Query, Split
from xmr.data.images import ImageRef
from xmr.errors import DataError, XmrError
from xmr.eval import (
    PredictionError,
    detect_kind,
    evaluate_predictions,
    read_predictions,
    validate_predictions,
    write_predictions,
)
from xmr.eval.predictions import UnknownKindError

ITEMS = [f"{n:06d}" for n in range(12)]  # numeric ids, as MUGE's


@pytest.fixture
def split(tmp_path):
    s = Split("valid")
    for iid in ITEMS:
        s.items[iid] = Item(iid, ImageRef(path=str(tmp_path / f"{iid}.jpg")), captions=[f"c{iid}"])
    for q in range(3):
        s.queries[str(100 + q)] = Query(str(100 + q), f"text number {q}")
    s.relevance = {"100": {ITEMS[0]}, "101": {ITEMS[1], ITEMS[2]}, "102": {ITEMS[3]}}
    return s


def rankings(split, k=10):
    return {q: ITEMS[int(q) - 100 : int(q) - 100 + k] for q in split.queries}


def problems_of(exc_info):
    return [msg for _, msg in exc_info.value.problems]


@pytest.mark.parametrize("kind", ["track2", "muge", "cnclip", "trec"])
def test_round_trip_t2i(tmp_path, split, kind):
    path = write_predictions(tmp_path / f"p.{kind}", rankings(split), kind=kind, split=split)
    assert detect_kind(path) == kind
    pf = read_predictions(path)
    assert pf.kind == kind
    direction, got = validate_predictions(pf, split)
    assert direction == "t2i" and got == rankings(split)
    seen = []  # the fixture's ids have leading zeros: JSON strings, which the scorers refuse
    metrics, rows = evaluate_predictions(path, split, on_warning=seen.append)
    assert len(seen) == (kind in ("muge", "cnclip"))
    assert metrics["t2i/R@1"] == pytest.approx(2 / 3)  # query 101 has item 1 first, relevant
    assert [r["first_hit_rank"] for r in rows] == [1, 1, 2]


@pytest.mark.parametrize("kind", ["cnclip-i2t", "trec"])
def test_round_trip_i2t(tmp_path, split, kind):
    inverse = split.item_relevance()
    ranked = {iid: sorted(split.queries) for iid in inverse}
    path = write_predictions(tmp_path / "p.txt", ranked, kind=kind)
    if kind == "cnclip-i2t":
        assert json.loads(path.read_text().splitlines()[0]) == {
            "image_id": "000000",
            "text_ids": [100, 101, 102],
        }
    seen = []
    metrics, rows = evaluate_predictions(path, split, k=3, on_warning=seen.append)
    assert len(seen) == (kind == "cnclip-i2t")
    assert metrics["i2t/n_queries"] == 4
    assert metrics["i2t/R@1"] == 0.25  # only item 0's first text (100) is relevant
    assert rows[0]["text"] == "c000000"


def test_muge_ids_are_written_as_integers(tmp_path, split):
    path = write_predictions(tmp_path / "p.jsonl", {"100": ["000001", "7", "x1"]}, kind="muge")
    assert json.loads(path.read_text()) == {"query_id": 100, "item_ids": ["000001", 7, "x1"]}


def test_track2_is_strict_json_in_split_order(tmp_path, split):
    path = write_predictions(tmp_path / "p.json", rankings(split), kind="track2", split=split)
    data = json.loads(path.read_text())
    assert [r["text"] for r in data["results"]] == [q.text for q in split.queries.values()]
    # The id as the data set spells it (the label file's spelling), not the image file's name:
    # the official scorer compares names exactly.
    assert data["results"][0]["image_names"][0] == "000000"


def test_track2_names_may_omit_the_extension(tmp_path, split):
    results = [
        {"text": q.text, "image_names": rankings(split)[qid]} for qid, q in split.queries.items()
    ]
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"results": results}))
    _, got = validate_predictions(read_predictions(path), split)
    assert got == rankings(split)


def test_track2_seed_sample_style_is_rejected_clearly(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(
        "{\n    {\n        'results':\n        [\n            {'text': 'a', 'image_names': []}\n        ]\n    }\n}\n"
    )
    assert detect_kind(path) == "track2"
    with pytest.raises(DataError) as exc:
        read_predictions(path)
    assert "strict JSON" in str(exc.value) and f"{path}:2" in str(exc.value)


def test_track2_order_and_line_numbers(tmp_path, split):
    texts = [q.text for q in split.queries.values()]
    results = [{"text": t, "image_names": ITEMS[:10]} for t in (texts[1], texts[0], texts[2])]
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"meta": {"x": [1, "]"]}, "results": results}, indent=2))
    with pytest.raises(PredictionError) as exc:
        validate_predictions(read_predictions(path), split)
    lines = path.read_text().splitlines()
    reported = [line for line, _ in exc.value.problems]
    assert len(reported) == 2 and all(lines[n - 1].strip() == "{" for n in reported)
    assert "test_text.txt" in problems_of(exc)[0]


def test_all_problems_are_collected_with_lines(tmp_path, split):
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"query_id": 100, "item_ids": ITEMS[:9]}),
                "{not json",
                json.dumps({"query_id": 101, "item_ids": ["000001"] * 2 + ITEMS[2:10]}),
                json.dumps({"query_id": 100, "item_ids": ITEMS[:10]}),
                json.dumps({"query_id": 999, "item_ids": ITEMS[:10]}),
                json.dumps({"query_id": 101.5, "item_ids": ITEMS[:10]}),
                json.dumps({"item_ids": ITEMS[:10]}),
                json.dumps({"query_id": "102", "item_ids": ITEMS[:9] + ["nope"]}),
            ]
        )
    )
    with pytest.raises(PredictionError) as exc:
        validate_predictions(read_predictions(path), split)
    problems = exc.value.problems
    lines = sorted({line for line, _ in problems})
    assert lines == [1, 2, 3, 4, 5, 6, 7, 8]
    text = str(exc.value)
    assert text.startswith(f"{path}: 9 problems")
    for needle in (
        "id '102' is a JSON string; the official MUGE / Chinese-CLIP scorers need integers",
        "9 ids, expected exactly 10",
        "not a JSON object",
        "repeated ids",
        "appears again (first at line 1)",
        "query 999 is not in split 'valid'",
        "missing or invalid 'query_id'",
        "ids not in the data set: 'nope'",
    ):
        assert needle in text


def test_missing_queries_are_reported(tmp_path, split):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"query_id": 100, "item_ids": ITEMS[:10]}) + "\n")
    with pytest.raises(PredictionError) as exc:
        validate_predictions(read_predictions(path), split)
    assert problems_of(exc) == ["no prediction for query '101'", "no prediction for query '102'"]


def test_queries_without_relevance_need_no_prediction(tmp_path, split):
    judged = rankings(split)
    split.queries["103"] = Query("103", "unjudged")
    path = write_predictions(tmp_path / "p.jsonl", judged, kind="muge")
    metrics, _ = evaluate_predictions(path, split, on_warning=lambda _: None)
    assert metrics["t2i/n_queries"] == 3 and metrics["t2i/n_skipped"] == 0
    # predicted but without ground truth: not scored, counted as skipped
    path = write_predictions(tmp_path / "p.jsonl", {**judged, "103": ITEMS[:10]}, kind="muge")
    metrics, rows = evaluate_predictions(path, split, on_warning=lambda _: None)
    assert metrics["t2i/n_queries"] == 3 and metrics["t2i/n_skipped"] == 1
    assert [r["id"] for r in rows] == ["100", "101", "102"]


def test_many_problems_show_the_first_twenty_and_a_count(tmp_path, split):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join("{bad" for _ in range(30)))
    with pytest.raises(PredictionError) as exc:
        validate_predictions(read_predictions(path, "muge"), split)
    text = str(exc.value)
    assert "33 problems" in text and "... and 13 more" in text  # 30 bad lines + 3 missing
    assert text.count("\n  line ") == 20


def test_trec_order_is_by_score_then_docid_descending(tmp_path, split):
    path = tmp_path / "run.txt"
    path.write_text("100 Q0 000001 1 0.5 t\n100 Q0 000000 2 0.9 t\n100 Q0 000002 3 0.5 t\n")
    pf = read_predictions(path)
    assert pf.entries[0].ids == ["000000", "000002", "000001"]
    assert pf.entries[0].line == 1


def test_trec_problems(tmp_path, split):
    path = tmp_path / "run.txt"
    path.write_text(
        "100 Q0 000001 1 0.5 t\n100 Q0 000001 2 x t\n100 Q0 000001 3 0.2 t\n101 Q0 a b\n"
    )
    with pytest.raises(PredictionError) as exc:
        validate_predictions(read_predictions(path, "trec"), split)
    text = str(exc.value)
    assert "line 2: score 'x' is not a number" in text
    assert "line 4: expected 'qid Q0 docid rank score tag'" in text
    assert "repeated ids '000001'" in text


def test_unknown_kind_and_undetectable_files(tmp_path, split):
    path = tmp_path / "p.txt"
    path.write_text("hello world\n")
    with pytest.raises(UnknownKindError, match="name it"):
        detect_kind(path)
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_predictions(path)
    with pytest.raises(XmrError, match="unknown prediction kind"):
        read_predictions(path, "csv")
    with pytest.raises(XmrError, match="no such file"):
        read_predictions(tmp_path / "missing.json")
    with pytest.raises(XmrError, match="needs the split"):
        write_predictions(tmp_path / "x.json", {}, kind="track2")


def test_track2_structure_errors(tmp_path, split):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"res": []}))
    with pytest.raises(DataError, match='"results" list'):
        read_predictions(path, "track2")
    path.write_text(json.dumps({"results": [{"text": 1}, {"text": "a", "image_names": "x"}]}))
    with pytest.raises(PredictionError) as exc:
        validate_predictions(read_predictions(path), split)
    assert "results[0]: expected" in str(
        exc.value
    ) and "results[1]: 'image_names' must be a list" in str(exc.value)
