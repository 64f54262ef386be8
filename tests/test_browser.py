"""End to end: `xmr serve` on loopback, the page in headless Chromium (Debian's), a real search.

Needs Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it) and Playwright's
Python package; skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)",
    ),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(index_dir, log, *extra):
    """``xmr serve INDEX_DIR`` on a free loopback port until the block ends; yields its URL."""
    port = _free_port()
    argv = [sys.executable, "-m", "xmr", "serve", str(index_dir), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", *extra]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"xmr serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"xmr serve did not start in 60 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, serve_index):
    pytest.importorskip("fastapi")
    built = serve_index
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with _serve(built["index_dir"], log) as base:
        yield {"base": base, **built}


@pytest.fixture(scope="module")
def browser(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _new_page(browser, server, **options):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, **options)
    # Loopback only: any request elsewhere is refused.
    context.route(
        "**/*",
        lambda route: (
            route.continue_() if route.request.url.startswith(server["base"]) else route.abort()
        ),
    )
    return context.new_page()


@pytest.fixture
def page(browser, server):
    # The page's CSP forbids eval, which Playwright's wait_for_function needs;
    # test_page_obeys_its_csp checks the page with the CSP in force.
    page = _new_page(browser, server, bypass_csp=True)
    yield page
    page.context.close()


def _loaded_images(page) -> list[int]:
    return page.eval_on_selector_all(
        "#results img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )


def test_a_missing_image_shows_only_the_placeholder(server, page, tmp_path):
    """The card of an item whose file is gone: the placeholder, no broken-image icon or alt
    text over the score badge. (First in the module: the server has cached no thumbnail yet.)"""
    gone = "purple-square-1"
    path = server["images"] / f"{gone}.jpg"
    moved = path.with_suffix(".moved")
    path.rename(moved)
    try:
        page.goto(f"{server['base']}/?q=a+purple+square&k=26")
        page.wait_for_selector(f"#results li.card[data-id='{gone}'] .thumb.broken", timeout=15000)
        card = page.locator(f"#results li.card[data-id='{gone}']")
        card.scroll_into_view_if_needed()
        assert card.locator("img").count() == 0
        badge = card.locator(".score")
        assert badge.is_visible() and float(badge.inner_text()) <= 1.0
        # Nothing covers the badge: the element at its centre is the badge itself.
        box = badge.bounding_box()
        at = page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y).className",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
        )
        assert at == "score"
        placeholder = page.evaluate(
            "el => getComputedStyle(el, '::before').content",
            card.locator(".thumb").element_handle(),
        )
        assert "image unavailable" in placeholder
        shot = Path(os.environ.get("XMR_SCREENSHOT_DIR", tmp_path)) / "missing-image.png"
        card.screenshot(path=str(shot))
    finally:
        moved.rename(path)


def test_search_page_end_to_end(server, page, tmp_path):
    base = server["base"]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/")
    # The category filter is filled from /api/info.
    page.wait_for_function("document.querySelectorAll('#category option').length === 3")
    assert page.is_visible("#category")

    page.fill("#q", "a red circle")
    page.fill("#k", "8")
    page.press("#q", "Enter")
    page.wait_for_selector("#results li.card")
    assert page.locator("#results li.card").count() == 8
    # Result images really load (decoded, non-zero size).
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=15000,
    )
    assert all(w > 0 for w in _loaded_images(page))
    # Score and caption under each image.
    first = page.locator("#results li.card").first
    assert float(first.locator(".score").inner_text()) <= 1.0
    assert first.locator(".caption").inner_text()
    # The query is kept in the URL.
    assert "q=a+red+circle" in page.url and "k=8" in page.url
    status = page.inner_text("#status")
    assert "8 results" in status
    # The footer names the model by its directory and fingerprint, not the server's path.
    footer = page.inner_text("#info")
    assert "model hf:model@" in footer and str(server["model_dir"]) not in footer

    shot = Path(os.environ.get("XMR_SCREENSHOT_DIR", tmp_path)) / "search-page.png"
    page.screenshot(path=str(shot), full_page=True)

    # Category filter narrows the results.
    page.select_option("#category", "square")
    page.wait_for_function("location.search.includes('category=square')")
    page.wait_for_function(
        "[...document.querySelectorAll('#results .chip')].every(c => c.textContent === 'square')"
    )

    # "Similar" searches by a result's stored vector.
    target = page.locator("#results li.card").first.get_attribute("data-id")
    page.locator("#results li.card").first.locator("button.similar").click()
    page.wait_for_function(f"location.search.includes('similar={target}')")
    page.wait_for_function("document.querySelector('#status').textContent.includes('similar')")
    ids = page.eval_on_selector_all("#results li.card", "cs => cs.map(c => c.dataset.id)")
    assert ids and target not in ids

    # Back restores the previous query from the URL.
    page.go_back()
    page.wait_for_function("location.search.includes('q=a+red+circle')")
    page.wait_for_function("document.querySelector('#q').value === 'a red circle'")

    # A reload of a URL restores the search.
    page.goto(f"{base}/?q=a+green+square&k=3")
    page.wait_for_function("document.querySelectorAll('#results li.card').length === 3")
    assert page.input_value("#q") == "a green square"

    # Query by uploading an image: the same picture comes first.
    page.set_input_files("#upload", str(server["images"] / "blue-square-0.jpg"))
    page.wait_for_function("document.querySelector('#status').textContent.includes('your image')")
    assert page.locator("#results li.card").first.get_attribute("data-id") == "blue-square-0"

    # A bad query shows the service's message, not a blank page.
    page.goto(f"{base}/?q=red&k=1000")
    page.wait_for_selector("#status.error")
    assert "at most" in page.inner_text("#status")
    assert errors == []


def test_page_obeys_its_csp(server, browser):
    page = _new_page(browser, server)
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))
    page.on("pageerror", lambda e: messages.append(str(e)))
    try:
        page.goto(f"{server['base']}/?q=a+blue+circle&k=4")
        page.wait_for_selector("#results li.card >> nth=3")
        page.wait_for_selector("#results img >> nth=3")
    finally:
        page.context.close()
    assert not [m for m in messages if "Content Security Policy" in m or "Error" in m], messages


def test_api_docs_render_offline(server, browser, tmp_path):
    """/docs renders Swagger UI from the package's own files, under its CSP, with every other
    host unreachable (the situation of an air-gapped machine), and "Try it out" works."""
    base = server["base"]
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    elsewhere: list[str] = []

    def loopback_only(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", loopback_only)
    page = context.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    try:
        page.goto(f"{base}/docs")
        search_get = page.locator("#operations-search-search_get_api_search_get")
        search_get.wait_for(timeout=15000)
        assert "xmr search" in page.locator(".info .title").inner_text()
        assert page.locator(".opblock-summary-path[data-path='/api/search']").count() == 2
        # Try it out: the page calls the API (connect-src 'self') and shows the answer.
        search_get.locator(".opblock-summary-control").click()
        search_get.locator("button.try-out__btn").click()
        search_get.locator("tr[data-param-name='q'] input").fill("a red circle")
        search_get.locator("button.execute").click()
        live = search_get.locator(".live-responses-table .response .response-col_status")
        live.first.wait_for(timeout=15000)
        assert live.first.inner_text().strip().startswith("200")
        body = search_get.locator(".live-responses-table .microlight").first.inner_text()
        assert '"results"' in body and "a red circle" in body
        shot = Path(os.environ.get("XMR_SCREENSHOT_DIR", tmp_path)) / "api-docs.png"
        page.screenshot(path=str(shot))
        # /redoc has no local copy of ReDoc: it sends the browser to the working page.
        page.goto(f"{base}/redoc")
        page.locator("#operations-search-search_get_api_search_get").wait_for(timeout=15000)
        assert page.url == f"{base}/docs"
    finally:
        context.close()
    assert elsewhere == []
    bad = [m for m in messages if m.startswith(("error", "pageerror")) or "Security" in m]
    assert not bad, messages


@contextlib.contextmanager
def _serve_app(app):
    """A built app on a real uvicorn in a thread of this process (no second model load)."""
    import threading

    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_pedestrian_attributes_are_readable(server, browser, tmp_path, monkeypatch):
    """A Track2 data set (``xmr data synth``) served as a user would: a pedestrian's 0/1 vector
    is shown by the attribute names its synth.json declares (``--attribute-names``), and
    without a declared layout as the positions that are set, never as a row of digits. The
    app ``xmr serve`` builds is run on uvicorn in this process, to spare a second model load."""
    import uvicorn

    from xmr.cli import main

    data, model, emb, index = (tmp_path / n for n in ("data", "model", "emb", "index"))
    argv = ["data", "synth", str(data), "--n-train", "8", "--n-valid", "4", "--n-test", "24"]
    assert main([*argv, "--attribute-sets", "6"]) == 0
    assert main(["model", "tiny", str(model), "--data", str(data)]) == 0
    encode = ["encode", "--model", f"hf:{model}", "--data", str(data), "--split", "test"]
    assert main([*encode, "--out", str(emb)]) == 0
    assert main(["index", "build", str(emb), "--out", str(index)]) == 0
    names = json.loads((data / "synth.json").read_text())["pedestrian_vector"]
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    shown = {}
    for label, extra in (("names", ["--attribute-names", str(data / "synth.json")]), ("bits", [])):
        assert main(["serve", str(index), "--port", str(_free_port()), *extra]) == 0
        with _serve_app(apps.pop()) as base:  # uvicorn.Server, which the patch leaves alone
            page = _new_page(browser, {"base": base}, bypass_csp=True)
            try:
                page.goto(f"{base}/?q=a+pedestrian&k=24&category=pedestrian")
                page.wait_for_selector("#results li.card img")
                page.wait_for_function(
                    "[...document.querySelectorAll('#results img')].every("
                    "i => i.complete && i.naturalWidth > 0)",
                    timeout=15000,
                )
                shown[label] = page.eval_on_selector_all(
                    "#results li.card .caption", "cs => cs.map(c => c.textContent)"
                )
                shot = Path(os.environ.get("XMR_SCREENSHOT_DIR", tmp_path))
                page.screenshot(path=str(shot / f"pedestrians-{label}.png"))
            finally:
                page.context.close()
    readable = {n.replace("_", " ") for n in names}
    assert shown["names"] and all(set(text.split(", ")) <= readable for text in shown["names"]), (
        shown["names"]
    )
    assert shown["bits"] and all(
        text.startswith("attributes ") and text.endswith(f"of {len(names)}")
        for text in shown["bits"]
    ), shown["bits"]
    assert not [t for t in shown["names"] + shown["bits"] if "0,1" in t or "1,0" in t]
