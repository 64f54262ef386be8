"""The whole loop as a user runs it: texts -> ``xmr t2i generate`` (tiny random diffusers
pipeline) -> validate -> ``xmr t2i stats`` / ``evaluate`` (random-weight Inception, tiny CLIP)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from t2i_helpers import write_t2i_split
from xmr.cli import main
from xmr.errors import XmrError
from xmr.eval.t2i_submission import read_t2i_submission, validate_t2i_submission
from xmr.workflows.t2i_generate import generate_t2i

pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    data = root / "data"
    rows = write_t2i_split(data, "val", 3, seed=4)
    texts = data / "T2I_val.txt.tsv"
    assert main(["t2i", "tiny-pipeline", "--out", str(root / "pipe"), "--texts", str(texts)]) == 0
    assert main(["t2i", "tiny-inception", str(root / "inception.pth"), "--seed", "2"]) == 0
    assert (
        main(["model", "tiny", str(root / "clip"), "--data", str(data), "--image-size", "32"]) == 0
    )
    return root, data, texts, rows


def _generate(setup, out, *extra):
    root, _, texts, _ = setup
    argv = ["t2i", "generate", "--model", f"diffusers:{root / 'pipe'}", "--texts", str(texts)]
    return main([*argv, "--out", str(out), "--steps", "2", "--size", "32", "--seed", "5", *extra])


def test_generate_is_deterministic_resumable_and_valid(setup, tmp_path, capsys):
    _, _, texts, rows = setup
    first = tmp_path / "a.tsv"
    assert _generate(setup, first, "--batch-size", "2") == 0
    assert validate_t2i_submission(first, texts).ok
    assert main(["t2i", "validate", str(first), "--texts", str(texts)]) == 0
    assert "valid, 3 images (32x32: 3" in capsys.readouterr().out
    # Refuses to overwrite; another batch size gives the same images (per-id seeds).
    assert _generate(setup, first) == 2
    second = tmp_path / "b.tsv"
    assert _generate(setup, second, "--batch-size", "1") == 0
    _, refs_a = read_t2i_submission(first, texts)
    _, refs_b = read_t2i_submission(second, texts)
    for a, b in zip(refs_a, refs_b, strict=True):
        diff = np.abs(np.asarray(a.open(), float) - np.asarray(b.open(), float)).max()
        assert diff <= 1.0  # batching may move a pixel by one level, no more
    # A run killed after its first batch, mid-write of the next line: resumed, same output.
    root, _, _, _ = setup
    resumed = tmp_path / "c.tsv"

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    kwargs = {"steps": 2, "size": 32, "seed": 5, "batch_size": 2}
    with pytest.raises(KeyboardInterrupt):
        generate_t2i(f"diffusers:{root / 'pipe'}", texts, resumed, progress=interrupt, **kwargs)
    partial = tmp_path / "c.tsv.partial"
    assert len(partial.read_text(encoding="utf-8").splitlines()) == 2 and not resumed.exists()
    assert rows[2][0] not in partial.read_text(encoding="utf-8")
    with open(partial, "a", encoding="utf-8") as fh:
        fh.write(f"{rows[2][0]}\tiVBORw0KGgo")  # torn: no newline
    summary = generate_t2i(f"diffusers:{root / 'pipe'}", texts, resumed, **kwargs)
    assert (summary["resumed"], summary["generated"], summary["count"]) == (2, 1, 3)
    assert resumed.read_text(encoding="utf-8") == first.read_text(encoding="utf-8")
    assert not partial.exists() and not (tmp_path / "c.tsv.partial.json").exists()


def test_resume_with_other_settings_is_refused(setup, tmp_path):
    out = tmp_path / "p.tsv"
    (tmp_path / "p.tsv.partial").write_text("", "utf-8")
    settings = {"model": "x", "steps": 99}
    (tmp_path / "p.tsv.partial.json").write_text(json.dumps(settings), "utf-8")
    with pytest.raises(XmrError, match="other settings .*steps"):
        root, _, texts, _ = setup
        generate_t2i(f"diffusers:{root / 'pipe'}", texts, out, steps=2, size=32)


def test_evaluate_end_to_end_with_cached_stats(setup, tmp_path, capsys):
    root, data, texts, rows = setup
    pred = tmp_path / "pred.tsv"
    assert _generate(setup, pred, "--batch-size", "3") == 0
    inception = str(root / "inception.pth")
    stats = tmp_path / "stats.npz"
    real = str(data / "T2I_val.img.tsv")
    assert (
        main(["t2i", "stats", "--images", real, "--inception", inception, "--out", str(stats)]) == 0
    )
    capsys.readouterr()
    cats = tmp_path / "cats.tsv"
    cats.write_text("".join(f"{i}\t{t[:2]}\n" for i, t in rows), encoding="utf-8")
    common = ["--generated", str(pred), "--texts", str(texts), "--inception", inception]
    common += ["--model", f"hf:{root / 'clip'}", "--is-splits", "2", "--r-candidates", "3"]
    assert (
        main(["t2i", "evaluate", *common, "--real", real, "--json", "--categories", str(cats)]) == 0
    )
    direct = json.loads(capsys.readouterr().out)
    report_file = tmp_path / "report.json"
    assert main(["t2i", "evaluate", *common, "--real", str(stats), "--out", str(report_file)]) == 0
    printed = capsys.readouterr().out
    cached = json.loads(report_file.read_text(encoding="utf-8"))
    assert direct["count"] == 3 and direct["fid"] > 0
    assert cached["fid"] == pytest.approx(direct["fid"], rel=1e-9)  # stats file == images
    assert cached["real"]["count"] == 3
    assert direct["inception"]["format"] == "state_dict"
    assert direct["is_mean"] >= 1.0 and direct["is_splits"] == 2
    assert 0.0 <= direct["r_precision"]["mean"] <= 1.0
    assert direct["r_precision"]["candidates"] == 3
    assert 0.0 <= direct["clip_score"]["mean"] <= 100.0
    assert set(direct["per_category"]) == {t[:2] for _, t in rows}
    assert "FID" in printed and "R-precision" in printed
    # Statistics from other weights are refused.
    assert main(["t2i", "tiny-inception", str(tmp_path / "other.pth"), "--seed", "9"]) == 0
    other = [
        "--generated",
        str(pred),
        "--texts",
        str(texts),
        "--inception",
        str(tmp_path / "other.pth"),
    ]
    assert main(["t2i", "evaluate", *other, "--real", str(stats), "--is-splits", "2"]) == 2
    assert "recompute them" in capsys.readouterr().err
