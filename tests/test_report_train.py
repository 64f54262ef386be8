"""The training report: ``xmr train`` rebuilds ``OUT/report.html`` at every validation from the
logs it writes; ``xmr report train OUT`` rebuilds it; the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from xmr.cli import main

pytest.importorskip("matplotlib")
pytest.importorskip("transformers")
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from xmr.data.synth import generate_synthetic
    from xmr.models import create_tiny_clip

    root = tmp_path_factory.mktemp("train-report")
    data = generate_synthetic(
        root / "data", n_train=32, n_test=0, n_valid=16, image_size=16, seed=2, n_attribute_sets=6
    )
    model = create_tiny_clip(root / "tiny", embed_dim=16, image_size=16, patch_size=8,
                             vision_width=32, text_width=32, vision_layers=1, text_layers=1,
                             heads=2, context_length=32)  # fmt: skip
    out = root / "out"
    code = main(["train", "--model", f"hf:{model}", "--data", str(data), "--out", str(out),
                 "--epochs", "2", "--batch-size", "8", "--workers", "0", "--quiet",
                 "eval_every=2", "log_every=1", "tensorboard=false"])  # fmt: skip
    assert code == 0
    return {"out": out, "data": data, "model": model}


def test_train_writes_the_report_at_every_validation(run, tmp_path):
    from xmr.train.loop import train

    seen: list[int] = []

    def hook(out: Path) -> None:
        # Called after the validation row is logged: the log holds it already.
        rows = (out / "metrics.jsonl").read_text().splitlines()
        seen.append(json.loads(rows[-1])["step"])

    result = train(model=f"hf:{run['model']}", data=str(run["data"]), out=str(tmp_path / "o"),
                   epochs=1, batch_size=8, workers=0, progress=False, tensorboard=False,
                   eval_every=2, on_validation=hook)  # fmt: skip
    history = json.loads((tmp_path / "o" / "metrics.json").read_text())["history"]
    assert seen == [row["step"] for row in history] and len(seen) >= 2
    assert result.best_step in seen


def test_report_content_follows_the_logs(run):
    out = run["out"]
    page = (out / "report.html").read_text()
    summary = json.loads((out / "metrics.json").read_text())
    assert f'<b id="best-step">{summary["best_step"]}</b>' in page
    directions = {k.split("/")[0] for k in summary["history"][-1] if "/" in k}
    # The best-model metric, then per direction its fractions and its ranks.
    assert page.count('data-plot="valid"') == 1 + 2 * len(directions) == 5
    assert page.count('data-plot="loss"') == 1 and page.count('data-plot="lr"') == 1
    assert "logit scale" in page and "samples/s" in page
    # Rebuilt by the command from the same files: the same page but for the time it was made.
    before = re.sub(r"<dt>time</dt><dd>[^<]*</dd>|<dt>command</dt><dd>[^<]*</dd>", "", page)
    (out / "report.html").unlink()
    assert main(["report", "train", str(out)]) == 0
    after = (out / "report.html").read_text()
    after = re.sub(r"<dt>time</dt><dd>[^<]*</dd>|<dt>command</dt><dd>[^<]*</dd>", "", after)
    assert after == before


def test_report_train_without_logs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "train", str(tmp_path)]) == 2
    assert "no training log" in capsys.readouterr().err


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent")
def test_training_report_in_chromium(run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url = (run["out"] / "report.html").as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})

            def route(r):
                requests.append(r.request.url)
                return r.continue_() if r.request.url == url else r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            summary = json.loads((run["out"] / "metrics.json").read_text())
            assert page.locator("#best-step").inner_text() == str(summary["best_step"])
            assert page.locator("#training figure.plot svg").count() == 4
            shot = Path(os.environ.get("XMR_SCREENSHOT_DIR", tmp_path)) / "training-report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [url]
