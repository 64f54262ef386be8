"""Training throughput and peak memory of ``xmr.train`` with and without gradient checkpointing.

Each configuration runs in its own process (peak RSS is per process) on the same generated
data: ``xmr.train.train`` for ``--steps`` optimiser steps, no validation. Reported:

- samples/s: training samples per second over the timed steps (the first ``--warmup`` steps,
  which include one-off allocations, are left out), from the run's own step log;
- CPU: peak resident memory (``resource.getrusage().ru_maxrss``) minus the resident memory after
  a 1-step warm-up run with batch 2 (interpreter, libraries, model, data, gradients and AdamW
  state), i.e. what the batch's activations and their gradients add;
- CUDA: ``torch.cuda.max_memory_allocated`` during training.

    python benchmarks/bench_train.py                         # demo-sized tiny CLIP, CPU, fp32
    python benchmarks/bench_train.py --size vit-b16 --device cuda --precision bf16 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # the demo's tiny CLIP (xmr.workflows.demo.DemoConfig)
    "tiny": dict(
        image_size=32,
        patch_size=8,
        embed_dim=64,
        vision_width=128,
        text_width=128,
        vision_layers=3,
        text_layers=2,
        heads=4,
        context_length=48,
    ),
    # ViT-B/16 image tower and CLIP's 12-layer text tower (random weights)
    "vit-b16": dict(
        image_size=224,
        patch_size=16,
        embed_dim=512,
        vision_width=768,
        text_width=512,
        vision_layers=12,
        text_layers=12,
        heads=8,
        context_length=77,
    ),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _numel(fh, key: str) -> int:
    n = 1
    for d in fh.get_slice(key).get_shape():
        n *= d
    return n


def child(args: argparse.Namespace) -> None:
    import torch

    from xmr.train import TrainConfig, train

    cfg = TrainConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        epochs=1,
        batch_size=args.batch_size,
        max_train_items=args.batch_size * args.steps,
        valid_split=None,
        workers=0,
        device=args.device,
        precision=args.precision,
        grad_checkpointing=args.checkpointing,
        progress=False,
        tensorboard=False,
        log_every=1,
        resume=False,
        cache_images="yes",
    )
    # A 1-step run with batch 2 first: imports, model loading, data reading and the allocator's
    # pools are then part of the baseline, and the difference is what the real batch adds.
    train(cfg.replace(out=f"{args.out}-warmup", batch_size=2, max_train_items=2))
    base_rss = _rss_mb()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [json.loads(x) for x in (Path(args.out) / "train_log.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > args.warmup]
    seconds = timed[-1]["elapsed_s"] - rows[args.warmup - 1]["elapsed_s"] if timed else wall
    result = {
        "samples_per_s": len(timed) * args.batch_size / seconds if timed else float("nan"),
        "train_rss_mb": peak_rss - base_rss,
        "peak_rss_mb": peak_rss,
        "wall_s": wall,
        "final_loss": rows[-1]["loss"],
    }
    if args.device == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from xmr.data.readers import load_dataset
    from xmr.data.synth import generate_synthetic
    from xmr.models import create_tiny_clip

    size = SIZES[args.size]
    work = Path(tempfile.mkdtemp(prefix="xmr-bench-train-"))
    n = args.batch_size * args.steps
    t0 = time.perf_counter()
    data = generate_synthetic(
        work / "data", n_train=n, n_test=0, n_valid=0, image_size=size["image_size"], seed=0
    )
    texts = [
        t for ts in load_dataset(data, split="train").split("train").pairs.values() for t in ts
    ]
    model = create_tiny_clip(work / "model", texts=texts, **size)
    n_params = sum(
        p.numel() for p in __import__("transformers").CLIPModel.from_pretrained(model).parameters()
    )
    print(
        f"{args.size} CLIP ({n_params / 1e6:.1f}M parameters, {size['image_size']} px, patch "
        f"{size['patch_size']}), batch {args.batch_size}, {args.steps} steps ({args.warmup} "
        f"untimed), {args.device} {args.precision}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.machine()}; "
        f"set-up {time.perf_counter() - t0:.0f}s"
    )
    for checkpointing in (False, True):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--model",
            f"hf:{model}",
            "--data",
            str(data),
            "--out",
            str(work / f"out-{int(checkpointing)}"),
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ] + (["--checkpointing"] if checkpointing else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout + proc.stderr)
            raise SystemExit(f"benchmark child failed (exit {proc.returncode})")
        r = json.loads(line[7:])
        memory = (
            f"CUDA peak {r['cuda_peak_mb']:.0f} MB"
            if "cuda_peak_mb" in r
            else f"training adds {r['train_rss_mb']:.0f} MB RSS (peak {r['peak_rss_mb']:.0f} MB)"
        )
        print(
            f"  gradient checkpointing {'on ' if checkpointing else 'off'}: "
            f"{r['samples_per_s']:7.1f} samples/s, {memory}, final loss {r['final_loss']:.3f}"
        )


if __name__ == "__main__":
    main()
