"""Cross-encoder reranking throughput: pairs per second of BLIP / BLIP-2 ITM scoring.

Random weights at the published architectures' sizes (BLIP ITM base: ViT-B/16 at 384 px and a
BERT-base text encoder; BLIP-2 ITM: a ViT-g/14 at 224 px and the Q-Former), so nothing is
downloaded. Two workloads: text->image (one query, K distinct images: every pair needs its own
vision pass) and image->text (one image, K texts: the vision pass runs once).

    python benchmarks/bench_rerank.py --kind blip --device cuda --precision fp16 --k 128
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def build(kind: str, device: str, precision: str):
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForImageTextRetrieval,
        BlipConfig,
        BlipForImageTextRetrieval,
    )

    from xmr.models.blip_itm import Blip2ItmCrossEncoder, BlipItmCrossEncoder, _tiny_processor

    torch.manual_seed(0)
    if kind == "blip":
        config = BlipConfig(vision_config={"image_size": 384}, text_config={"vocab_size": 30524})
        model, cls, size = BlipForImageTextRetrieval(config), BlipItmCrossEncoder, 384
    else:
        vision = dict(
            hidden_size=1408,
            intermediate_size=6144,
            num_hidden_layers=39,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        )
        qformer = dict(vocab_size=30523, use_qformer_text_input=True)
        config = Blip2Config(vision_config=vision, qformer_config=qformer, num_query_tokens=32)
        model, cls, size = Blip2ForImageTextRetrieval(config), Blip2ItmCrossEncoder, 224
    processor = _tiny_processor(kind, size, ())
    return cls(
        f"random-{kind}", device=device, precision=precision, model=model, processor=processor
    )


def main() -> None:
    from PIL import Image

    p = argparse.ArgumentParser()
    p.add_argument("--kind", default="blip", choices=["blip", "blip2"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import torch

    ce = build(args.kind, args.device, args.precision)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(args.k)
    ]
    text = "a man in a red jacket rides a bicycle down a snowy street next to parked cars"
    texts = [f"{text} {i}" for i in range(args.k)]
    workloads = {
        "text->image": (images, [text] * args.k),
        "image->text": ([images[0]] * args.k, texts),
    }
    ce.score(images[:4], texts[:4])  # warm-up
    for name, (ims, txts) in workloads.items():
        times = []
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            ce.score(ims, txts, batch_size=args.batch_size)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        best = min(times)
        print(
            f"{args.kind} {args.precision} {name}: K={args.k} in {best * 1000:.0f} ms "
            f"({args.k / best:.3g} pairs/s, best of {args.repeats}, images decoded and "
            "preprocessed inside the timing)"
        )


if __name__ == "__main__":
    main()
