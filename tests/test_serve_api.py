"""The HTTP API against a real small index (tiny CLIP -> encode -> build_index), via TestClient."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")

from fastapi.testclient import TestClient  # noqa: E402

from serve_index import BMP_ITEM, TSV_ITEM  # noqa: E402
from xmr.search import Searcher  # noqa: E402
from xmr.serve import ServeSettings, create_app  # noqa: E402

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def built(serve_index):
    return serve_index


@pytest.fixture(scope="module")
def searcher(built):
    return Searcher.from_index_dir(built["index_dir"], device="cpu")


@pytest.fixture(scope="module")
def client(searcher):
    app = create_app(
        searcher, ServeSettings(max_k=10, max_query_chars=64, max_upload_bytes=200_000)
    )
    with TestClient(app) as c:
        yield c


def jpeg_bytes(size=(64, 64), colour=(220, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def assert_error(r, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"]["status"] == status
    assert body["error"]["message"] and body["detail"] == body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def assert_same_ranking(results, hits, tol=1e-4):
    """Same scores, and the same ids except where scores tie (a batched encoder call may differ
    from a single one in the last float bits)."""
    assert [x["score"] for x in results] == pytest.approx([h.score for h in hits], abs=tol)
    for x, h in zip(results, hits, strict=True):
        if x["id"] != h.id:
            assert abs(x["score"] - h.score) <= tol, (x, h)


# --- service facts ------------------------------------------------------------------------------


def test_health_and_info(client, built):
    assert client.get("/api/health").json() == {"status": "ok", "items": built["n"]}
    info = client.get("/api/info").json()
    assert info["size"] == built["n"]
    assert info["dim"] == 32
    assert info["index_type"] == "Flat"
    # A local model is named by its directory and a short fingerprint, not the server's path.
    fingerprint = info["model_fingerprint"]
    assert info["model"] == f"hf:model@{fingerprint.rpartition(':')[2][:12]}"
    assert str(built["model_dir"]) not in client.get("/api/info").text
    assert info["categories"] == {"circle": 13, "square": 13}
    assert info["limits"]["max_k"] == 10
    assert info["writes"] is False
    assert "path" not in info["index"]  # the server's layout is not exposed


def test_openapi_docs(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/info", "/api/health"} <= set(spec["paths"])
    post = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(post)


def test_docs_page_loads_only_local_assets(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "SwaggerUIBundle" in html and "url: '/openapi.json'" in html
    # Every URL the page loads is local: no scheme, no host (the CDN of FastAPI's default).
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert refs and all(u.startswith("/") and not u.startswith("//") for u in refs), refs
    assert not re.search(r"https?://", html), html
    assert '"validatorUrl": null' in html  # no schema sent to validator.swagger.io
    # The CSP lets exactly the page's inline script run (by hash), nothing inline otherwise.
    csp = r.headers["content-security-policy"]
    inline = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
    assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"
    for url, ctype in (
        ("/static/vendor/swagger-ui/swagger-ui-bundle.js", "javascript"),
        ("/static/vendor/swagger-ui/swagger-ui.css", "text/css"),
        ("/static/vendor/swagger-ui/favicon-32x32.png", "image/png"),
    ):
        assert url in refs
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert ctype in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert asset.headers["x-content-type-options"] == "nosniff"


def test_docs_behind_a_root_path_and_redoc_redirects(searcher):
    app = create_app(searcher, ServeSettings())
    with TestClient(app, root_path="/xmr") as c:
        html = c.get("/docs").text
        assert "url: '/xmr/openapi.json'" in html
        assert 'src="/xmr/static/vendor/swagger-ui/swagger-ui-bundle.js"' in html
        r = c.get("/redoc", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/xmr/docs"
    with TestClient(app) as c:
        r = c.get("/redoc")  # followed: the working docs page, not ReDoc's blank one
        assert r.status_code == 200 and "SwaggerUIBundle" in r.text
        assert c.get("/docs/oauth2-redirect").status_code == 404


def test_vendored_swagger_ui_matches_its_readme():
    from xmr.serve.app import STATIC_DIR
    from xmr.serve.docs import SWAGGER_UI_VERSION

    vendor = STATIC_DIR / "vendor" / "swagger-ui"
    readme = (vendor / "README.md").read_text()
    assert f"swagger-ui-dist {SWAGGER_UI_VERSION}" in readme
    sums = {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)}
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"} <= set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name


def test_page_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in r.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        s = client.get(f"/static/{name}")
        assert s.status_code == 200 and kind in s.headers["content-type"]
    assert_error(client.get("/static/../../etc/passwd"), 404)


# --- searching ----------------------------------------------------------------------------------


def test_text_search_get_and_post(client, built):
    r = client.get("/api/search", params={"q": "a red circle", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == {"type": "text", "text": "a red circle"}
    assert body["k"] == 5 and body["took_ms"] >= 0
    results = body["results"]
    assert len(results) == 5
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    for x in results:
        assert x["id"] in built["ids"]
        assert set(x) >= {"id", "score", "image_url", "caption", "attribute", "category"}
        assert x["image_url"] == f"/api/items/{x['id']}/image"
        assert client.get(x["image_url"]).status_code == 200
    post = client.post("/api/search", json={"q": "a red circle", "k": 5}).json()
    assert [x["id"] for x in post["results"]] == [x["id"] for x in results]
    # The default k applies when none is given.
    assert len(client.get("/api/search", params={"q": "red"}).json()["results"]) == 10


def test_results_match_the_searcher(client, searcher):
    body = client.get("/api/search", params={"q": "a blue square", "k": 7}).json()
    assert_same_ranking(body["results"], searcher.search_text("a blue square", k=7))


def test_category_filter(client):
    for cat in ("circle", "square"):
        body = client.get("/api/search", params={"q": "green", "k": 10, "category": cat}).json()
        assert body["results"] and all(x["category"] == cat for x in body["results"])
        assert body["category"] == cat
    by_post = client.post("/api/search", json={"q": "green", "k": 3, "category": "square"}).json()
    assert all(x["category"] == "square" for x in by_post["results"])
    body = assert_error(
        client.get("/api/search", params={"q": "x", "category": "triangle"}),
        400,
        "unknown_category",
    )
    assert "circle" in body["error"]["message"]


def test_query_by_example(client, searcher):
    body = client.post("/api/search", json={"item_id": "green-square-0", "k": 4}).json()
    ids = [x["id"] for x in body["results"]]
    assert body["query"] == {"type": "item", "item_id": "green-square-0"}
    assert "green-square-0" not in ids and len(ids) == 4
    assert ids == [h.id for h in searcher.search_item("green-square-0", k=4)]
    assert_error(client.post("/api/search", json={"item_id": "no-such-item"}), 404, "unknown_item")


def test_query_by_uploaded_image(client, built):
    data = (built["images"] / "yellow-circle-0.jpg").read_bytes()
    r = client.post("/api/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["type"] == "image" and body["query"]["width"] == 96
    assert body["results"][0]["id"] == "yellow-circle-0"
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    r = client.post(
        "/api/search",
        files={"image": ("q.jpg", data, "image/jpeg")},
        data={"k": "3", "category": "square"},
    )
    assert all(x["category"] == "square" for x in r.json()["results"])


# --- bad input: every case is a 4xx with a JSON body --------------------------------------------


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"q": "red", "k": "11"}, "k_too_large"),
        ({"q": "red", "k": "100000"}, "k_too_large"),
        ({"q": "red", "k": "0"}, "k_too_small"),
        ({"q": "red", "k": "-3"}, "k_too_small"),
        ({"q": "red", "k": "abc"}, "bad_k"),
        ({"q": "red", "k": "1.5"}, "bad_k"),
        ({"k": "3"}, "empty_query"),
        ({"q": ""}, "empty_query"),
        ({"q": "   \t "}, "empty_query"),
        ({"q": "x" * 65}, "query_too_long"),
        ({"q": "a\x00b"}, "bad_query"),
        ({"q": "red", "category": "nope"}, "unknown_category"),
    ],
)
def test_bad_get_queries(client, params, code):
    assert_error(client.get("/api/search", params=params), 400, code)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{broken", 400, "bad_json"),
        (b"", 400, "bad_json"),
        (b"\xff\xfe", 400, "bad_json"),
        (b"[1, 2]", 400, "bad_json"),
        (b'"just a string"', 400, "bad_json"),
        (b'{"q": "red", "k": 11}', 400, "k_too_large"),
        (b'{"q": "red", "k": 0}', 400, "k_too_small"),
        (b'{"q": "red", "k": true}', 400, "bad_k"),
        (b'{"q": "red", "k": "many"}', 400, "bad_k"),
        (b'{"q": ""}', 400, "empty_query"),
        (b'{"q": 42}', 400, "bad_query"),
        (b'{"q": "red \\ud800"}', 400, "bad_query"),  # a lone surrogate was a 500
        (b"{}", 400, "empty_query"),
        (b'{"q": "red", "colour": "x"}', 400, "unknown_field"),
        (b'{"q": "red", "item_id": "red-circle-0"}', 400, "ambiguous_query"),
        (b'{"item_id": "../../etc/passwd"}', 404, "unknown_item"),
        (b'{"item_id": 7}', 404, "unknown_item"),
        (b'{"q": "red", "category": "nope"}', 400, "unknown_category"),
    ],
)
def test_bad_json_bodies(client, body, status, code):
    r = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert_error(r, status, code)


def test_query_bytes_that_are_not_utf8_are_refused(client):
    # ?q=%FF decodes to U+FFFD on the server; searching that would be searching nonsense.
    r = client.get("/api/search?q=red%FFcar&k=3")
    body = assert_error(r, 400, "bad_query")
    assert "UTF-8" in body["error"]["message"]
    assert client.get("/api/search?q=r%C3%A9d&k=3").status_code == 200  # UTF-8 is fine


def test_over_long_json_query(client):
    assert_error(client.post("/api/search", json={"q": "y" * 65}), 400, "query_too_long")


def test_over_large_json_body(client):
    r = client.post("/api/search", json={"q": "red", "pad": "x" * 70_000})
    assert_error(r, 413, "too_large")


def test_unsupported_content_type(client):
    r = client.post("/api/search", content=b"q=red", headers={"content-type": "text/plain"})
    assert_error(r, 415, "unsupported_media_type")


def test_bad_uploads(client):
    def upload(data, name="image", **form):
        return client.post("/api/search", files={name: ("x.jpg", data, "image/jpeg")}, data=form)

    assert_error(upload(b"this is not an image"), 400, "bad_upload")
    assert_error(upload(b""), 400, "bad_upload")
    assert_error(upload(jpeg_bytes()[:200]), 400, "bad_upload")  # truncated JPEG
    assert_error(upload(jpeg_bytes(), name="file_field_with_another_name"), 400, "unknown_field")
    # The image is the query: a q or item_id beside it is not silently ignored.
    assert_error(upload(jpeg_bytes(), q="red"), 400, "ambiguous_query")
    assert_error(upload(jpeg_bytes(), item_id="red-circle-0"), 400, "ambiguous_query")
    assert_error(upload(jpeg_bytes(), colour="red"), 400, "unknown_field")
    assert_error(upload(jpeg_bytes(), k="11"), 400, "k_too_large")
    assert_error(upload(jpeg_bytes(), category="nope"), 400, "unknown_category")
    # Over the upload limit (200 kB here): refused before it is parsed.
    assert_error(upload(b"\xff\xd8\xff" + b"0" * 300_000), 413, "too_large")
    # A broken multipart body.
    r = client.post(
        "/api/search",
        content=b'--xx\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert_error(r, 400, "bad_upload")


def test_decompression_bomb_upload_is_refused(client):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 Mpx in ~20 kB
    assert len(buf.getvalue()) < 200_000
    r = client.post("/api/search", files={"image": ("bomb.png", buf.getvalue(), "image/png")})
    body = assert_error(r, 400, "bad_upload")
    assert "12000x12000" in body["error"]["message"]


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/api/nothing"), 404, "not_found")
    assert_error(client.delete("/api/search"), 405, "method_not_allowed")


# --- images -------------------------------------------------------------------------------------


def test_item_images(client, built):
    path = built["images"] / "red-circle-0.jpg"
    r = client.get("/api/items/red-circle-0/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == path.read_bytes()
    etag = r.headers["etag"]
    assert (
        client.get("/api/items/red-circle-0/image", headers={"if-none-match": etag}).status_code
        == 304
    )

    from PIL import Image

    for url in ("/api/items/red-circle-1/thumbnail", "/api/items/red-circle-1/image?size=thumb"):
        t = client.get(url)
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(t.content)).size) <= 256
    assert_error(client.get("/api/items/red-circle-1/image?size=huge"), 400, "bad_size")


def test_images_from_tsv_and_bmp(client):
    r = client.get(f"/api/items/{TSV_ITEM}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    # The BMP is re-encoded to a format every browser shows.
    r = client.get(f"/api/items/{BMP_ITEM}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG")
    item = client.get(f"/api/items/{TSV_ITEM}").json()
    assert item["attribute"] == "red square from a TSV" and item["category"] == "square"
    assert "image" not in item  # the source path is not exposed


@pytest.mark.parametrize(
    "url",
    [
        "/api/items/../../etc/passwd/image",
        "/api/items/..%2F..%2Fetc%2Fpasswd/image",
        "/api/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
        "/api/items/%2E%2E/%2E%2E/etc/passwd/image",
        "/api/items/..%252F..%252Fetc%252Fpasswd/image",
        "/api/items/%2Fetc%2Fpasswd/image",
        "/api/items//etc/passwd/thumbnail",
        "/api/items/..%5C..%5Cwindows%5Cwin.ini/image",
        "/api/items/red-circle-0%00.jpg/image",
        "/api/items/no-such-item/image",
        "/api/items/no-such-item",
    ],
)
def test_path_traversal_and_unknown_ids_are_404(client, url):
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code)
    assert b"root:" not in r.content
    assert r.headers["content-type"].startswith("application/json")


def test_unreadable_image_is_a_404(client, built):
    path = built["images"] / "purple-square-1.jpg"
    moved = path.with_suffix(".moved")
    path.rename(moved)
    try:
        assert_error(client.get("/api/items/purple-square-1/image"), 404, "image_unavailable")
    finally:
        moved.rename(path)
    assert client.get("/api/items/purple-square-1/image").status_code == 200


# --- micro-batching -----------------------------------------------------------------------------


class CountingEncoder:
    """Delegates to the real encoder and counts encode_texts calls and their sizes."""

    def __init__(self, inner):
        self.inner = inner
        self.text_calls: list[int] = []

    def encode_texts(self, texts):
        self.text_calls.append(len(texts))
        return self.inner.encode_texts(texts)

    def encode_images(self, images):
        return self.inner.encode_images(images)

    def __getattr__(self, name):  # embed_dim, manifest(), spec: the real encoder's
        return getattr(self.inner, name)


async def _concurrent_queries(app, texts):
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
        rs = await asyncio.gather(*(ac.get("/api/search", params={"q": t, "k": 3}) for t in texts))
    return [r.json() for r in rs]


def test_concurrent_queries_share_encoder_calls(searcher):
    texts = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square")]
    texts = texts * 2  # 16 requests
    counting = CountingEncoder(searcher.encoder)
    counted = Searcher(searcher.index, counting)
    # A generous window makes the grouping independent of machine speed.
    app = create_app(counted, ServeSettings(batch_wait_ms=250, max_batch=64))
    try:
        bodies = asyncio.run(_concurrent_queries(app, texts))
    finally:
        app.state.service.close()
    assert sum(counting.text_calls) == len(texts)
    assert len(counting.text_calls) < len(texts)
    assert max(counting.text_calls) > 1
    # Each request got its own answer, the same as a search on its own.
    for text, body in zip(texts, bodies, strict=True):
        assert body["query"]["text"] == text
        assert_same_ranking(body["results"], searcher.search_text(text, k=3))


def test_one_batch_serves_different_k_and_categories(searcher):
    import httpx

    counting = CountingEncoder(searcher.encoder)
    counted = Searcher(searcher.index, counting)
    app = create_app(counted, ServeSettings(batch_wait_ms=250))
    asks = [
        {"q": "a red circle", "k": 2},
        {"q": "a red circle", "k": 9, "category": "square"},
        {"q": "a blue square", "k": 5, "category": "circle"},
        {"q": "a blue square", "k": 1},
        {"q": "a green thing", "k": 7, "category": "square"},
    ]

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            rs = await asyncio.gather(*(ac.get("/api/search", params=a) for a in asks))
        return [r.json() for r in rs]

    try:
        bodies = asyncio.run(run())
    finally:
        app.state.service.close()
    assert len(counting.text_calls) < len(asks)
    for ask, body in zip(asks, bodies, strict=True):
        expected = searcher.search_text(ask["q"], k=ask["k"], category=ask.get("category"))
        assert len(body["results"]) == ask["k"]
        assert_same_ranking(body["results"], expected)
        if "category" in ask:
            assert {x["category"] for x in body["results"]} == {ask["category"]}


def test_batching_can_be_disabled(searcher):
    counting = CountingEncoder(searcher.encoder)
    counted = Searcher(searcher.index, counting)
    app = create_app(counted, ServeSettings(batching=False))
    try:
        asyncio.run(_concurrent_queries(app, ["a red circle"] * 6))
    finally:
        app.state.service.close()
    assert counting.text_calls == [1] * 6


# --- writes -------------------------------------------------------------------------------------


def _add(client, item_id="new-one", token=TOKEN, data=None):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return client.post(
        "/api/items",
        files={"image": ("n.jpg", data or jpeg_bytes(colour=(10, 200, 200)), "image/jpeg")},
        data={"id": item_id, "caption": "a cyan block", "category": "square"},
        headers=headers,
    )


def _tree_digest(path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_read_only_by_default(client, built):
    before = _tree_digest(built["index_dir"])
    assert_error(_add(client), 403, "read_only")
    assert_error(_add(client, token=None), 403, "read_only")
    assert _tree_digest(built["index_dir"]) == before
    assert not (built["index_dir"].parent / "index.uploads").exists()


def test_writes_need_the_flag_and_the_token(tmp_path, built):
    from xmr.errors import XmrError

    with pytest.raises(XmrError, match="token"):
        ServeSettings(allow_writes=True)
    index_dir = tmp_path / "index"
    shutil.copytree(built["index_dir"], index_dir)
    app = create_app(index_dir, ServeSettings(allow_writes=True, token=TOKEN))
    with TestClient(app) as c:
        assert c.get("/api/info").json()["writes"] is True
        assert_error(_add(c, token=None), 403, "forbidden")
        assert_error(_add(c, token="wrong-token-xyz"), 403, "forbidden")
        assert_error(_add(c, data=b"not an image"), 400, "bad_upload")
        assert_error(_add(c, item_id="red-circle-0"), 409, "duplicate_id")
        for bad_id in ("", "x" * 201, "bell\x07", "esc\x1b[31m"):  # control characters were kept
            assert_error(_add(c, item_id=bad_id), 400, "bad_id")
        r = _add(c)
        assert r.status_code == 200, r.text
        assert r.json() == {"added": "new-one", "items": built["n"] + 1}
        assert c.get("/api/items/new-one/image").status_code == 200
        hit = c.post(
            "/api/search",
            files={"image": ("q.jpg", jpeg_bytes(colour=(10, 200, 200)), "image/jpeg")},
        )
        assert hit.json()["results"][0]["id"] == "new-one"
    # The addition is on disk: a fresh load sees it; the image sits beside the index, not in it.
    from xmr.index import load_index

    assert "new-one" in load_index(index_dir)
    assert list((tmp_path / "index.uploads").glob("*.jpg"))


def test_cli_refuses_an_address_it_cannot_listen_on(built, capsys, monkeypatch):
    """Checked before the model loads: a port out of range was wrapped by uvicorn (70000 served
    on 4464), a port in use ended in uvicorn's own log line and exit status 3."""
    import socket

    import uvicorn

    from xmr.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)  # never serve here

    index = str(built["index_dir"])
    assert main(["serve", index, "--port", "70000"]) == 2
    assert "--port must be between 0 and 65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", index, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err
