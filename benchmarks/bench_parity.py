"""Official-scorer parity on generated data: xmr's number beside the official scorer's.

The official computations are restated here, as plain loops written from the scorers' published
behaviour (the Track2 baseline's ``cal_map_json.py``; trec_eval's ranking of a run: score
descending, then docid descending). The submissions are random rankings over a generated
Track2 test split (``xmr data synth``), so no model is needed.

1. Empty ground-truth lines: ``--empty N`` texts of ``test_gt.txt`` lose their images. The
   official mean keeps them as 0; xmr's default does too, ``--skip-empty-queries`` does not.
2. Names without their extension: half the results lose ``.jpg``. The official scorer counts
   them as misses; xmr refuses the file and names each line.
3. TREC runs at depth ``--depth``: float32 scores 1e-7 apart (a score quantum of 2^-24) written
   with 6 decimals (xmr before) and in full (now); positions that trec_eval's order moves, and
   the map that trec_eval computes from each file against the true ranking's.

    python benchmarks/bench_parity.py [--images 300] [--empty 1] [--depth 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np


def track2_official(gt_text: str, results: list[dict]) -> float | str:
    gt = [line.strip().split("$") for line in gt_text.splitlines()]
    if [g[0] for g in gt] != [r["text"] for r in results]:
        return "refused: The order of texts is wrong."
    total = 0.0
    for fields, result in zip(gt, results, strict=True):
        relevant, found, ap = set(fields[1:]), 1e-6, 0.0
        for rank, name in enumerate(result["image_names"], 1):
            if name in relevant:
                found += 1
                ap += found / rank
        total += ap / found
    return total / len(results)


def trec_eval_order(lines: list[str]) -> dict[str, list[str]]:
    docs: dict[str, list[tuple[float, str]]] = {}
    for line in lines:
        qid, _, docid, _, value, _ = line.split()
        docs.setdefault(qid, []).append((float(value), docid))
    return {q: [d for _, d in sorted(r, key=lambda x: (-x[0], [-b for b in x[1].encode()]))]
            for q, r in docs.items()}  # fmt: skip


def xmr_score(sub: Path, data: Path, **kw) -> str:
    from xmr.data.readers import load_dataset
    from xmr.eval import PredictionError, evaluate_predictions

    split = load_dataset(data, "track2", "test").split("test")
    try:
        metrics, _ = evaluate_predictions(sub, split, **kw)
    except PredictionError as exc:
        return f"refused: {len(exc.problems)} problems naming their lines"
    return f"{metrics['t2i/mAP@10']:.6f}"


def track2_part(root: Path, n_images: int, n_empty: int, seed: int) -> None:
    from xmr.data.synth import generate_synthetic

    data = generate_synthetic(root / "data", n_train=0, n_test=n_images, n_valid=0,
                              image_size=16, seed=seed)  # fmt: skip
    gt_path = data / "test" / "test_gt.txt"
    lines = gt_path.read_text().splitlines()
    for n in range(n_empty):  # judged, nothing relevant
        lines[n] = lines[n].split("$", 1)[0]
    gt_path.write_text("".join(line + "\n" for line in lines))
    names = sorted(p.name for p in (data / "test" / "test_images").iterdir())
    rng = random.Random(seed)
    results = [{"text": line.split("$", 1)[0], "image_names": rng.sample(names, 10)}
               for line in lines]  # fmt: skip
    # Names as the ground truth spells them (the synthetic test_gt.txt writes file names).
    sub = root / "sub.json"
    sub.write_text(json.dumps({"results": results}))
    gt_text = gt_path.read_text()
    print(f"Track2 test split: {len(lines)} texts, {len(names)} images; random top-10 lists")
    print(f"1. {n_empty} ground-truth line(s) without images")
    print(f"   official scorer (restated)        {track2_official(gt_text, results):.6f}")
    print(f"   xmr evaluate (default)            {xmr_score(sub, data)}")
    print(f"   xmr evaluate --skip-empty-queries {xmr_score(sub, data, skip_empty=True)} (lenient)")
    stripped = [
        {**r, "image_names": [n.removesuffix(".jpg") for n in r["image_names"]]} if i % 2 else r
        for i, r in enumerate(results)
    ]
    sub2 = root / "stripped.json"
    sub2.write_text(json.dumps({"results": stripped}))
    print("2. half the results' names without '.jpg'")
    print(f"   official scorer (restated)        {track2_official(gt_text, stripped):.6f}")
    print(f"   xmr evaluate                      {xmr_score(sub2, data)}")


def trec_part(root: Path, depth: int, seed: int) -> None:
    from xmr.eval.metrics import reference_metrics
    from xmr.eval.predictions import write_predictions

    rng = np.random.default_rng(seed)
    n_queries = 40
    docs = [f"d{j:04d}" for j in range(depth)]
    rankings, scores, relevance = {}, {}, {}
    for q in range(n_queries):
        # float32 scores on a 2^-24 grid: neighbours 6e-8 apart, as a tiny model's scores are
        values = np.sort(rng.integers(0, 4 * depth, depth).astype(np.float32) / 2**24 + 0.4)[::-1]
        order = list(rng.permutation(docs))
        rankings[f"q{q}"], scores[f"q{q}"] = order, [float(v) for v in values]
        relevance[f"q{q}"] = set(rng.choice(docs, 5, replace=False))
    full = write_predictions(root / "run.trec", rankings, kind="trec", scores=scores)
    old = [f"{q} Q0 {d} {r} {s:.6f} xmr" for q in rankings
           for r, (d, s) in enumerate(zip(rankings[q], scores[q], strict=True), 1)]  # fmt: skip
    want = reference_metrics(rankings, relevance, k=depth)[f"mAP@{depth}_trec"]
    print(f"3. TREC run, {n_queries} queries x depth {depth}, float32 scores 6e-8 apart")
    for name, lines in (
        ("6 decimals (before)", old),
        ("full (now)", full.read_text().splitlines()),
    ):
        got = trec_eval_order(lines)
        moved = sum(a != b for q in rankings for a, b in zip(got[q], rankings[q], strict=True))
        queries = sum(got[q] != rankings[q] for q in rankings)
        value = reference_metrics(got, relevance, k=depth)[f"mAP@{depth}_trec"]
        print(f"   {name:20s} {moved:5d} positions moved in {queries:2d} queries; "
              f"map {value:.7f} (the ranking's: {want:.7f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--empty", type=int, default=1)
    ap.add_argument("--depth", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        track2_part(Path(tmp), args.images, args.empty, args.seed)
        trec_part(Path(tmp), args.depth, args.seed)


if __name__ == "__main__":
    main()
