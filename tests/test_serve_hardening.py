"""The service under failure and odd clients: a failed write is rolled back, HEAD works, the
model is not shown by its server path, a 100 kB query string gets the JSON 400, attribute
vectors are shown by name; and the SearchService answers without an app."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")

from fastapi.testclient import TestClient  # noqa: E402

from xmr.search import Searcher, SearchResult  # noqa: E402
from xmr.serve import ServeSettings, create_app  # noqa: E402
from xmr.serve.models import ImageSearchForm, SearchRequest  # noqa: E402
from xmr.serve.service import SearchService  # noqa: E402

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def built(serve_index):
    return serve_index


@pytest.fixture(scope="module")
def searcher(built):
    return Searcher.from_index_dir(built["index_dir"], device="cpu")


def png_bytes(colour=(10, 200, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


def tree_digest(path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


# --- a failed POST /api/items is rolled back ------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device", "index/index.faiss"),
        RuntimeError("Error in faiss::FileIOWriter: write failed (No space left on device)"),
    ],
    ids=["oserror-disk-full", "faiss-runtime-error"],
)
def test_a_failed_add_leaves_everything_as_it_was_and_a_retry_works(tmp_path, built, failure):
    index_dir = tmp_path / "index"
    shutil.copytree(built["index_dir"], index_dir)
    uploads = tmp_path / "index.uploads"
    app = create_app(index_dir, ServeSettings(allow_writes=True, token=TOKEN))
    svc = app.state.service
    data = png_bytes()
    form = {"id": "new-one", "caption": "a cyan block", "category": "square"}
    headers = {"authorization": f"Bearer {TOKEN}"}

    def add(c):
        files = {"image": ("n.png", data, "image/png")}
        return c.post("/api/items", files=files, data=form, headers=headers)

    before = tree_digest(index_dir)
    calls = []

    def failing_save(directory):
        calls.append(directory)
        raise failure

    # The disk fills up while the index is written (the vectors file of the new version).
    svc.searcher.index.backend.save = failing_save
    with TestClient(app) as c:
        n = c.get("/api/health").json()["items"]
        r = add(c)
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert err["code"] == "write_failed" and "No space left on device" in err["message"]
        assert calls, "the injected failure was not reached"
        # Nothing of the item is left: not counted, not found, not searchable, not on disk.
        assert c.get("/api/health").json()["items"] == n
        assert c.get("/api/items/new-one").status_code == 404
        hits = c.post("/api/search", files={"image": ("q.png", data, "image/png")}).json()
        assert "new-one" not in [h["id"] for h in hits["results"]]
        assert tree_digest(index_dir) == before
        assert not list(uploads.glob("*")) if uploads.exists() else True
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".index.")]
        # The disk has room again: the retry is a plain success, not a 409 duplicate_id.
        r = add(c)
        assert r.status_code == 200, r.text
        assert r.json() == {"added": "new-one", "items": n + 1}
        assert c.get("/api/items/new-one").status_code == 200
    from xmr.index import load_index

    assert "new-one" in load_index(index_dir) and len(list(uploads.glob("*.png"))) == 1


def test_a_failed_upload_write_is_a_json_500(tmp_path, built):
    index_dir = tmp_path / "index"
    shutil.copytree(built["index_dir"], index_dir)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the upload directory should be")
    settings = ServeSettings(allow_writes=True, token=TOKEN, upload_dir=str(blocker / "up"))
    with TestClient(create_app(index_dir, settings)) as c:
        n = c.get("/api/health").json()["items"]
        r = c.post(
            "/api/items",
            files={"image": ("n.png", png_bytes(), "image/png")},
            data={"id": "new-one"},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 500 and r.json()["error"]["code"] == "write_failed"
        assert c.get("/api/health").json()["items"] == n


# --- HEAD -----------------------------------------------------------------------------------


def test_head_works_where_get_does(searcher):
    with TestClient(create_app(searcher, ServeSettings())) as c:
        for url in (
            "/api/health",
            "/api/info",
            "/api/search?q=red",
            "/api/items/red-circle-0",
            "/api/items/red-circle-0/image",
            "/api/items/red-circle-0/thumbnail",
            "/",
            "/static/app.js",
            "/docs",
            "/openapi.json",
        ):
            get, head = c.get(url), c.head(url)
            assert get.status_code == 200, url
            assert head.status_code == 200, (url, head.status_code, head.text)
            assert head.content == b"", url
            assert head.headers["content-type"] == get.headers["content-type"], url
            if "search" in url:  # took_ms differs from one answer to the next
                assert int(head.headers["content-length"]) > 0, url
            else:
                assert head.headers["content-length"] == str(len(get.content)), url
        missing = c.head("/api/items/no-such-item")
        assert missing.status_code == 404 and missing.content == b""
        assert missing.headers["content-type"] == "application/json"
        assert c.head("/api/nothing").status_code == 404


# --- what is shown of the models ------------------------------------------------------------


def test_models_are_named_without_the_servers_paths(searcher, built):
    model_dir = str(built["model_dir"])
    with TestClient(create_app(searcher, ServeSettings())) as c:
        text = c.get("/api/info").text
        info = json.loads(text)
    assert model_dir not in text and str(built["index_dir"]) not in text
    fingerprint = searcher.index.model["fingerprint"]
    assert info["model"] == f"hf:model@{fingerprint.rpartition(':')[2][:12]}"
    assert info["index"]["model"]["spec"] == info["model"]
    with TestClient(create_app(searcher, ServeSettings(show_model_path=True))) as c:
        assert c.get("/api/info").json()["model"] == f"hf:{model_dir}"
    svc = SearchService(searcher, ServeSettings())
    # A hub id or a registered name says nothing about the server: shown as it is.
    assert svc.model_name("hf:openai/clip-vit-base-patch32") == "hf:openai/clip-vit-base-patch32"
    assert svc.model_name("blip2-itm-vit-g") == "blip2-itm-vit-g"
    assert svc.model_name("/srv/models/clip/", "sha256:abcdef0123456789") == "clip@abcdef012345"
    svc.close()


# --- a query string too long for the HTTP parser --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw_get(port: int, target: str) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = [h for h in head.lower().split(b"\r\n") if h.startswith(b"content-length")]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_100kb_query_string_gets_the_json_400(searcher, http):
    uvicorn = pytest.importorskip("uvicorn")
    if http == "httptools":
        pytest.importorskip("httptools")
    from xmr.serve.protocol import json_error_protocol

    port = _free_port()
    config = uvicorn.Config(
        create_app(searcher, ServeSettings(max_query_chars=64)),
        host="127.0.0.1",
        port=port,
        log_level="critical",
        http=json_error_protocol(http),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        head, body = _raw_get(port, "/api/search?q=" + "a" * 100_000)
        assert head.startswith(b"HTTP/1.1 400"), head
        assert b"content-type: application/json" in head.lower()
        err = json.loads(body)["error"]
        # httptools refuses the URL itself (over its 80 kB limit); h11 hands it to the app.
        assert err["code"] in ("bad_request", "query_too_long") and "long" in err["message"]
        # A long query the parser takes is the application's own 400, JSON too.
        head, body = _raw_get(port, "/api/search?q=" + "a" * 2_000)
        assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"]["code"] == (
            "query_too_long"
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- attribute vectors ----------------------------------------------------------------------


def test_attribute_vectors_are_shown_by_name_when_the_layout_is_known(searcher, tmp_path):
    from xmr.errors import DataError
    from xmr.serve.limits import read_attribute_names

    synth = tmp_path / "synth.json"
    synth.write_text(json.dumps({"pedestrian_vector": ["female", "hat", "back_pack", "bag"]}))
    names = read_attribute_names(synth)
    assert names == ["female", "hat", "back_pack", "bag"]
    (tmp_path / "names.txt").write_text("female\nhat\n\nback_pack\nbag\n")
    assert read_attribute_names(tmp_path / "names.txt") == names
    (tmp_path / "bad.json").write_text('{"other": 1}')
    with pytest.raises(DataError, match="bad.json"):
        read_attribute_names(tmp_path / "bad.json")

    svc = SearchService(searcher, ServeSettings(attribute_names=names))
    vector = SearchResult("p1", 0.5, 1, attribute="0,1,1,0", category="pedestrian")
    out = svc.result_json(vector)
    assert out["attribute_labels"] == ["hat", "back pack"]
    assert out["caption"] == "hat, back pack" and out["attribute"] == "0,1,1,0"
    # Captions (the item's texts) come first; another length is not this layout.
    captioned = svc.result_json(SearchResult("p2", 0.5, 1, captions=["a man"], attribute="0,1,1,0"))
    assert captioned["caption"] == "a man"
    assert "attribute_labels" not in svc.result_json(SearchResult("p3", 0.5, 1, attribute="0,1"))
    svc.close()
    plain = SearchService(searcher, ServeSettings())
    assert "attribute_labels" not in plain.result_json(vector)
    plain.close()


# --- the service object without an app ------------------------------------------------------


def test_the_search_service_answers_without_an_app(searcher, built):
    svc = SearchService(searcher, ServeSettings(max_k=10, batching=False))
    try:
        request = SearchRequest.parse({"q": "a red circle", "k": 4}, svc.context())
        body = asyncio.run(svc.search(request))
        expected = searcher.search_text("a red circle", k=4)
        assert [r["id"] for r in body["results"]] == [r.id for r in expected]
        assert body["query"] == {"type": "text", "text": "a red circle"} and body["k"] == 4
        data = (built["images"] / "yellow-circle-0.jpg").read_bytes()
        form = ImageSearchForm.parse({"image": data, "k": "2"}, svc.context())
        body = asyncio.run(svc.search_image(form, "q.jpg"))
        assert body["results"][0]["id"] == "yellow-circle-0"
        similar = asyncio.run(
            svc.search(SearchRequest.parse({"item_id": "red-circle-0", "k": 3}, svc.context()))
        )
        assert [r["id"] for r in similar["results"]] == [
            r.id for r in searcher.search_item("red-circle-0", k=3)
        ]
    finally:
        svc.close()


def _without_nulls(value):
    """A schema as FastAPI publishes it (it drops ``null`` values such as ``default: None``)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_the_openapi_schema_is_generated_from_the_request_models(searcher):
    from xmr.serve.models import AddItemForm

    with TestClient(create_app(searcher, ServeSettings())) as c:
        spec = c.get("/openapi.json").json()
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == _without_nulls(SearchRequest.model_json_schema())
    assert body["multipart/form-data"]["schema"] == _without_nulls(
        ImageSearchForm.model_json_schema()
    )
    schema = body["application/json"]["schema"]
    assert {"q", "k", "category", "item_id", "rerank", "rerank_k", "mode"} == set(
        schema["properties"]
    )
    assert schema["additionalProperties"] is False
    image = body["multipart/form-data"]["schema"]["properties"]["image"]
    assert (
        image["format"] == "binary" and "image" in body["multipart/form-data"]["schema"]["required"]
    )
    add = spec["paths"]["/api/items"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert add["schema"] == _without_nulls(AddItemForm.model_json_schema())


def test_the_event_loop_never_waits_for_the_index_lock(searcher):
    """While an add holds the index (saving it can take long), the event loop keeps answering:
    health, request validation and the page; only the requests that read the index wait."""
    import httpx

    app = create_app(searcher, ServeSettings(max_k=10))
    held, release = threading.Event(), threading.Event()

    def hold():
        with searcher._index_lock:
            held.set()
            release.wait(30)

    async def while_held():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            search = asyncio.ensure_future(ac.get("/api/search", params={"q": "red", "k": 2}))
            quick = await asyncio.wait_for(
                asyncio.gather(
                    ac.get("/api/health"),
                    ac.get("/api/search", params={"q": "red", "k": "99"}),
                    ac.get("/api/search", params={"q": "red", "category": "nope"}),
                    ac.get("/"),
                ),
                timeout=20,
            )
            assert not search.done()  # the search itself waits for the index
            release.set()
            return quick, await search

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        quick, search = asyncio.run(while_held())
    finally:
        release.set()
        thread.join()
        app.state.service.close()
    assert [r.status_code for r in quick] == [200, 400, 400, 200]
    assert quick[1].json()["error"]["code"] == "k_too_large"
    assert quick[2].json()["error"]["code"] == "unknown_category"
    assert search.status_code == 200 and len(search.json()["results"]) == 2
