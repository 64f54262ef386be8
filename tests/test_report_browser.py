"""The evaluation report in headless Chromium (Debian's): it opens from disk with no console
error and no request anywhere, shows its plots and gallery rows, renders an HTML-holding query
as text, shows the ``--json`` numbers; a screenshot is saved for people to look at."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from report_helpers import EVIL, synth_split, track2_predictions
from xmr.cli import main

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent"),
]


def _expected_gallery_rows(rows, n_worst=8, n_best=3) -> int:
    by_cat: dict[str, list] = {}
    for r in rows:
        by_cat.setdefault(r["category"] or "all", []).append(r)
    total = 0
    for members in by_cat.values():
        worst = min(n_worst, len(members))
        # Successes: first hit at rank 1 among those the worst list did not take.
        ranked = sorted(
            members,
            key=lambda r: (float(r["AP"]), -int(r["first_relevant_rank"] or 10**9), r["id"]),
        )
        rest = ranked[worst:]
        total += worst + min(n_best, sum(r["first_relevant_rank"] == "1" for r in rest))
    return total


def test_report_page_in_chromium(tmp_path, capsys):
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("matplotlib")
    split = synth_split(tmp_path / "ds", n_test=40)
    track2_predictions(tmp_path / "pred.json", split)
    out = tmp_path / "rep"
    code = main(["evaluate", "--predictions", str(tmp_path / "pred.json"), "--data",
                 str(tmp_path / "ds"), "--split", "test", "--json", "--report", str(out)])  # fmt: skip
    assert code == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with open(out / "per_query.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    url = (out / "index.html").as_uri()
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
            page.wait_for_load_state("load")
            assert page.locator("figure.plot svg").count() == 3  # t2i: curve, ranks, AP
            assert page.locator(".query").count() == _expected_gallery_rows(rows)
            # The HTML-holding query is text on the page, not markup.
            evil = page.locator(".qtext", has_text="bold").first
            assert evil.inner_text() == EVIL
            assert page.locator(".qtext b, .qtext img").count() == 0
            # Every number of --json is on the page, as the terminal table formats it.
            cells = page.eval_on_selector_all(
                "td[data-key]", "tds => tds.map(t => [t.dataset.key, t.dataset.value, t.innerText])"
            )
            shown = {key: (float(value), text) for key, value, text in cells}
            assert set(shown) == set(metrics)
            for key, value in metrics.items():
                assert shown[key][0] == value
                name = key.rsplit("/", 1)[1]
                if name.startswith(("R@", "mAP", "nDCG", "P@", "MRR", "MeanRecall", "NotFound")):
                    assert shown[key][1] == f"{100 * value:.2f}", key
            # Thumbnails decoded (data: URLs, no request).
            widths = page.eval_on_selector_all(".cell img", "imgs => imgs.map(i => i.naturalWidth)")
            assert widths and all(w > 0 for w in widths)
            shot = Path(os.environ.get("XMR_SCREENSHOT_DIR", tmp_path)) / "evaluation-report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [url]


def test_compare_page_in_chromium(tmp_path, capsys, report_data):
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("matplotlib")
    split = report_data["split"]
    for side, seed in (("a", 0), ("b", 3)):
        track2_predictions(tmp_path / f"{side}.json", split, seed=seed)
        assert main(["evaluate", "--predictions", str(tmp_path / f"{side}.json"), "--data",
                     str(report_data["root"]), "--split", "test", "--report",
                     str(tmp_path / side)]) == 0  # fmt: skip
    assert main(["report", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--top", "3"]) == 0
    url = (tmp_path / "b" / "compare" / "index.html").as_uri()
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
            assert page.locator(".query[data-change=gained]").count() == 3
            assert page.locator(".query[data-change=lost]").count() == 3
            assert page.locator(".query .strip").count() == 12  # A's and B's top 10 each
            shot = Path(os.environ.get("XMR_SCREENSHOT_DIR", tmp_path)) / "report-compare.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [url]
