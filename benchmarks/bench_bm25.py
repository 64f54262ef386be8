"""BM25 build and query speed, disk and RAM: xmr's BM25 index (bm25s) against ``rank_bm25``.

Both index the same synthetic caption corpus (N captions of 8-20 words drawn from a Zipf
vocabulary of 20k words, like product captions) and answer the same queries (2-5 words drawn
from a caption each, plus a random word), tokenised once with xmr's ``words`` tokenizer so that
only indexing and scoring are timed.

- xmr: ``xmr.index.build_bm25_index`` (bm25s' sparse precomputed scores) and
  ``BM25Index.search_texts`` (top-10, ties to the lower position);
- reference: ``rank_bm25.BM25Okapi`` (the common pure-Python choice), ``get_scores`` per query
  and ``np.argsort`` for the top 10. It is slow, so it answers the first ``--ref-queries``
  queries only and its throughput is measured on those (xmr is timed on the same subset too).

The two compute different BM25 variants (Lucene's idf and tf' vs Okapi's with an idf floor), so
the script reports how much their top-10 lists overlap rather than asserting equality. RAM is
what ``tracemalloc`` sees retained after a second, untimed build (numpy reports its buffers to it); disk is
the saved index directory (xmr) and the pickled object (rank_bm25, which has no format).

    python benchmarks/bench_bm25.py [--docs 30000] [--queries 5000] [--ref-queries 200]
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from xmr.index import build_bm25_index, load_bm25_index
from xmr.index.tokenize import words

K = 10


def make_corpus(n_docs: int, n_queries: int, vocab: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = [f"w{i}" for i in range(vocab)]
    p = 1.0 / np.arange(1, vocab + 1) ** 1.05
    p /= p.sum()
    docs = [
        " ".join(names[j] for j in rng.choice(vocab, rng.integers(8, 21), p=p))
        for _ in range(n_docs)
    ]
    queries = []
    for _ in range(n_queries):
        source = docs[rng.integers(n_docs)].split()
        picked = list(rng.choice(source, min(len(source), rng.integers(2, 6)), replace=False))
        queries.append(" ".join([*picked, names[rng.integers(vocab)]]))
    return docs, queries


def retained(build) -> int:
    """Bytes still allocated after ``build()`` while its result is alive (a second build, so
    that tracemalloc's own slowdown stays out of the timings)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del result
    return after - before


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=30_000)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--ref-queries", type=int, default=200)
    args = ap.parse_args()
    import bm25s  # noqa: F401  imported before the clock starts, as rank_bm25 is
    from rank_bm25 import BM25Okapi

    docs, queries = make_corpus(args.docs, args.queries)
    ids = [str(i) for i in range(len(docs))]
    tokens = [words(d) for d in docs]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{len(docs)} captions ({sum(map(len, tokens))} tokens), {len(queries)} queries")

    t0 = time.perf_counter()
    index = build_bm25_index(docs, ids, "bm25:tokenizer=words")
    xmr_build = time.perf_counter() - t0
    xmr_ram = retained(lambda: build_bm25_index(docs, ids, "bm25:tokenizer=words"))
    t0 = time.perf_counter()
    xmr_hits = index.search_texts(queries, K)
    xmr_query = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = index.save(Path(tmp) / "ix")
        xmr_disk = dir_bytes(path)
        t0 = time.perf_counter()
        load_bm25_index(path)
        xmr_load = time.perf_counter() - t0

    del tokens  # rank_bm25 gets its own copy, inside its measured build
    t0 = time.perf_counter()
    ref = BM25Okapi([words(d) for d in docs])
    ref_build = time.perf_counter() - t0
    ref_ram = retained(lambda: BM25Okapi([words(d) for d in docs]))
    sub = queries[: args.ref_queries]
    t0 = time.perf_counter()
    ref_top = [np.argsort(-ref.get_scores(words(q)), kind="stable")[:K] for q in sub]
    ref_query = time.perf_counter() - t0
    t0 = time.perf_counter()
    xmr_sub = index.search_texts(sub, K)
    xmr_sub_query = time.perf_counter() - t0
    ref_disk = len(pickle.dumps(ref))

    overlap = np.mean(
        [
            len({h.position for h in x} & set(r.tolist())) / K
            for x, r in zip(xmr_sub, ref_top, strict=True)
        ]
    )
    assert [[h.id for h in row] for row in xmr_hits[: len(sub)]] == [
        [h.id for h in row] for row in xmr_sub
    ]
    xmr_qps, ref_qps = len(sub) / xmr_sub_query, len(sub) / ref_query
    print(f"{'':<24}{'xmr (bm25s)':>16}{'rank_bm25':>16}{'ratio':>10}")
    print(f"{'build (s)':<24}{xmr_build:>16.2f}{ref_build:>16.2f}{ref_build / xmr_build:>9.1f}x")
    print(
        f"{'queries/s (first ' + str(len(sub)) + ')':<24}{xmr_qps:>16.0f}{ref_qps:>16.1f}"
        f"{xmr_qps / ref_qps:>9.0f}x"
    )
    print(
        f"{'queries/s (all ' + str(len(queries)) + ')':<24}{len(queries) / xmr_query:>16.0f}{'-':>16}"
    )
    print(
        f"{'RAM after build (MB)':<24}{xmr_ram / 1e6:>16.1f}{ref_ram / 1e6:>16.1f}{ref_ram / xmr_ram:>9.1f}x"
    )
    print(
        f"{'disk (MB)':<24}{xmr_disk / 1e6:>16.1f}{ref_disk / 1e6:>16.1f}  (xmr: index dir; rank_bm25: pickle)"
    )
    print(
        f"xmr load from disk: {xmr_load:.2f} s; top-10 overlap with rank_bm25's Okapi: {overlap:.3f}"
    )


if __name__ == "__main__":
    main()
