"""The report's inputs come out of the library: ``keep_rankings`` on the evaluate workflows."""

from __future__ import annotations

from report_helpers import track2_predictions
from xmr.workflows.evaluate import evaluate_prediction_file


def test_prediction_file_keeps_the_rankings_it_scored(tmp_path, report_data):
    split, ds = report_data["split"], report_data["root"]
    ranked = track2_predictions(tmp_path / "pred.json", split)
    plain = evaluate_prediction_file(tmp_path / "pred.json", ds, split="test")
    assert plain.rankings is None and plain.split_data is None
    kept = evaluate_prediction_file(tmp_path / "pred.json", ds, split="test", keep_rankings=True)
    assert kept.metrics == plain.metrics
    assert kept.split_data.name == "test" and kept.model_fingerprint is None
    assert list(kept.rankings) == ["t2i"]
    by_text = {
        split.queries[q].text: [split.item_names.get(i, i) for i in ids]
        for q, ids in kept.rankings["t2i"].items()
    }
    assert by_text == ranked
