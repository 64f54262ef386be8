"""Text queries with ``--runtime onnx`` against eager PyTorch, in one run: the Searcher's text
encoding at batch 1 and 32 (the library path ``Searcher.from_index_dir(runtime=...)``), then two
real ``xmr serve`` processes (``--runtime eager`` / ``--runtime onnx``) under load on loopback.

The index and model are ``bench_serve.py``'s throwaway ones (a random CLIP whose text tower is
``--text-width`` x ``--text-layers``, ``--context`` tokens; default 384 x 6, 32 tokens). The ONNX
export is made once into a temporary ``XMR_CACHE_DIR`` (its time is printed, and the time of a
second load that reuses it), so the ONNX server starts from the cache. Eager and ONNX calls
alternate, so a neighbour's load hits both alike. Needs the onnx extra (``xmr[onnx]``).

    python benchmarks/bench_text_runtime.py [--repeats 20] [--requests 128] [--clients 1,8,32]
        [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import Server, build_index, load, query_texts  # noqa: E402

# The servers differ only in the text runtime (an ONNX export can take minutes to load cold).
SERVE_ARGS = {r: ("--device", "cpu", "--runtime", r) for r in ("eager", "onnx")}


def timed_pair(fns, repeats: int) -> list[float]:
    """Seconds per call of each fn, calls interleaved (warm-up: two calls each)."""
    for fn in fns:
        fn()
        fn()
    total = [0.0] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            total[i] += time.perf_counter() - t0
    return [t / repeats for t in total]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=200, help="images in the built index")
    p.add_argument("--text-width", type=int, default=384)
    p.add_argument("--text-layers", type=int, default=6)
    p.add_argument("--context", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20, help="timed calls per batch size")
    p.add_argument("--requests", type=int, default=128, help="HTTP requests per level")
    p.add_argument("--clients", default="1,8,32", help="HTTP concurrency levels ('' skips)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch (and so ONNX Runtime) threads, here "
        "and in the servers (OMP_NUM_THREADS) (default: torch's)"
    )  # fmt: skip
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the servers inherit it

    from xmr.search import Searcher

    texts = query_texts(1000)
    with tempfile.TemporaryDirectory(prefix="xmr-bench-text-runtime-") as tmp:
        os.environ["XMR_CACHE_DIR"] = str(Path(tmp) / "cache")  # the servers inherit it
        index = build_index(Path(tmp), args.items, args.text_width, args.text_layers, args.context)
        print(
            f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads); text tower "
            f"{args.text_width} x {args.text_layers}, {args.context} tokens"
        )
        eager = Searcher.from_index_dir(index)
        t0 = time.perf_counter()
        onnx = Searcher.from_index_dir(index, runtime="onnx")
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = Searcher.from_index_dir(index, runtime="onnx")
        reload_s = time.perf_counter() - t0
        assert onnx.encoder.text_runtime.exported and not again.encoder.text_runtime.exported
        print(f"load with export: {export_s:.1f} s; second load (cached): {reload_s:.1f} s")
        for batch in (1, 32):
            chunks = [texts[i : i + batch] for i in range(0, 640, batch)]
            pos = [0]  # both sides encode the same chunk, then move on to the next

            def run_eager(chunks=chunks, pos=pos):
                eager.encode_texts(chunks[pos[0] % len(chunks)])

            def run_onnx(chunks=chunks, pos=pos):
                onnx.encode_texts(chunks[pos[0] % len(chunks)])
                pos[0] += 1

            te, to = timed_pair([run_eager, run_onnx], args.repeats)
            diff = max(
                float(np.abs(onnx.encode_texts(c) - eager.encode_texts(c)).max())
                for c in chunks[:5]
            )
            print(
                f"Searcher.encode_texts batch {batch:2d}: eager {te * 1e3:7.1f} ms | onnx "
                f"{to * 1e3:7.1f} ms | x{te / to:.2f} | max |diff| {diff:.1e}"
            )
        eager = onnx = again = None  # free the models before the servers start
        levels = [int(x) for x in args.clients.split(",") if x.strip()]
        if not levels:
            return
        rows = {}
        with contextlib.ExitStack() as stack:
            servers = {
                r: stack.enter_context(Server(index, True, 5.0, extra=SERVE_ARGS[r], startup_s=300))
                for r in ("eager", "onnx")
            }
            for clients in levels:
                for runtime, server in servers.items():
                    r = asyncio.run(load(server.base, clients, args.requests, texts, 10))
                    rows[runtime, clients] = r
                    print(
                        f"xmr serve --runtime {runtime:5s} clients {clients:2d}: "
                        f"{r['rps']:6.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 "
                        f"{r['p99_ms']:6.1f} ms  mean batch {r['mean_batch']:.1f}  "
                        f"errors {r['errors']}",
                        flush=True,
                    )
        for clients in levels:
            e, o = rows["eager", clients], rows["onnx", clients]
            print(
                f"clients {clients:2d}: onnx gives x{o['rps'] / e['rps']:.2f} the throughput, "
                f"p50 {o['p50_ms']:.1f} vs {e['p50_ms']:.1f} ms"
            )


if __name__ == "__main__":
    main()
