"""Multi-vector items (BLIP-2: K=32 query embeddings per image): memory and speed alternatives
against exact max-sim, on the same data, in one run.

Items are synthetic BLIP-2-like token sets: item ``i`` has a centre ``c_i`` and K tokens
``normalize(c_i + s * (t_k + e_ik))`` (``t_k`` a direction shared by token k across images, as
BLIP-2's learned queries are; ``e_ik`` per-image noise), so tokens of one image are correlated
but not equal. A query is ``normalize(v_ik + n)`` for one token k of a random item (a text that
matches one aspect of the image, which is what max-sim rewards). Every variant is asked the same
queries and compared with the exact answer, ``exact_item_search`` (brute-force
``xmr.vectors.max_sim`` + a stable sort):

- ``all/Flat``: every token stored, ranked by max-sim (``build_index``; provably exact);
- ``mean/Flat``: one vector per item, the normalised mean of its tokens (``--multi-vector mean``);
- ``all/SQfp16``, ``all/SQ8``: every token, stored as fp16 / 8-bit scalar-quantised codes;
- ``mean/SQ8``: both savings together;
- the straightforward reference: the brute-force numpy max-sim itself (``exact_item_search``)
  over the float32 (N, K, D) array, whose time the index search is compared with as a ratio.

Reported: recall@10 against exact max-sim, size of the saved index directory, batched query time
(all queries in one call) and single-query latency (median over one-at-a-time calls).

    python benchmarks/bench_multivector.py [--items 2000] [--tokens 32] [--dim 256] [--queries 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from xmr.index import build_index
from xmr.index.multivector import exact_item_search
from xmr.vectors import l2_normalize


def make_data(n: int, k: int, dim: int, n_queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n, 1, dim)).astype(np.float32)
    shared = rng.standard_normal((1, k, dim)).astype(np.float32)
    noise = rng.standard_normal((n, k, dim)).astype(np.float32)
    items = l2_normalize(centres + 0.8 * (shared + noise))
    owner = rng.integers(0, n, n_queries)
    token = rng.integers(0, k, n_queries)
    queries = l2_normalize(
        items[owner, token] + 0.05 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    )
    return items, queries


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_search(search, queries, k: int, singles: int):
    start = time.perf_counter()
    result = search(queries, k)
    batched = time.perf_counter() - start
    lat = []
    for q in queries[:singles]:
        t0 = time.perf_counter()
        search(q[None], k)
        lat.append(time.perf_counter() - t0)
    return result, batched, statistics.median(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--singles", type=int, default=50, help="one-at-a-time queries timed")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    import faiss

    items, queries = make_data(args.items, args.tokens, args.dim, args.queries)
    ids = [f"i{j}" for j in range(args.items)]
    k = args.k
    print(
        f"{args.items} items x {args.tokens} vectors, d={args.dim}, {args.queries} text queries, "
        f"recall@{k} vs exact max-sim; faiss {faiss.__version__}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, faiss threads {faiss.omp_get_max_threads()}"
    )

    def brute(q, kk):
        return exact_item_search(items, q, kk)

    (_, exact), ref_batch, ref_single = timed_search(brute, queries, k, args.singles)
    ref_bytes = items.nbytes
    rows = [("reference: numpy max-sim", 1.0, ref_bytes, ref_batch, ref_single)]
    variants = [
        ("all/Flat", "all", "Flat"),
        ("mean/Flat", "mean", "Flat"),
        ("all/SQfp16", "all", "SQfp16"),
        ("all/SQ8", "all", "SQ8"),
        ("mean/SQ8", "mean", "SQ8"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode, spec in variants:
            index = build_index(items, ids, spec, multi_vector=mode, recall_queries=queries)
            path = index.save(Path(tmp) / name.replace("/", "-"))

            def search(q, kk, index=index):
                return index.search(q, kk)

            hits, batch, single = timed_search(search, queries, k, args.singles)
            got = [[h.position for h in row] for row in hits]
            recall = np.mean([len(set(g) & set(e)) / k for g, e in zip(got, exact, strict=True)])
            if name == "all/Flat":
                assert got == exact.tolist(), "all/Flat must equal brute-force max-sim"
            rows.append((name, float(recall), dir_size(path), batch, single))

    print(
        f"{'variant':<26}{'recall@' + str(k):>10}{'size MB':>10}{'x smaller':>10}"
        f"{'batch ms/q':>12}{'single ms':>11}{'vs ref (single)':>17}"
    )
    for name, recall, size, batch, single in rows:
        print(
            f"{name:<26}{recall:>10.4f}{size / 1e6:>10.2f}{ref_bytes / size:>10.1f}"
            f"{1000 * batch / len(queries):>12.3f}{1000 * single:>11.3f}"
            f"{ref_single / single:>16.1f}x"
        )
    print("all/Flat top-10 lists equal brute-force max-sim: yes (asserted)")


if __name__ == "__main__":
    main()
