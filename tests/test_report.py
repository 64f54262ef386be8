"""The evaluation report (``xmr evaluate --report DIR``) as files: built from the rankings the
evaluation had, its numbers the ``--json`` numbers, untrusted texts escaped, curves right."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from report_helpers import EVIL, track2_predictions
from xmr.cli import main

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def built(tmp_path_factory, report_data):
    tmp = tmp_path_factory.mktemp("report")
    split = report_data["split"]
    pred = tmp / "pred.json"
    ranked = track2_predictions(pred, split)
    return {"tmp": tmp, "ds": report_data["root"], "split": split, "pred": pred, "ranked": ranked}


def evaluate_with_report(capsys, built, out, *extra):
    code = main(["evaluate", "--predictions", str(built["pred"]), "--data",
                 str(built["ds"]), "--split", "test", "--json", "--report", str(out),
                 *extra])  # fmt: skip
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_page_numbers_are_the_json_numbers(capsys, built, tmp_path):
    metrics = evaluate_with_report(capsys, built, tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    cells = dict(re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', page))
    assert set(cells) == set(metrics)
    for key, value in metrics.items():
        assert float(cells[key]) == value, key
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["metrics"] == metrics
    assert "pred.json" in saved["provenance"]["command"]


def test_query_text_holding_html_is_escaped(capsys, built, tmp_path):
    evaluate_with_report(capsys, built, tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert EVIL not in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;" in page
    # Nothing the page would fetch: no src/href off the page (SVG namespaces are names only).
    assert not re.search(r'(src|href)="(?!data:|#|per_query\.csv#)', page)


def test_per_query_csv_and_curves_follow_the_rankings(capsys, built, tmp_path):
    metrics = evaluate_with_report(capsys, built, tmp_path / "rep")
    with open(tmp_path / "rep" / "per_query.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    split, ranked = built["split"], built["ranked"]
    assert len(rows) == metrics["t2i/n_queries"] == len(split.queries)
    by_text = {q.text: qid for qid, q in split.queries.items()}
    for row in rows:
        qid = row["id"]
        names = ranked[split.queries[qid].text]
        rel = {split.item_names.get(i, i) for i in split.relevance[qid]}
        want = next((n for n, x in enumerate(names, start=1) if x in rel), None)
        assert (int(row["first_relevant_rank"]) if row["first_relevant_rank"] else None) == want
    assert by_text[EVIL] in {r["id"] for r in rows}
    # The curve at K is the share of queries whose first hit is at most K: R@1 of the hit-rate
    # definition, checked against the rows by hand.
    from xmr.workflows.report.ranks import hit_rate_curve

    firsts = [int(r["first_relevant_rank"]) if r["first_relevant_rank"] else None for r in rows]
    curve = hit_rate_curve(firsts, 10)
    for kk in (1, 5, 10):
        assert curve[kk - 1] == pytest.approx(np.mean([bool(f and f <= kk) for f in firsts]))
    assert curve[-1] == pytest.approx(1 - metrics["t2i/NotFound"])


def test_report_refuses_a_file_and_a_foreign_directory(capsys, built, tmp_path):
    from xmr.errors import XmrError
    from xmr.workflows.report import build_evaluation_report

    (tmp_path / "file").write_text("x")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for out, message in ((tmp_path / "file", "not a directory"), (mine, "not an xmr report")):
        code = main(["evaluate", "--predictions", str(built["pred"]), "--data",
                     str(built["ds"]), "--split", "test", "--report", str(out)])  # fmt: skip
        assert code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(XmrError, match="not an xmr report"):
        build_evaluation_report(mine, {}, {"t2i": {}}, built["split"])
    assert (mine / "notes.txt").read_text() == "keep me"


def test_model_report_has_both_directions(tmp_path, capsys, built):
    pytest.importorskip("transformers")
    ds = built["ds"]
    assert main(["model", "tiny", "--out", str(tmp_path / "m"), "--data", str(ds)]) == 0
    capsys.readouterr()
    code = main(["evaluate", "--model", f"hf:{tmp_path / 'm'}", "--data", str(ds), "--split",
                 "test", "--json", "--workers", "0", "--report", str(tmp_path / "rep")])  # fmt: skip
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count('data-plot="recall"') == 2
    assert 'id="gallery-i2t"' in page and 'id="gallery-t2i"' in page
    # Ranked 30 deep (every item), so the curve's end is every query.
    with open(tmp_path / "rep" / "per_query.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["direction"] == "t2i"]
    hits1 = np.mean([r["first_relevant_rank"] == "1" for r in rows])
    assert hits1 == pytest.approx(metrics["t2i/R@1"]) or metrics["t2i/R@1"] <= hits1
    assert all(r["first_relevant_rank"] for r in rows)  # every query has a hit at full depth


def test_compare_two_runs(capsys, built, tmp_path):
    ma = evaluate_with_report(capsys, built, tmp_path / "a")
    pred_b = tmp_path / "pred_b.json"
    track2_predictions(pred_b, built["split"], seed=1)
    code = main(["evaluate", "--predictions", str(pred_b), "--data", str(built["ds"]),
                 "--split", "test", "--json", "--report", str(tmp_path / "b")])  # fmt: skip
    assert code == 0
    mb = json.loads(capsys.readouterr().out)
    assert main(["report", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--top", "4"]) == 0
    out = tmp_path / "b" / "compare"
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    record = json.loads((out / "compare.json").read_text())
    for key, delta in record["deltas"].items():
        assert delta == pytest.approx(mb[key] - ma[key])
    assert "t2i/R@1" in record["deltas"] and "t2i/n_queries" not in record["deltas"]
    ap = {}
    for side in ("a", "b"):
        with open(tmp_path / side / "per_query.csv", newline="") as fh:
            ap[side] = {r["id"]: float(r["AP"]) for r in csv.DictReader(fh)}
    change = {q: ap["b"][q] - ap["a"][q] for q in ap["a"]}
    gained = [q["id"] for q in record["queries"] if q["change"] == "gained"]
    lost = [q["id"] for q in record["queries"] if q["change"] == "lost"]
    assert len(gained) == len(lost) == 4
    assert min(change[q] for q in gained) >= sorted(change.values(), reverse=True)[3]
    assert max(change[q] for q in lost) <= sorted(change.values())[3]
    html_page = (out / "index.html").read_text()
    assert html_page.count('class="query"') == 8
    assert "data:image/jpeg;base64," in html_page  # thumbnails from the recorded data set
    assert EVIL not in html_page


def test_compare_refuses_other_splits(capsys, built, tmp_path):
    evaluate_with_report(capsys, built, tmp_path / "a")
    (tmp_path / "empty").mkdir()
    assert main(["report", "compare", str(tmp_path / "a"), str(tmp_path / "empty")]) == 2
    assert "not an evaluation report" in capsys.readouterr().err


def test_reranked_run_reports_both_stages_and_what_changed(capsys, built, tmp_path):
    pytest.importorskip("transformers")
    ds = built["ds"]
    assert main(["model", "tiny", "--out", str(tmp_path / "m"), "--data", str(ds)]) == 0
    assert main(["model", "tiny", "--family", "mplug", "--out", str(tmp_path / "mp")]) == 0
    capsys.readouterr()
    code = main(["evaluate", "--model", f"hf:{tmp_path / 'm'}", "--data", str(ds), "--split",
                 "test", "--json", "--workers", "0", "--directions", "t2i", "--rerank",
                 f"mplug:{tmp_path / 'mp'}", "--report", str(tmp_path / "rep")])  # fmt: skip
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    page = (tmp_path / "rep" / "index.html").read_text()
    cells = dict(re.findall(r'data-key="([^"]+)" data-value="([^"]+)"', page))
    assert set(cells) == set(metrics) and any(k.startswith("first_stage/") for k in cells)
    assert page.count('data-plot="rank-change"') == 1 and page.count('data-plot="recall"') == 2
    with open(tmp_path / "rep" / "per_query.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = {r["id"]: r["first_relevant_rank"] for r in rows if r["direction"] == "t2i"}
    before = {r["id"]: r["first_relevant_rank"] for r in rows if r["direction"] != "t2i"}
    assert set(first) == set(before)
    depth = 1 + max(int(v) for v in [*first.values(), *before.values()] if v)
    up = sum(int(first[q] or depth + 1) < int(before[q] or depth + 1) for q in first)
    assert f"{up} queries moved their first relevant item up" in page


def test_text_corpus_report_shows_item_texts(tmp_path):
    """A text retrieval set (BEIR-like: items without images) built from Python: the gallery
    shows the documents' texts, escaped, and the curves run as deep as the ranking."""
    from xmr.data.dataset import Item, Query, Split
    from xmr.workflows.report import build_evaluation_report

    items = {f"d{i}": Item(f"d{i}", captions=[f"doc <i>{i}</i>"]) for i in range(30)}
    queries = {f"q{i}": Query(f"q{i}", f"query {i}") for i in range(5)}
    split = Split("test", items=items, queries=queries,
                  relevance={f"q{i}": {f"d{3 * i}"} for i in range(5)})  # fmt: skip
    rankings = {"t2i": {f"q{i}": [f"d{(3 * i + j) % 30}" for j in range(-i, 30 - i)]
                        for i in range(5)}}  # fmt: skip
    path = build_evaluation_report(tmp_path / "rep", {"t2i/R@1": 0.2}, rankings, split, k=10)
    page = path.read_text()
    assert "doc &lt;i&gt;0&lt;/i&gt;" in page and "<i>0</i>" not in page
    with open(tmp_path / "rep" / "per_query.csv", newline="") as fh:
        firsts = [r["first_relevant_rank"] for r in csv.DictReader(fh)]
    assert firsts == ["1", "2", "3", "4", "5"]
    assert "K=1..30" in page
