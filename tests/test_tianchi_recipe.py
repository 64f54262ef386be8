"""Seed 001's table as a recipe (`xmr demo --recipe tianchi`), at smoke size: generated tianchi
data -> the demo's tiny CLIP -> image-text and text->(image+text) retrieval, zero-shot and
fine-tuned, with R@1/5/10 and R_mean; fine-tuning improves the fused R_mean."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from xmr.cli import main  # noqa: E402
from xmr.workflows.tianchi_recipe import ROWS, format_table  # noqa: E402


def test_recipe_smoke_prints_the_seed_table(tmp_path, capsys):
    out = tmp_path / "recipe"
    assert main(["demo", "--recipe", "tianchi", "--out", str(out), "--smoke", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1  # --json: stdout is the one object
    summary = json.loads(captured.out)
    printed = captured.err.strip().splitlines()
    assert json.loads(printed[-1]) == summary

    rows = summary["rows"]
    assert list(rows) == [key for key, *_ in ROWS]
    for key, row in rows.items():
        for name in ("R@1", "R@5", "R@10", "R_mean"):
            assert math.isfinite(row[name]) and 0.0 <= row[name] <= 1.0, (key, name)
        assert row["R@1"] <= row["R@5"] <= row["R@10"], key
        # R_mean is the seed's: the mean of R@1, R@5 and R@10
        assert row["R_mean"] == pytest.approx((row["R@1"] + row["R@5"] + row["R@10"]) / 3)
    # the seed's claim at our scale: fine-tuning on the e-commerce train split improves
    # text -> image+caption retrieval
    assert rows["fused/fine_tuned"]["R_mean"] > rows["fused/zero_shot"]["R_mean"]
    assert summary["fused_weight"] == {"zero_shot": 0.5, "fine_tuned": 0.5}

    # the printed table is the summary's, in the seed's layout (percentages)
    table = format_table(rows).splitlines()
    assert all(line in printed for line in table)
    assert table[0].split()[-4:] == ["R@1", "R@5", "R@10", "R_mean"]
    fused_ft = next(line for line in table if "text->(image+text)" in line and "fine-tuned" in line)
    assert fused_ft.split()[-1] == f"{100 * rows['fused/fine_tuned']['R_mean']:.2f}"

    # the recipe's artefacts are what the commands write: data, tiny model, fine-tuned model
    assert (out / "data" / "MR_train_queries_with_captions.json").is_file()
    assert (out / "tiny_model" / "config.json").is_file()
    assert (out / "model" / "config.json").is_file()
    assert summary["model"] == f"hf:{out / 'tiny_model'}"


def test_recipe_refuses_options_of_the_other_recipe(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--model", "hf:x", "--smoke"]) != 0
    assert "--model: only for --recipe tianchi" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
