"""Ray Data encoding against the local engine at the demo's size, in one run.

The data set and model are the demo's (``xmr demo``: a synthetic Track2 test split of 500
images and its queries, the demo's tiny CLIP); both engines encode the split's images and query
texts with the same batch and shard sizes into fresh directories:

* ``local``: ``encode_split`` (decoding workers from ``--workers``, the model in this process);
* ``ray``: ``encode_split(engine="ray")`` on a Ray started here (``num_cpus`` = the cores),
  timed in parts: ``ray.init``, the first run (actor start-up: a worker process that imports
  torch and loads the model), and a second run on the same Ray (a fresh actor pool again, since
  each ``encode_split`` builds its own pipeline).

The embeddings of the two engines are compared (max abs difference, same ids).

    python benchmarks/bench_ray_encode.py [--n-test 500] [--actors 1] [--workers 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-test", type=int, default=500, help="test images (the demo's: 500)")
    ap.add_argument("--actors", type=int, default=None, help="Ray model actors (default: auto)")
    ap.add_argument("--workers", type=int, default=0, help="local decoding workers (demo: 0)")
    ap.add_argument("--batch-size", type=int, default=256, help="the demo encodes with 256")
    args = ap.parse_args()

    import ray
    import torch

    from xmr.data.readers import load_dataset
    from xmr.data.synth import generate_synthetic
    from xmr.encode import encode_split, load_embeddings
    from xmr.encode.engines import EngineOptions
    from xmr.models import create_encoder, create_tiny_clip
    from xmr.workflows.demo import DemoConfig

    cfg = DemoConfig()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    data = generate_synthetic(
        tmp / "data", n_train=0, n_valid=0, n_test=args.n_test, image_size=cfg.image_size,
        seed=cfg.seed, n_attribute_sets=cfg.n_attribute_sets,
    )  # fmt: skip
    split = load_dataset(data, "track2", split="test").split("test")
    texts = [q.text for q in split.queries.values()]
    model = create_tiny_clip(
        tmp / "model", texts=texts, embed_dim=cfg.embed_dim, seed=cfg.seed,
        image_size=cfg.image_size, patch_size=cfg.patch_size, vision_width=cfg.width,
        vision_layers=cfg.vision_layers, text_width=cfg.width, text_layers=cfg.text_layers,
        heads=cfg.heads, context_length=cfg.context_length,
    )  # fmt: skip
    encoder = create_encoder(f"hf:{model}", device="cpu")
    cores = len(os.sched_getaffinity(0))
    print(f"{platform.machine()}, {cores} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(
        f"{len(split.items)} images ({cfg.image_size} px), {len(split.queries)} queries; "
        f"batch {args.batch_size}; torch {torch.__version__}, ray {ray.__version__}"
    )
    common = dict(batch_size=args.batch_size, progress=False, kinds=["images", "texts"])

    first: list[float] = []
    started = time.perf_counter()
    encode_split(
        encoder, split, tmp / "local", workers=args.workers,
        on_batch=lambda kind, n, t=started, f=first: f.append(time.perf_counter() - t), **common,
    )  # fmt: skip
    local_s, local_first = time.perf_counter() - started, first[0]

    started = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
    init_s = time.perf_counter() - started
    runs = []
    for i in range(2):
        first: list[float] = []
        started = time.perf_counter()
        encode_split(
            encoder, split, tmp / f"ray{i}", engine="ray",
            engine_options=EngineOptions(actors=args.actors),
            on_batch=lambda kind, n, t=started, f=first: f.append(time.perf_counter() - t),
            **common,
        )  # fmt: skip
        runs.append((time.perf_counter() - started, first[0]))
    ray.shutdown()

    diff = {}
    for kind in ("images", "texts"):
        a, b = load_embeddings(tmp / "local", kind), load_embeddings(tmp / "ray0", kind)
        assert a.ids == b.ids, kind
        diff[kind] = float(np.abs(a.vectors - b.vectors).max())
    print(f"{'':34}{'seconds':>10}{'vs local':>10}")
    print(f"{'local encode_split':34}{local_s:10.2f}{1:9.1f}x")
    print(f"{'  of which until the first batch':34}{local_first:10.2f}")
    print(f"{'  after the first batch':34}{local_s - local_first:10.2f}")
    label = f"ray.init (num_cpus={cores})"
    print(f"{label:34}{init_s:10.2f}{init_s / local_s:9.1f}x")
    for i, (total, first_batch) in enumerate(runs):
        label = "ray encode_split, " + ("first run" if i == 0 else "second run")
        print(f"{label:34}{total:10.2f}{total / local_s:9.1f}x")
        print(f"{'  of which until the first batch':34}{first_batch:10.2f}")
        print(f"{'  after the first batch':34}{total - first_batch:10.2f}")
    total = init_s + runs[0][0]
    print(f"{'ray, start-up + first run':34}{total:10.2f}{total / local_s:9.1f}x")
    said = ", ".join(f"{kind} {d:.2e}" for kind, d in diff.items())
    print(f"same ids; max |ray - local|: {said}")


if __name__ == "__main__":
    main()
