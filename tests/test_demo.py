"""The offline demo, at smoke size: the whole path runs and training beats random weights.
(`make demo` runs the full size, which must reach t2i/mAP@10 >= 0.9.)"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("faiss")


def test_demo_smoke(tmp_path, capsys):
    from xmr.cli import main

    out = tmp_path / "demo"
    # --json: stdout is the one JSON object; the report goes to stderr (it is stdout without it)
    assert main(["demo", "--out", str(out), "--smoke", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1
    summary = json.loads(captured.out)
    printed = captured.err.strip().splitlines()
    assert json.loads(printed[-1]) == summary  # the report's own last line
    assert printed[-2].strip() == f"xmr serve {out / 'index'}"
    for which in ("zero_shot", "trained"):
        for key in ("t2i/mAP@10", "t2i/R@1", "t2i/R@5", "t2i/R@10"):
            assert 0.0 <= summary[which][key] <= 1.0, (which, key)
    assert summary["trained"]["t2i/mAP@10"] > summary["zero_shot"]["t2i/mAP@10"]
    assert any(line.lstrip().startswith("search '") for line in printed)
    # The index serves the trained model; the model directory is a transformers model.
    from xmr.search import Searcher

    searcher = Searcher.from_index_dir(out / "index", device="cpu")
    assert searcher.search_text("A red car.", k=3)
    assert (out / "model" / "config.json").is_file() and (out / "model" / "metrics.json").is_file()
