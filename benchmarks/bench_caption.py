"""Captions/s: ``xmr caption`` against evalscope's loop shape, on the same loopback server.

The server is the OpenAI-compatible test server (``tests/caption_server.py``) with a fixed
latency per request (default 100 ms), standing in for a vision LLM that takes that long.

- evalscope's shape: the synchronous ``openai`` client, one request at a time, every image
  re-encoded to a base64 JPEG before it is sent, everything kept in memory until the end (as its
  ``VLMAPI.encode_image`` loop does; restated here, not evalscope's code).
- xmr: ``caption_dataset`` with the ``api`` captioner (async client, ``--concurrency``), the
  original bytes sent, every answer appended to the cache as it arrives, BEIR files written.

Both caption the same generated images; the script checks that both got the same captions.

    python benchmarks/bench_caption.py [--images 100] [--latency 0.1] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from caption_server import COLOURS, CaptionServer  # noqa: E402
from xmr.models.captioners import (  # noqa: E402
    DEFAULT_CAPTION_PROMPT,
    GenerationParams,
    create_captioner,
)
from xmr.workflows.caption import caption_dataset  # noqa: E402


def make_data(root: Path, n: int) -> Path:
    from PIL import Image

    (root / "img").mkdir(parents=True)
    names = list(COLOURS)
    lines = []
    for i in range(n):
        Image.new("RGB", (64 + i, 48), names[i % len(names)]).save(root / "img" / f"{i}.jpg")
        lines.append({"image_path": f"img/{i}.jpg", "query": [f"text {i}"]})
    (root / "image_queries.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def evalscope_shape(base_url: str, files: list[Path]) -> list[str]:
    from openai import OpenAI
    from PIL import Image

    client = OpenAI(base_url=base_url, api_key="EMPTY")
    captions = []
    for file in files:
        buf = io.BytesIO()
        Image.open(file).convert("RGB").save(buf, format="JPEG")
        image = base64.b64encode(buf.getvalue()).decode()
        message = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": DEFAULT_CAPTION_PROMPT},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
                ],
            }
        ]
        result = client.chat.completions.create(messages=message, model="m", temperature=0)
        captions.append(result.choices[0].message.content)
    return captions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    server = CaptionServer(latency_s=args.latency).start()
    print(
        f"{args.images} images, server latency {args.latency * 1000:.0f} ms, loopback; "
        f"{platform.machine()}, python {platform.python_version()}"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = make_data(Path(tmp) / "data", args.images)
            files = [data / "img" / f"{i}.jpg" for i in range(args.images)]
            started = time.perf_counter()
            reference = evalscope_shape(server.base_url, files)
            ref_s = time.perf_counter() - started
            ref_rate = args.images / ref_s
            print(f"evalscope shape (sequential):     {ref_s:7.2f} s  {ref_rate:7.1f} captions/s")
            for conc in [int(c) for c in args.concurrency.split(",")]:
                captioner = create_captioner(
                    "api:m",
                    api_base=server.base_url,
                    params=GenerationParams(),
                    concurrency=conc,
                )
                out = Path(tmp) / f"out{conc}"
                started = time.perf_counter()
                caption_dataset(data, out, captioner, progress=False)
                xmr_s = time.perf_counter() - started
                corpus = [json.loads(x) for x in (out / "retrieval_data/corpus.jsonl").open()]
                got = {d["_id"]: d["text"] for d in corpus}
                assert [got[f"img/{i}.jpg"] for i in range(args.images)] == reference
                rate = args.images / xmr_s
                print(
                    f"xmr caption --concurrency {conc:<3}:     {xmr_s:7.2f} s  {rate:7.1f} "
                    f"captions/s  ({rate / ref_rate:.1f}x)"
                )
            print("captions equal: xmr's corpus matches the sequential loop's answers")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
