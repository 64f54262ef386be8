"""What writing ``index.faiss`` through a Python file costs against faiss' own file writer.

xmr's ``FaissBackend.save`` hands faiss a ``PyCallbackIOWriter`` over a Python file, so a full
disk (the final flush included, which faiss' own writer ignores) raises an error naming the file.
This measures that path against ``faiss.write_index(index, path)`` on the same index, and checks
that both files are byte-identical.

    python benchmarks/bench_index_write.py [--n 500000] [--dim 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from xmr.index.faiss_index import INDEX_FILE, FaissBackend


def best_of_interleaved(repeat: int, *runs) -> list[float]:
    """The best time of each run over ``repeat`` rounds, the runs alternating within a round (so
    that neither side always gets the warm page cache or the quiet moment)."""
    times: list[list[float]] = [[] for _ in runs]
    for r in range(repeat):
        order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            started = time.perf_counter()
            runs[i]()
            times[i].append(time.perf_counter() - started)
    return [min(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    x = np.random.default_rng(0).standard_normal((args.n, args.dim), dtype=np.float32)
    index = faiss.IndexFlatIP(args.dim)
    index.add(x)
    backend = FaissBackend(index, "Flat", gpu=False)
    mb = args.n * args.dim * 4 / 2**20
    print(
        f"Flat index of {args.n} x {args.dim} float32 ({mb:.0f} MB); faiss {faiss.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}; best of {args.repeat}"
    )
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        native_dir, xmr_dir = Path(tmp, "native"), Path(tmp, "xmr")
        native_dir.mkdir()
        xmr_dir.mkdir()
        native, ours = best_of_interleaved(
            args.repeat,
            lambda: faiss.write_index(index, str(native_dir / INDEX_FILE)),
            lambda: backend.save(xmr_dir),
        )
        same = (native_dir / INDEX_FILE).read_bytes() == (xmr_dir / INDEX_FILE).read_bytes()
    print(f"files identical: {same}")
    print(
        f"faiss.write_index(index, path):           {native * 1000:8.1f} ms  {mb / native:7.0f} MB/s"
    )
    print(f"xmr FaissBackend.save (Python file):      {ours * 1000:8.1f} ms  {mb / ours:7.0f} MB/s")
    print(f"xmr / faiss time: {ours / native:.2f}x")
    if not same:
        raise SystemExit("the two files differ")


if __name__ == "__main__":
    main()
