"""FAISS vs milvus-lite through xmr's one index interface: build time, query latency, recall@10.

Both backends index the same N random L2-normalised vectors of dimension D with
``xmr.index.build_index`` (FAISS: ``Flat`` and ``IVF{4*sqrt(N)},Flat``; Milvus: ``FLAT`` and
``IVF_FLAT:nlist=4*sqrt(N)``, the two ``auto`` picks, with the same nprobe), saved to a
directory. The build time covers creating the index, adding (Milvus: upserting in batches of
1000 over gRPC to the in-process milvus-lite server, then flushing, which builds the segment
index) and saving; the recall measurement xmr does at build is excluded (it is done after, on
its own). Query latency is one query at a time through ``Index.search`` (k=10), the way a
service asks, median and p95 over Q queries; recall@10 is against ``exact_search`` on Q fresh
random queries. The reference for each figure is FAISS (ratio = Milvus / FAISS).

    python benchmarks/bench_milvus.py [--n 100000] [--dim 512] [--queries 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from xmr.index import build_index, exact_search, load_index

K = 10


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _run(name, backend, spec, x, ids, queries, exact, out: Path, nprobe) -> dict:
    started = time.perf_counter()
    index = build_index(
        x,
        ids,
        spec,
        backend=backend,
        nprobe=nprobe,
        recall_queries=queries[:1],  # the build-time recall is measured again below
        backend_options={"lite_path": out / "milvus.db"} if backend == "milvus" else None,
    )
    build_plus = time.perf_counter() - started
    index.save(out)
    build_s = index.manifest["build_seconds"] + (time.perf_counter() - started - build_plus)
    index = load_index(out)
    times = []
    found = []
    for q in queries:
        t = time.perf_counter()
        hits = index.search(q, K)[0]
        times.append(time.perf_counter() - t)
        found.append([h.position for h in hits])
    recall = np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)])
    ms = np.asarray(times) * 1000
    return {
        "name": name,
        "spec": index.manifest["index"]["type"],
        "build_s": build_s,
        "p50_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "recall": float(recall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x = _vectors(args.n, args.dim, args.seed)
    ids = [f"v{i}" for i in range(args.n)]
    queries = _vectors(args.queries, args.dim, args.seed + 1)
    _, exact = exact_search(x, queries, K)
    nlist = int(round(4 * np.sqrt(args.n)))
    nprobe = min(nlist, max(8, min(256, nlist // 16)))
    print(
        f"# {args.n} x {args.dim} random normalised vectors, {args.queries} queries, k={K}; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); nlist {nlist}, "
        f"nprobe {nprobe}"
    )
    runs = [
        ("faiss", "faiss", "Flat"),
        ("milvus-lite", "milvus", "FLAT"),
        ("faiss", "faiss", f"IVF{nlist},Flat"),
        ("milvus-lite", "milvus", f"IVF_FLAT:nlist={nlist}"),
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, backend, spec) in enumerate(runs):
            out = Path(tmp) / f"index{i}"
            results.append(_run(name, backend, spec, x, ids, queries, exact, out, nprobe))
            r = results[-1]
            print(
                f"{r['name']:12s} {r['spec']:22s} build {r['build_s']:8.2f} s   query p50 "
                f"{r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms   recall@10 {r['recall']:.4f}",
                flush=True,
            )
    print("# ratios milvus-lite / faiss (build time, query p50)")
    for ref, mil in ((results[0], results[1]), (results[2], results[3])):
        print(
            f"{mil['spec']:22s} vs {ref['spec']:16s} build x{mil['build_s'] / ref['build_s']:.1f}"
            f"  query x{mil['p50_ms'] / ref['p50_ms']:.1f}"
        )


if __name__ == "__main__":
    main()
