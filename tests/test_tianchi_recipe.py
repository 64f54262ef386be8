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
from xmr.workflows.tianchi_recipe import GATED_ROWS, ROWS, format_table  # noqa: E402


def test_recipe_smoke_prints_the_seed_table(tmp_path, capsys):
    out = tmp_path / "recipe"
    assert main(["demo", "--recipe", "tianchi", "--out", str(out), "--smoke", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1  # --json: stdout is the one object
    summary = json.loads(captured.out)
    printed = captured.err.strip().splitlines()
    assert json.loads(printed[-1]) == summary

    rows = summary["rows"]
    assert list(rows) == [key for key, *_ in (*ROWS, *GATED_ROWS)]  # xmr's gate after the seed's
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
    assert summary["label_smoothing"] == 0.0  # LAVIS's 0.1 is for BLIP-2 only

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


def _check_rows(rows, gated=True):
    assert list(rows) == [key for key, *_ in (*ROWS, *(GATED_ROWS if gated else ()))]
    for key, row in rows.items():
        for name in ("R@1", "R@5", "R@10", "R_mean"):
            assert math.isfinite(row[name]) and 0.0 <= row[name] <= 1.0, (key, name)
        assert row["R_mean"] == pytest.approx((row["R@1"] + row["R@5"] + row["R@10"]) / 3)


def test_recipe_with_a_tiny_blip2_is_the_seeds_own(tmp_path, capsys):
    """--family blip2: the text->(image+text) rows rank BLIP-2's multimodal items (--fused
    blip2) and the fine-tuning trains them (multimodal_items=true), as seed 001 does."""
    out = tmp_path / "recipe"
    args = ["demo", "--recipe", "tianchi", "--family", "blip2", "--out", str(out), "--smoke"]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = summary["rows"]
    _check_rows(rows)
    assert summary["family"] == "blip2" and summary["fused"] == "blip2"
    assert rows["fused/fine_tuned"]["R_mean"] > rows["fused/zero_shot"]["R_mean"]
    # the multimodal rows are not the weighted fusion's (reported beside them)
    weighted = summary["weighted_fused_R_mean"]
    assert set(weighted) == {"zero_shot", "fine_tuned"}
    assert all(math.isfinite(v) for v in weighted.values())
    # the fine-tuning was on multimodal items, text_source pairs (the queries)
    train_cfg = json.loads((out / "model" / "train_config.json").read_text())
    flat = json.dumps(train_cfg)
    assert '"multimodal_items": true' in flat and '"text_source": "pairs"' in flat
    # xmr's gate, learned on each model's (N, K, D) items, is the last rows
    assert rows["gated/fine_tuned"]["task"] == "text->(image+text) gated"
    zero_shot_gate = json.loads((out / "zero_shot_gate" / "fusion.json").read_text())
    assert zero_shot_gate["kind"] == "gated" and zero_shot_gate["model"]["spec"] == summary["model"]
    assert (out / "fine_tuned_gate" / "fusion.json").is_file()
    assert train_cfg["label_smoothing"] == summary["label_smoothing"] == 0.1  # LAVIS's ITC loss
    manifest = json.loads((out / "tiny_model" / "config.json").read_text())
    assert manifest["model_type"] == "blip-2"

    # The same recipe from a BLIP-2 directory `xmr model tiny --family blip2 --data D --split
    # train` wrote: detected from its config, same seed's rows (one epoch: rows only; no gate).
    tiny = tmp_path / "tiny"
    data = out / "data"
    assert main(["model", "tiny", "--family", "blip2", "--out", str(tiny), "--data", str(data),
                 "--split", "train"]) == 0  # fmt: skip
    capsys.readouterr()
    again = tmp_path / "again"
    assert main(["demo", "--recipe", "tianchi", "--model", f"hf:{tiny}", "--data", str(data),
                 "--out", str(again), "--smoke", "--epochs", "1", "--no-gated", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    _check_rows(summary["rows"], gated=False)
    assert not (again / "zero_shot_gate").exists()
    assert summary["family"] == "blip2" and summary["fused"] == "blip2"
    assert "multimodal_items" in (again / "model" / "train_config.json").read_text()


def test_recipe_family_needs_no_model(tmp_path, capsys):
    args = ["demo", "--recipe", "tianchi", "--out", str(tmp_path / "r"), "--smoke"]
    assert main([*args, "--family", "blip2", "--model", "hf:x"]) != 0
    assert "--family: only without --model" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--family", "blip2", "--smoke"]) != 0
    assert "--family: only for --recipe tianchi" in capsys.readouterr().err
