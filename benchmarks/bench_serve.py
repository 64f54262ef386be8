"""Load test of `xmr serve` on loopback: requests/s and p50/p99 latency of text search at 1, 8
and 32 concurrent clients, with micro-batching on and off.

The server is the real command (``python -m xmr serve INDEX --port P``, one process, CPU) bound to
127.0.0.1; the load generator is asyncio + httpx in this process. Each level sends a fixed number
of requests (``--requests``) after a short warm-up, so the run is bounded and stops by itself.
Nothing leaves the machine.

Without ``--index`` it builds a throwaway index: a random CLIP over ``--items`` generated images
whose text tower (what a text query costs) is ``--text-width`` wide with ``--text-layers`` layers
(default 384 x 6, 32 tokens: a few tens of ms a query on a CPU core; ``--text-width 512
--text-layers 12 --context 77`` is ViT-B/32's text tower). Query texts vary in length and are
never repeated back to back.

    python benchmarks/bench_serve.py [--index DIR] [--requests 256] [--clients 1,8,32]
        [--baseline-src OTHER_CHECKOUT/src]

``--baseline-src`` adds a third server, batching on, running another source tree (e.g. the
main branch before a change), alternating with the other two: "baseline" rows and a
this-tree/baseline ratio per level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

COLOURS = ["white", "black", "red", "blue", "yellow", "green", "grey", "silver", "orange", "brown"]
THINGS = ["sedan", "SUV", "truck", "van", "bus", "hatchback", "pickup", "man", "woman", "cyclist"]
EXTRAS = [
    "",
    " parked by the road",
    " with a backpack, seen from behind",
    " driving on a wet street at night under orange lights",
    " in a long coat and a hat, carrying a handbag and walking towards the camera",
]


def query_texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        c, t, e = COLOURS[i % 10], THINGS[(i // 10) % 10], EXTRAS[(i * 7) % len(EXTRAS)]
        out.append(f"a {c} {t}{e}")
    return out


def build_index(root: Path, items: int, width: int, layers: int, context: int) -> Path:
    from PIL import Image, ImageDraw

    from xmr.data.dataset import Item, Split
    from xmr.data.images import ImageRef
    from xmr.encode import encode_split, load_embeddings, load_metadata
    from xmr.index import build_index as build
    from xmr.models import create_encoder
    from xmr.models.tiny import create_tiny_clip

    images = root / "images"
    images.mkdir(parents=True)
    split = Split(name="bench")
    texts = query_texts(100)
    for i in range(items):
        img = Image.new("RGB", (96, 96), (i * 37 % 256, i * 91 % 256, i * 53 % 256))
        ImageDraw.Draw(img).ellipse((10 + i % 20, 10, 80, 70 + i % 20), fill=(250, 250, 250))
        path = images / f"{i:05d}.jpg"
        img.save(path)
        split.items[str(i)] = Item(str(i), ImageRef(path=str(path)), captions=[texts[i % 100]])
    model = create_tiny_clip(
        root / "model",
        texts=texts,
        embed_dim=512,
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_layers=1,
        text_width=width,
        text_layers=layers,
        heads=8,
        context_length=context,
    )
    encoder = create_encoder(f"hf:{model}", device="cpu")
    encode_split(encoder, split, root / "emb", kinds=("images",), progress=False)
    emb = load_embeddings(root / "emb")
    meta = load_metadata(root / "emb")
    index = build(emb.vectors, emb.ids, "Flat", items=[meta[i] for i in emb.ids], model=emb.model)
    return index.save(root / "index")


def encoder_curve(index: Path, texts: list[str], sizes=(1, 8, 32)) -> list[tuple[int, float]]:
    """Texts/s of the index's model alone at a few batch sizes: the ceiling batching aims at."""
    from xmr.index import load_index
    from xmr.models import create_encoder

    encoder = create_encoder(load_index(index).model["spec"], device="cpu")
    out = []
    for b in sizes:
        encoder.encode_texts(texts[:b])
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            encoder.encode_texts(texts[(n * b) % 500 : (n * b) % 500 + b])
            n += 1
        out.append((b, b * n / (time.perf_counter() - t0)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    import json

    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class Server:
    """``python -m xmr serve INDEX`` on a free loopback port (``extra``: more serve options)."""

    def __init__(
        self,
        index: Path,
        batching: bool,
        wait_ms: float,
        src: Path | None = None,
        *,
        extra: Sequence[str] = (),
        startup_s: float = 120,
    ) -> None:
        self.startup_s = startup_s
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "xmr",
            "serve",
            str(index),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--batch-wait-ms",
            str(wait_ms),
        ]
        if not batching:
            cmd.append("--no-batching")
        cmd.extend(extra)
        env = None
        if src is not None:  # another checkout's package, first on the path
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + self.startup_s
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode()}")
            try:
                get_json(f"{self.base}/api/health")
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"server did not start in {self.startup_s:.0f} s") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(base: str, clients: int, n_requests: int, texts: list[str], k: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    next_i = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i, errors
        while next_i < n_requests:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            r = await client.get("/api/search", params={"q": texts[i % len(texts)], "k": k})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        # Warm-up: connections open; every query length and batch shape seen once (the first
        # call of a new shape is slow in torch), so the timed part measures steady state.
        for t in texts[:20]:
            await client.get("/api/search", params={"q": t, "k": k})
        for _ in range(2):
            await asyncio.gather(
                *(client.get("/api/search", params={"q": t, "k": k}) for t in texts[:clients])
            )
        before = get_json(f"{base}/api/info")["batching"]["text_calls"]
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        after = get_json(f"{base}/api/info")["batching"]["text_calls"]
    calls = after["calls"] - before["calls"]
    lat = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": errors,
        "rps": len(lat) / elapsed,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
        "encoder_calls": calls,
        "mean_batch": (after["items"] - before["items"]) / calls if calls else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, help="an index directory (default: build one)")
    p.add_argument("--items", type=int, default=500, help="images in the built index")
    p.add_argument("--text-width", type=int, default=384, help="text tower width (built index)")
    p.add_argument("--text-layers", type=int, default=6, help="text tower layers (built index)")
    p.add_argument("--context", type=int, default=32, help="text tokens (built index)")
    p.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also serve (batching on) from this source tree and compare with it",
    )
    args = p.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    texts = query_texts(1000)

    with tempfile.TemporaryDirectory(prefix="xmr-bench-serve-") as tmp:
        index = args.index
        if index is None:
            t0 = time.perf_counter()
            index = build_index(
                Path(tmp), args.items, args.text_width, args.text_layers, args.context
            )
            print(
                f"built a {args.items}-item index (text tower {args.text_width} x "
                f"{args.text_layers}, {args.context} tokens) in {time.perf_counter() - t0:.1f} s"
            )
        curve = encoder_curve(index, texts)
        print("encoder alone: " + ", ".join(f"batch {b}: {r:.0f} texts/s" for b, r in curve))
        rows = []
        # Both servers run side by side (an idle one costs nothing) and the levels alternate
        # between them, so a neighbour's load on the machine hits both sides alike.
        with contextlib.ExitStack() as stack:
            on = stack.enter_context(Server(index, True, args.batch_wait_ms))
            off = stack.enter_context(Server(index, False, args.batch_wait_ms))
            servers = [(on, "on"), (off, "off")]
            if args.baseline_src is not None:
                base = Server(index, True, args.batch_wait_ms, src=args.baseline_src)
                servers.append((stack.enter_context(base), "baseline"))
            info = get_json(f"{on.base}/api/info")
            for clients in levels:
                for server, mode in servers:
                    r = asyncio.run(load(server.base, clients, args.requests, texts, args.k))
                    r["batching"] = mode
                    rows.append(r)
                    print(
                        f"  batching {mode:>3}  clients {clients:>3}: "
                        f"{r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                        f"p99 {r['p99_ms']:7.1f} ms  mean batch {r['mean_batch']:.1f}",
                        flush=True,
                    )
        order = {"on": 0, "off": 1, "baseline": 2}
        rows.sort(key=lambda r: (order[r["batching"]], r["clients"]))

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"index: {info['size']} items, {info['index_type']}, {info['dim']}-d; "
        f"{args.requests} requests per level, k={args.k}, batch wait {args.batch_wait_ms} ms"
    )
    print()
    print(
        "| micro-batching | clients | req/s | p50 ms | p99 ms | encoder calls | mean batch | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['batching']} | {r['clients']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['encoder_calls']} | {r['mean_batch']:.1f} | {r['errors']} |"
        )
    by = {(r["batching"], r["clients"]): r for r in rows}
    for c in levels:
        on, off = by.get(("on", c)), by.get(("off", c))
        if on and off:
            print(f"clients {c}: batching gives {on['rps'] / off['rps']:.2f}x the throughput")
        baseline = by.get(("baseline", c))
        if on and baseline:
            print(
                f"clients {c}: this tree gives {on['rps'] / baseline['rps']:.2f}x the baseline's "
                f"throughput (p50 {on['p50_ms']:.1f} vs {baseline['p50_ms']:.1f} ms)"
            )


if __name__ == "__main__":
    main()
