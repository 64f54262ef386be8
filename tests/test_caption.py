"""``xmr caption`` against a real OpenAI-compatible HTTP server on loopback (tests/caption_server.py):
request shape, retries, timeouts, refusals, a SIGKILL mid-run and resume, cache hits, and the
BEIR files read back by xmr's own reader."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caption_server import CaptionServer
from xmr.cli import main
from xmr.data.readers import load_dataset
from xmr.errors import DataError
from xmr.models.caption_api import image_data_url, retry_after_seconds
from xmr.models.captioners import GenerationParams, create_captioner
from xmr.workflows.caption import caption_dataset

COLOURS = ["red", "blue", "green", "yellow", "white", "black"]
SRC = Path(__file__).resolve().parents[1] / "src"


def make_evalscope(root: Path, n: int = 6, *, duplicate: bool = False) -> Path:
    """n images (JPEG and PNG alternately, distinct sizes) with one text each, plus a text
    relevant to the first two images."""
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        colour = COLOURS[i % len(COLOURS)]
        ext, fmt = (".png", "PNG") if i % 2 else (".jpg", "JPEG")
        Image.new("RGB", (20 + i, 10 + i), colour).save(root / "img" / f"{i}{ext}", fmt)
        texts = [f"{colour} thing {i}"] + (["shared"] if i < 2 else [])
        lines.append({"image_path": f"img/{i}{ext}", "query": texts})
    if duplicate:  # the same bytes under another name
        (root / "img" / "copy.jpg").write_bytes((root / "img" / "0.jpg").read_bytes())
        lines.append({"image_path": "img/copy.jpg", "query": ["copy of red"]})
    (root / "image_queries.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server():
    srv = CaptionServer().start()
    yield srv
    srv.stop()


def api(server, **kw):
    kw.setdefault("retries", 3)
    kw.setdefault("timeout", 5)
    params = kw.pop("params", GenerationParams())
    return create_captioner(
        "api:tiny-vlm", api_base=server.base_url, params=params, backoff_base=0.01, **kw
    )


def test_request_shape_and_beir_read_back(tmp_path, server, monkeypatch):
    data = make_evalscope(tmp_path / "data")
    monkeypatch.setenv("MY_KEY", "sk-secret-from-env")
    params = GenerationParams(max_tokens=33, temperature=0.0, seed=7, system="be brief")
    summary = caption_dataset(
        data, tmp_path / "out", api(server, params=params, api_key_env="MY_KEY"), progress=False
    )
    assert summary.stats["captioned"] == 6 and summary.stats["failed"] == 0
    assert len(server.requests) == 6
    files = {sha(p): p for p in (data / "img").iterdir()}
    for request in server.requests:
        # the original bytes and MIME type arrive intact
        original = files[request["sha256"]]
        assert request["mime"] == ("image/png" if original.suffix == ".png" else "image/jpeg")
        body = request["body"]
        assert body["model"] == "tiny-vlm" and body["max_tokens"] == 33 and body["seed"] == 7
        assert body["temperature"] == 0.0
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        user = body["messages"][1]["content"]
        assert user[0]["text"].startswith("Please describe this image in general")
        assert request["auth"] == "Bearer sk-secret-from-env"
    # the key never lands in a file xmr writes
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert b"sk-secret-from-env" not in f.read_bytes()
    beir = load_dataset(tmp_path / "out" / "retrieval_data", "beir").split("test")
    assert beir.items["img/2.jpg"].captions == ["a green picture, 22 by 12 pixels"]
    shared = next(q for q in beir.queries.values() if q.text == "shared")
    assert beir.relevance[shared.id] == {"img/0.jpg", "img/1.png"}
    source = load_dataset(data).split()
    for qid, query in source.queries.items():
        assert beir.queries[qid].text == query.text
        assert beir.relevance[qid] == source.relevance[qid]
    written = json.loads((tmp_path / "out" / "image_caption.json").read_text())
    assert written["task"] == "image_caption" and written["captioned"] == 6
    assert written["prompt_tokens"] == 66 and written["save_path"].endswith("retrieval_data")


def test_evalscope_ids_and_collision_free_default(tmp_path, server):
    data = make_evalscope(tmp_path / "data", 3)
    caption_dataset(data, tmp_path / "ev", api(server), ids="evalscope", progress=False)
    corpus = [json.loads(x) for x in (tmp_path / "ev/retrieval_data/corpus.jsonl").open()]
    queries = [json.loads(x) for x in (tmp_path / "ev/retrieval_data/queries.jsonl").open()]
    assert [d["_id"] for d in corpus] == [0, 1, 2]
    # one query per (image, text) pair, as evalscope walks them: "shared" twice
    assert [q["text"] for q in queries] == [
        "red thing 0",
        "shared",
        "blue thing 1",
        "shared",
        "green thing 2",
    ]
    qrels = (tmp_path / "ev/retrieval_data/qrels/test.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore"
    assert qrels[1:] == ["0\t0\t1", "1\t0\t1", "2\t1\t1", "3\t1\t1", "4\t2\t1"]
    beir = load_dataset(tmp_path / "ev/retrieval_data", "beir").split("test")
    assert beir.relevance["3"] == {"1"}


def test_retry_after_429_then_500_then_success(tmp_path, server):
    data = make_evalscope(tmp_path / "data", 2)
    target = sha(data / "img" / "0.jpg")
    server.retry_after = "1"
    server.plan[target] = ["429", "500"]
    summary = caption_dataset(data, tmp_path / "out", api(server), progress=False)
    assert summary.stats["failed"] == 0
    times = [r["time"] for r in server.requests if r["sha256"] == target]
    assert len(times) == 3
    assert times[1] - times[0] >= 1.0  # Retry-After: 1 was waited out
    record = next(json.loads(x) for x in (tmp_path / "out/captions.jsonl").open() if target in x)
    assert record["caption"] == "a red picture, 20 by 10 pixels" and record["error"] is None


def test_timeout_refusal_empty_and_bad_request_are_failures(tmp_path, server):
    data = make_evalscope(tmp_path / "data", 4)
    shas = [sha(p) for p in sorted((data / "img").iterdir())]
    server.slow_s = 3.0
    server.plan[shas[0]] = ["slow", "slow"]
    server.plan[shas[1]] = ["refuse"]
    server.plan[shas[2]] = ["empty"]
    server.plan[shas[3]] = ["400"]
    summary = caption_dataset(
        data, tmp_path / "out", api(server, retries=1, timeout=0.5), progress=False
    )
    assert summary.stats["failed"] == 4 and summary.stats["captioned"] == 0
    errors = {
        r["image_sha256"]: r["error"]
        for r in map(json.loads, (tmp_path / "out/captions.jsonl").open())
    }
    assert errors[shas[0]].startswith("timed out after 0.5 s (after 2 attempts)")
    assert errors[shas[1]].startswith("refused: I can't help.")
    assert errors[shas[2]] == "empty answer"
    assert errors[shas[3]].startswith("HTTP 400") and "after 1 attempt" in errors[shas[3]]
    assert server.shas().count(shas[3]) == 1  # a 400 is not retried
    # no empty captions in the corpus: the failed images are simply absent
    assert (tmp_path / "out/retrieval_data/corpus.jsonl").read_text() == ""
    # a re-run asks again for what failed, and now succeeds
    again = caption_dataset(data, tmp_path / "out", api(server), progress=False)
    assert again.stats["captioned"] == 4 and again.stats["cached"] == 0
    assert load_dataset(tmp_path / "out/retrieval_data", "beir").split().items


def test_cache_hits_duplicates_and_key(tmp_path, server):
    data = make_evalscope(tmp_path / "data", 3, duplicate=True)
    first = caption_dataset(data, tmp_path / "out", api(server), progress=False)
    assert first.stats["captioned"] == 4 and first.stats["requests"] == 3  # the copy shares one
    second = caption_dataset(data, tmp_path / "out", api(server), progress=False)
    assert second.stats["cached"] == 4 and len(server.requests) == 3
    # another prompt or parameter is another key: asked again
    caption_dataset(data, tmp_path / "out", api(server), prompt="Describe.", progress=False)
    assert len(server.requests) == 6
    params = GenerationParams(max_tokens=5)
    caption_dataset(data, tmp_path / "out", api(server, params=params), progress=False)
    assert len(server.requests) == 9
    # the reader hook attaches the captions to the original items by id
    ds = load_dataset(data, captions=tmp_path / "out/captions.jsonl")
    item = ds.split().items["img/copy.jpg"]
    assert item.captions == ["a red picture, 20 by 10 pixels"]


def test_partial_writes_from_cache_without_requests(tmp_path, server):
    data = make_evalscope(tmp_path / "data", 4)
    caption_dataset(data, tmp_path / "out", api(server), limit=2, progress=False)
    assert len(server.requests) == 2
    summary = caption_dataset(data, tmp_path / "out", api(server), partial=True, progress=False)
    assert len(server.requests) == 2
    assert summary.stats["cached"] == 2 and summary.stats["missing"] == 2
    assert summary.stats["failed"] == 0
    assert summary.retrieval["corpus"] == 2


def test_kill_mid_run_and_resume_without_duplicate_requests(tmp_path):
    data = make_evalscope(tmp_path / "data", 24)
    srv = CaptionServer(latency_s=0.3).start()
    try:
        out = tmp_path / "out"
        cmd = [
            sys.executable,
            "-m",
            "xmr",
            "caption",
            "--data",
            str(data),
            "--out",
            str(out),
            "--api-base",
            srv.base_url,
            "--api-model",
            "tiny-vlm",
            "--concurrency",
            "2",
        ]
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(srv.requests) < 8 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "retrieval_data").exists()  # killed before the end
        finished = {r["image_sha256"] for r in map(json.loads, (out / "captions.jsonl").open())}
        assert 1 <= len(finished) < 24
        before = len(srv.requests)
        rc = main(
            [
                "caption",
                "--data",
                str(data),
                "--out",
                str(out),
                "--api-base",
                srv.base_url,
                "--api-model",
                "tiny-vlm",
                "--json",
            ]
        )
        assert rc == 0
        resumed = srv.shas()[before:]
        assert not finished & set(resumed)  # nothing finished was asked again
        assert len(set(resumed)) == len(resumed) == 24 - len(finished)
        corpus = (out / "retrieval_data" / "corpus.jsonl").read_text().splitlines()
        assert len(corpus) == 24
    finally:
        srv.stop()


def test_image_data_url_keeps_or_converts_safely():
    def encode(img, fmt, **kw):
        import io

        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    jpeg = encode(Image.new("RGB", (4, 4), "red"), "JPEG")
    url, mime, reencoded = image_data_url(jpeg)
    assert mime == "image/jpeg" and not reencoded
    assert base64.b64decode(url.split(",", 1)[1]) == jpeg
    cmyk = encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG")
    url, mime, reencoded = image_data_url(cmyk)
    assert mime == "image/png" and reencoded
    back = Image.open(__import__("io").BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert back.mode == "RGB" and back.getpixel((1, 1))[0] > 200
    deep = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))
    url, mime, _ = image_data_url(encode(deep, "PNG"))
    back = Image.open(__import__("io").BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert back.mode == "L" and abs(back.getpixel((0, 0)) - 128) <= 1  # scaled, not clipped
    alpha = encode(Image.new("RGBA", (4, 4), (0, 0, 255, 100)), "TIFF")
    url, mime, _ = image_data_url(alpha)
    back = Image.open(__import__("io").BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert mime == "image/png" and back.mode == "RGBA" and back.getpixel((0, 0))[3] == 100
    with pytest.raises(DataError, match="undecodable"):
        image_data_url(b"not an image", source="x.jpg")


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_cli_refuses_bad_model_options(tmp_path, capsys):
    data = make_evalscope(tmp_path / "data", 1)
    assert main(["caption", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "--api-base" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    rc = main(
        [
            "caption",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "foreign"),
            "--api-base",
            "http://127.0.0.1:9/v1",
            "--api-model",
            "m",
        ]
    )
    assert rc == 2 and "not an xmr caption directory" in capsys.readouterr().err


def test_default_ids_never_collide(tmp_path):
    from xmr.data.dataset import Item, Query, Split
    from xmr.workflows.caption_outputs import retrieval_records, write_retrieval_data

    split = Split("test")
    split.items = {"1": Item("1"), "2": Item("2"), "7": Item("7")}
    split.queries = {"1": Query("1", "one"), "2": Query("2", "two"), "3": Query("3", "none")}
    split.relevance = {"1": {"2"}, "2": {"1", "7"}, "3": {"7"}}
    captions = {"1": "c1", "2": "c2"}  # item 7's caption failed
    corpus, queries, qrels, counts = retrieval_records(split, captions)
    assert counts["ids"] == "prefixed"
    assert [d["_id"] for d in corpus] == ["d:1", "d:2"]
    assert [q["_id"] for q in queries] == ["q:1", "q:2"]  # query 3 lost its only image
    assert qrels == [("q:1", "d:2"), ("q:2", "d:1")]
    assert counts["items_left_out"] == 1 and counts["queries_left_out"] == 1
    write_retrieval_data(tmp_path, split, captions)
    beir = load_dataset(tmp_path / "retrieval_data", "beir").split()
    assert beir.relevance == {"q:1": {"d:2"}, "q:2": {"d:1"}}
    assert not set(beir.queries) & set(beir.items)


def test_failed_records_attach_nothing_and_torn_lines_are_dropped(tmp_path, server):
    data = make_evalscope(tmp_path / "data", 2)
    server.plan[sha(data / "img" / "0.jpg")] = ["400"]
    caption_dataset(data, tmp_path / "out", api(server), progress=False)
    cache = tmp_path / "out" / "captions.jsonl"
    ds = load_dataset(data, captions=cache).split()
    assert ds.items["img/0.jpg"].captions == []
    assert ds.items["img/1.png"].captions == ["a blue picture, 21 by 11 pixels"]
    # a kill in the middle of a write leaves half a line: dropped, and the run goes on
    with open(cache, "a") as fh:
        fh.write('{"id": "img/0.jpg", "image_sha')
    again = caption_dataset(data, tmp_path / "out", api(server), progress=False)
    assert again.stats["captioned"] == 1 and again.stats["cached"] == 1
    assert all(json.loads(line) for line in cache.read_text().splitlines())
    # a bad line in the middle is an error naming the file and the line
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"captions.jsonl.*2"):
        caption_dataset(data, tmp_path / "out", api(server), progress=False)
