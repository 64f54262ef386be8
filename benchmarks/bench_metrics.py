"""Evaluation speed: xmr's chunked ``evaluate_embeddings`` against a plain-Python loop.

Both score the same retrieval: Q text queries against N items, from random unit embeddings
(d=256) with a synthetic relevance (each query is a noisy mix of its 1-5 relevant items).

- xmr: ``xmr.eval.evaluate_embeddings``: similarity block by block with torch, top-k per block
  merged across item chunks, vectorised metrics.
- plain: the same similarities with numpy (one BLAS matmul per 1000 queries), then per query a
  full ``np.argsort`` and the metric definitions as Python loops
  (``xmr.eval.metrics.reference_metrics``).

The embeddings are quantised to multiples of 1/1024, so every dot product is exact in float32
whatever the summation order: the two rankings can then be compared id for id, and the script
asserts that the top-10 lists and every metric are equal.

    python benchmarks/bench_metrics.py [--queries 10000] [--items 30000] [--dim 256]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch

from xmr.eval import evaluate_embeddings
from xmr.eval.metrics import reference_metrics
from xmr.eval.ranking import topk_from_embeddings

K = 10


def make_data(n_queries: int, n_items: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    relevant = [rng.choice(n_items, rng.integers(1, 6), replace=False) for _ in range(n_queries)]
    queries = np.stack([items[r].mean(axis=0) for r in relevant])
    queries += rng.standard_normal(queries.shape, dtype=np.float32) * 0.08
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    quantise = lambda x: np.round(x * 1024) / np.float32(1024)  # noqa: E731
    query_ids = [f"q{i}" for i in range(n_queries)]
    item_ids = [f"i{j}" for j in range(n_items)]
    relevance = {q: {item_ids[j] for j in r} for q, r in zip(query_ids, relevant, strict=True)}
    return quantise(queries), quantise(items), query_ids, item_ids, relevance


def plain_python(queries, items, query_ids, item_ids, relevance):
    rankings = {}
    for q0 in range(0, len(queries), 1000):
        scores = queries[q0 : q0 + 1000] @ items.T
        for row, qid in zip(scores, query_ids[q0 : q0 + 1000], strict=True):
            order = np.argsort(-row, kind="stable")[:K]  # ties: lower item index first
            rankings[qid] = [item_ids[j] for j in order]
    return rankings, reference_metrics(rankings, relevance, (1, 5, 10), K)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    data = make_data(args.queries, args.items, args.dim)
    queries, items, query_ids, item_ids, relevance = data
    print(
        f"{args.queries} queries x {args.items} items, d={args.dim}, K={K}; device={args.device}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}"
    )

    t0 = time.perf_counter()
    ours = evaluate_embeddings(queries, items, query_ids, item_ids, relevance, device=args.device)
    t_xmr = time.perf_counter() - t0

    t0 = time.perf_counter()
    rankings, theirs = plain_python(queries, items, query_ids, item_ids, relevance)
    t_plain = time.perf_counter() - t0

    index, _ = topk_from_embeddings(queries, items, K, device=args.device)
    assert all([item_ids[j] for j in index[r]] == rankings[q] for r, q in enumerate(query_ids)), (
        "rankings differ"
    )
    for key, value in theirs.items():
        assert math.isclose(ours[f"t2i/{key}"], value, abs_tol=1e-12), (key, value)
    print("outputs equal: top-10 lists of every query and all metrics")
    shown = ("R@1", "R@5", "R@10", "MeanRecall", "mAP@10", "mAP@10_trec", "nDCG@10", "MRR")
    print("  " + "  ".join(f"{k}={ours['t2i/' + k]:.4f}" for k in shown))
    print(f"xmr evaluate_embeddings (chunked torch top-k): {t_xmr:8.2f} s")
    print(f"plain loop (numpy argsort + Python metrics):   {t_plain:8.2f} s")
    print(f"speed-up: {t_plain / t_xmr:.1f}x")


if __name__ == "__main__":
    main()
