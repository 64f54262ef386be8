"""``xmr translate`` against the loopback server: text-only requests, cache, and seed 001's
cleaning (foreign characters, empty texts, duplicates, items whose caption failed)."""

from __future__ import annotations

import hashlib
import json

import pytest

from caption_server import CaptionServer
from test_caption import make_evalscope
from xmr.cli import main
from xmr.data.readers import load_dataset
from xmr.models.captioners import GenerationParams, create_captioner, sha256_text
from xmr.workflows.caption import caption_dataset
from xmr.workflows.translate import DEFAULT_PROMPT, clean_script, translate_dataset


@pytest.fixture
def server():
    srv = CaptionServer().start()
    yield srv
    srv.stop()


def api(server, **kw):
    return create_captioner(
        "api:tiny-llm",
        api_base=server.base_url,
        params=GenerationParams(),
        retries=0,
        backoff_base=0.01,
        **kw,
    )


def request_sha(text: str) -> str:
    prompt = DEFAULT_PROMPT.replace("{language}", "English").replace("{text}", text)
    return sha256_text(prompt)


def test_clean_script():
    assert clean_script("红色 dress，长款 2024!", "en") == "dress 2024!"
    assert clean_script("Café crème", "fr") == "Café crème"
    assert clean_script("红色 dress", "zh") == "红色 dress"
    assert clean_script("  a   b ", "xx") == "a b"


def test_translate_cleans_and_resumes(tmp_path, server):
    root = make_evalscope(tmp_path / "data", 4)
    lines = [json.loads(x) for x in (root / "image_queries.jsonl").open()]
    lines[0]["query"] = ["红色 shared text"]
    lines[1]["query"] = ["蓝色 shared text"]  # the same once the Chinese is dropped
    lines[2]["query"] = ["中文"]  # nothing left
    lines[3]["query"] = ["yellow 黄色 thing"]
    (root / "image_queries.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    # captions from a caption run; image 3's caption fails there
    server.plan[hashlib.sha256((root / "img/3.png").read_bytes()).hexdigest()] = ["400"]
    caption_dataset(root, tmp_path / "cap", api(server), progress=False)
    server.plan[request_sha("a blue picture, 21 by 11 pixels")] = ["400"]  # a failed translation
    summary = translate_dataset(
        root,
        tmp_path / "out",
        api(server),
        captions=tmp_path / "cap/captions.jsonl",
        progress=False,
    )
    assert summary["texts"] == 7 and summary["translated"] == 6 and summary["failed"] == 1
    assert summary["dropped"] == {
        "failed_queries": 0,
        "empty_queries": 1,
        "duplicate_queries": 1,
        "failed_captions": 1,
        "empty_captions": 0,
        "duplicate_captions": 0,
        "uncaptioned_items": 2,
    }
    ds = load_dataset(tmp_path / "out" / "dataset", "beir").split()
    assert sorted(ds.items) == ["img/0.jpg", "img/2.jpg"]
    texts = sorted(q.text for q in ds.queries.values())
    assert texts == ["shared text"]  # "thing" query lost its only (uncaptioned) image
    (query,) = ds.queries.values()
    assert len(ds.relevance[query.id]) == 1  # image 0; image 1 was dropped (failed caption)
    assert all(it.image is not None for it in ds.items.values())
    # a re-run asks only for the failed text
    before = len(server.requests)
    rc = main(
        [
            "translate",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "out"),
            "--captions",
            str(tmp_path / "cap/captions.jsonl"),
            "--api-base",
            server.base_url,
            "--api-model",
            "tiny-llm",
            "--json",
        ]
    )
    assert rc == 0
    assert server.shas()[before:] == [request_sha("a blue picture, 21 by 11 pixels")]
    again = json.loads((tmp_path / "out" / "translate.json").read_text())
    assert again["cached"] == 6 and again["translated"] == 1
    assert again["dropped"]["uncaptioned_items"] == 1
    assert all(
        r["body"]["messages"][-1]["content"].startswith("Translate")
        for r in server.requests[before:]
    )
