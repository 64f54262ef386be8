"""``xmr caption`` against a real ``transformers serve`` (transformers' own OpenAI-compatible
server) on loopback, serving a tiny random LLaVA saved with ``save_pretrained``, offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from test_caption import make_evalscope
from xmr.data.readers import load_dataset
from xmr.models.caption_hf import create_tiny_llava_captioner
from xmr.models.captioners import GenerationParams, create_captioner
from xmr.workflows.caption import caption_dataset

pytest.importorskip(
    "accelerate", reason="transformers serve needs accelerate (make test installs it)"
)
pytest.importorskip("fastapi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_caption_through_transformers_serve(tmp_path):
    model_dir = create_tiny_llava_captioner(tmp_path / "llava")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    code = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()"
    cmd = [
        sys.executable,
        "-c",
        code,
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start in 180 s:\n{log.read_text()}")
            time.sleep(0.5)
        data = make_evalscope(tmp_path / "data", 4)
        captioner = create_captioner(
            f"api:{model_dir}",
            api_base=f"http://127.0.0.1:{port}/v1",
            params=GenerationParams(max_tokens=6),
            concurrency=2,
            timeout=120,
        )
        summary = caption_dataset(data, tmp_path / "out", captioner, progress=False)
        assert summary.stats["captioned"] == 4 and summary.stats["failed"] == 0
        records = [json.loads(x) for x in (tmp_path / "out" / "captions.jsonl").open()]
        assert all(r["caption"] and r["usage"]["completion_tokens"] > 0 for r in records)
        beir = load_dataset(tmp_path / "out" / "retrieval_data", "beir").split()
        assert {iid: it.captions[0] for iid, it in beir.items.items()} == {
            r["id"]: r["caption"] for r in records
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
