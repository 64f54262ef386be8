"""CPU cost of one search request through the service, this tree against another checkout.

Each side runs in its own process: ``create_app(INDEX, ServeSettings(batching=False))`` driven
in-process by httpx over ASGI (no sockets), one request at a time, text searches (``GET
/api/search?q=...&k=10``) and queries by example (``POST /api/search {"item_id"}``). The measure
is process CPU time per request (all threads), which a busy shared machine disturbs far less
than wall time; the encoder's own CPU time per text (one text per call, as the requests make
it) is measured in the same process and reported beside it, so what the service adds is the
difference. Rounds alternate between the two sides.

    python benchmarks/bench_serve_overhead.py --baseline-src OTHER_CHECKOUT/src [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import asyncio, json, sys, time
import httpx
from xmr.search import Searcher
from xmr.serve import ServeSettings, create_app

index, n = sys.argv[1], int(sys.argv[2])
texts = [f"a {c} {t} number {i}" for i, (c, t) in enumerate(
    (c, t) for c in ("red", "white", "black", "blue") for t in ("car", "van", "bus", "man"))]
searcher = Searcher.from_index_dir(index)
ids = list(searcher.index.ids)

def cpu_per(fn, reps):
    for i in range(20):
        fn(i)
    t0 = time.process_time()
    for i in range(reps):
        fn(i)
    return 1000 * (time.process_time() - t0) / reps

app = create_app(searcher, ServeSettings(batching=False))

async def run():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
        async def text(i):
            r = await ac.get("/api/search", params={"q": texts[i % len(texts)], "k": 10})
            assert r.status_code == 200, r.text
        async def example(i):
            r = await ac.post("/api/search", json={"item_id": ids[i % len(ids)], "k": 10})
            assert r.status_code == 200, r.text
        out = {}
        for name, fn in (("text", text), ("example", example)):
            for i in range(20):
                await fn(i)
            t0 = time.process_time()
            for i in range(n):
                await fn(i)
            out[name] = 1000 * (time.process_time() - t0) / n
        return out

out = asyncio.run(run())
out["encoder"] = cpu_per(lambda i: searcher.encoder.encode_texts([texts[i % len(texts)]]), n)
print(json.dumps(out))
"""


def run_side(src: Path, index: Path, n: int) -> dict:
    # PASSIVE, as `xmr` sets it: spinning OpenMP threads would count as CPU time.
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(index), str(n)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{src}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline-src", type=Path, required=True, help="the other checkout's src")
    p.add_argument("--index", type=Path, help="an index directory (default: build one)")
    p.add_argument("--requests", type=int, default=200, help="timed requests per kind and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    here = Path(__file__).resolve().parents[1] / "src"
    with tempfile.TemporaryDirectory(prefix="xmr-bench-overhead-") as tmp:
        index = args.index
        if index is None:
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_serve import build_index

            t0 = time.perf_counter()
            index = build_index(Path(tmp), 300, 384, 6, 32)
            print(f"built a 300-item index in {time.perf_counter() - t0:.1f} s")
        results: dict[str, list[dict]] = {"this tree": [], "baseline": []}
        for r in range(args.rounds):
            for name, src in (("this tree", here), ("baseline", args.baseline_src)):
                out = run_side(src, index, args.requests)
                results[name].append(out)
                print(
                    f"round {r + 1} {name:>9}: text search {out['text']:.2f} ms CPU, by example "
                    f"{out['example']:.2f} ms, encoder alone {out['encoder']:.2f} ms",
                    flush=True,
                )
    print()
    print("| side | text search ms CPU | encoder alone ms CPU | service's own ms | by example ms |")
    print("|---|---:|---:|---:|---:|")
    best = {}
    for name, rows in results.items():
        text = min(r["text"] for r in rows)
        enc = min(r["encoder"] for r in rows)
        ex = min(r["example"] for r in rows)
        best[name] = (text, enc, ex)
        print(f"| {name} | {text:.2f} | {enc:.2f} | {text - enc:.2f} | {ex:.2f} |")
    (t1, e1, x1), (t0, e0, x0) = best["this tree"], best["baseline"]
    print(
        f"this tree / baseline (best of {args.rounds} rounds): text search {t1 / t0:.2f}x, "
        f"service's own part {(t1 - e1) / (t0 - e0):.2f}x, by example {x1 / x0:.2f}x"
    )


if __name__ == "__main__":
    main()
