"""``--skip-bad`` wherever a data set is read (issue 13): without it one bad line stops the
command with one ``file:line`` error; with it the line is skipped, counted, the first errors are
reported on stderr and recorded in what the command writes."""

from __future__ import annotations

import json

import pytest

from xmr.cli import main

BAD_LINE = 3  # of test_label.txt and train_label.txt


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Synthetic Track2 data with one malformed label line in train and in test, and a model."""
    root = tmp_path_factory.mktemp("skip_bad")
    data, model = root / "data", root / "model"
    argv = ["data", "synth", str(data), "--n-train", "10", "--n-test", "10", "--n-valid", "0",
            "--image-size", "16"]  # fmt: skip
    assert main(argv) == 0
    assert main(["model", "tiny", str(model), "--data", str(data)]) == 0
    for split in ("train", "test"):
        label = data / split / f"{split}_label.txt"
        lines = label.read_text(encoding="utf-8").splitlines()
        lines[BAD_LINE - 1] = lines[BAD_LINE - 1].replace("$", " ", 1)  # 2 fields, not 3
        label.write_text("\n".join(lines) + "\n", encoding="utf-8")
    first_item = (data / "test" / "test_label.txt").read_text().split("$", 1)[0]
    return {"root": root, "data": str(data), "model": f"hf:{model}", "item": first_item}


def _stderr_lines(capsys, prefix: str) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith(prefix)]


def _commands(bad, out):
    d, m = bad["data"], bad["model"]
    common = ["--workers", "0"]
    return {
        "encode": ["encode", "--model", m, "--data", d, "--split", "test", "--out",
                   str(out / "emb"), "--json", *common],
        "evaluate": ["evaluate", "--model", m, "--data", d, "--split", "test", "--json",
                     "--emb-dir", str(out / "eval_emb"), *common],
        "predict": ["predict", "--model", m, "--data", d, "--split", "test", "--k", "5", "--out", str(out / "sub.json"),
                    "--json", *common],
        "model tiny": ["model", "tiny", str(out / "tiny"), "--data", d, "--split", "test"],
        "similarity": ["similarity", "--model", m, "--data", d, "--split", "test", "--item",
                       bad["item"], "a car", "--json"],
        "train": ["train", "--model", m, "--data", d, "--out", str(out / "trained"),
                  "--valid-split", "none", "--quiet", "epochs=1", "batch_size=4", "workers=0"],
    }  # fmt: skip


@pytest.mark.parametrize(
    "command", ["encode", "evaluate", "predict", "model tiny", "similarity", "train"]
)
def test_skip_bad_on_every_command_that_reads_a_data_set(bad, tmp_path, capsys, command):
    split = "train" if command == "train" else "test"
    label = f"{bad['data']}/{split}/{split}_label.txt"
    argv = _commands(bad, tmp_path)[command]
    capsys.readouterr()
    assert main(argv) == 2
    errors = _stderr_lines(capsys, "xmr: error:")
    assert len(errors) == 1 and f"{label}:{BAD_LINE}, field 'text'" in errors[0], errors

    assert main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr()
    if command != "train":  # `train --quiet` says nothing; train_config.json records it
        warnings = [ln for ln in out.err.splitlines() if ln.startswith("xmr: warning: skipped")]
        assert len(warnings) == 1 and f"{label}:{BAD_LINE}" in warnings[0], out.err
        # The bad line, and in test the ground-truth lines naming the image it would have added.
        count = int(warnings[0].split()[3])
        assert warnings[0] == f"xmr: warning: skipped {count} bad record(s) reading "\
            f"{bad['data']}; first: {label}:{BAD_LINE}, field 'text': expected "\
            "'image$attribute$text', found 2 '$'-separated field(s)"  # fmt: skip

    # ... and recorded in what the command wrote.
    if command == "encode":
        source = json.loads((tmp_path / "emb" / "manifest.json").read_text())["source"]
        assert source["skipped_records"] == count
        assert f"{label}:{BAD_LINE}" in source["skipped_examples"][0]
        assert json.loads(out.out)["skipped_records"] == count
    elif command == "evaluate":
        manifest = json.loads((tmp_path / "eval_emb" / "manifest.json").read_text())
        assert manifest["source"]["skipped_records"] == count
        assert "t2i/R@1" in json.loads(out.out)
    elif command == "predict":
        summary = json.loads(out.out)
        assert summary["skipped_records"] == count and summary["queries"] > 0
        assert (tmp_path / "sub.json").is_file()
    elif command == "train":
        config = json.loads((tmp_path / "trained" / "train_config.json").read_text())
        assert config["skip_bad"] is True
        assert config["extra"]["derived"]["skipped_records"] == 1


def test_library_functions_take_skip_bad(bad, tmp_path):
    from xmr.workflows.evaluate import evaluate_model
    from xmr.workflows.predict import predict

    metrics = evaluate_model(
        bad["model"], bad["data"], split="test", device="cpu", skip_bad=True,
        emb_dir=tmp_path / "emb", progress=False, directions=["t2i"],
    )  # fmt: skip
    assert metrics["t2i/n_queries"] > 0
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["source"]["skipped_records"] >= 1
    out = predict(bad["model"], bad["data"], tmp_path / "p.json", split="test", k=5, device="cpu", skip_bad=True,
                  progress=False)  # fmt: skip
    assert out.path.is_file() and out.summary()["skipped_records"] >= 1
    assert any("skipped" in w for w in out.warnings)
