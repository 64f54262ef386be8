"""Cross-encoder reranking: xmr's BLIP / BLIP-2 ITM scorer against the plain transformers loop.

Random weights at the published architectures' sizes (BLIP ITM base: ViT-B/16 at 384 px and a
BERT-base text encoder; BLIP-2 ITM: a ViT-g/14 at 224 px and the Q-Former), so nothing is
downloaded; ``--size tiny`` shrinks both towers for a quick check. Two workloads on the same K
pairs: text->image (one query, K distinct images: every pair needs its own vision pass) and
image->text (one image, K texts).

- xmr: ``CrossEncoder.score(images, texts, batch_size)``: batched, the vision tower once per
  distinct image of a batch.
- plain: what a user writes from the transformers docs, one pair at a time:
  ``processor(images=image, text=text)``, then ``BlipForImageTextRetrieval(**inputs,
  use_itm_head=True)`` (``Blip2ForImageTextRetrieval(..., use_image_text_matching_head=True)``),
  softmax, column 1.

Both run on the same model object and pairs; the script checks that they give the same match
probabilities before it prints times. Repeats alternate between the two (best of each), so a
change of load on a shared machine hits both.

    python benchmarks/bench_rerank.py --kind blip --device cpu --precision fp32 --k 16
    python benchmarks/bench_rerank.py --size tiny --k 8          # a quick run
    python benchmarks/bench_rerank.py --kind blip --device cuda --precision fp16 --k 128
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time

import numpy as np

QUERY = "a man in a red jacket rides a bicycle down a snowy street next to parked cars"


def build(kind: str, size: str, device: str, precision: str, words: list[str]):
    """An xmr cross-encoder over a random ITM model; its ``model`` and ``processor`` are the
    plain loop's too. The tokenizer knows ``words`` whole, so texts have realistic lengths
    (about 20 tokens, as bert-base-uncased gives), not one token per character."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForImageTextRetrieval,
        BlipConfig,
        BlipForImageTextRetrieval,
    )

    from xmr.models.blip_itm import Blip2ItmCrossEncoder, BlipItmCrossEncoder, _tiny_processor

    torch.manual_seed(0)
    # BLIP's vision default (1e-10) gives a random tower that sees every image alike; 0.02 makes
    # the probabilities differ from pair to pair, so the equality check means something.
    if size == "tiny":
        vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2)
        vision.update(num_attention_heads=4, image_size=96, patch_size=16)
        text = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2)
        text.update(num_attention_heads=4, encoder_hidden_size=128)
    else:
        vision = {"image_size": 384} if kind == "blip" else {}
        text = {}
    vision["initializer_range"] = 0.02
    if kind == "blip":
        config = BlipConfig(vision_config=vision, text_config={"vocab_size": 30524, **text})
        model, cls = BlipForImageTextRetrieval(config), BlipItmCrossEncoder
        image_size = config.vision_config.image_size
    else:
        if size != "tiny":
            vision.update(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39)
            vision.update(num_attention_heads=16, image_size=224, patch_size=14)
        text.update(vocab_size=30523, use_qformer_text_input=True)
        text.pop("encoder_hidden_size", None)
        config = Blip2Config(vision_config=vision, qformer_config=text, num_query_tokens=32)
        model, cls = Blip2ForImageTextRetrieval(config), Blip2ItmCrossEncoder
        image_size = config.vision_config.image_size
    processor = _tiny_processor(kind, image_size, words)
    return cls(
        f"random-{kind}-{size}",
        device=device,
        precision=precision,
        model=model,
        processor=processor,
    )


def plain_scores(ce, kind: str, images, texts) -> np.ndarray:
    """The straightforward loop: one pair at a time through the processor and the model."""
    import torch

    model, processor, device = ce.model, ce.processor, ce.torch_device
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(ce.precision)
    autocast = contextlib.nullcontext() if half is None else torch.autocast(device.type, half)
    probs = []
    with torch.no_grad(), autocast:
        for image, text in zip(images, texts, strict=True):
            inputs = processor(images=image, text=text, return_tensors="pt").to(device)
            if kind == "blip":
                logits = model(**inputs, use_itm_head=True).itm_score
            else:
                logits = model(**inputs, use_image_text_matching_head=True).logits_per_image
            probs.append(torch.softmax(logits.float(), dim=1)[0, 1].item())
    return np.asarray(probs, dtype=np.float32)


def timed(device: str, fn, *args, **kwargs):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="blip", choices=["blip", "blip2"])
    p.add_argument(
        "--size",
        default="base",
        choices=["base", "tiny"],
        help="base: the published sizes (BLIP ITM base; BLIP-2 ITM ViT-g, its only size); "
        "tiny: 2-layer towers of width 128 at 96 px, for a run of seconds [%(default)s]",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--k", type=int, default=128, help="pairs per workload [%(default)s]")
    p.add_argument("--batch-size", type=int, default=64, help="xmr's batch [%(default)s]")
    p.add_argument("--repeats", type=int, default=2, help="runs of each side [%(default)s]")
    args = p.parse_args()
    import torch

    texts = [f"{QUERY} {i}" for i in range(args.k)]
    words = QUERY.split() + [str(i) for i in range(args.k)]
    ce = build(args.kind, args.size, args.device, args.precision, words)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(args.k)
    ]
    workloads = {
        "text->image": ("1 query, K distinct images", images, [QUERY] * args.k),
        "image->text": ("1 image, K texts", [images[0]] * args.k, texts),
    }
    tol = 1e-4 if ce.precision == "fp32" else 2e-2
    n_tokens = len(ce.tokenizer(QUERY)["input_ids"])
    print(
        f"{args.kind} {args.size} {ce.precision} on {ce.device}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.machine()}; "
        f"K={args.k}, query {n_tokens} tokens; best of {args.repeats}, image preprocessing "
        "inside the timing"
    )
    ce.score(images[:2], texts[:2])  # warm-up, both paths
    plain_scores(ce, args.kind, images[:2], texts[:2])
    for name, (what, ims, txts) in workloads.items():
        best = {"xmr": float("inf"), "plain": float("inf")}
        for _ in range(args.repeats):
            t, ours = timed(args.device, ce.score, ims, txts, batch_size=args.batch_size)
            best["xmr"] = min(best["xmr"], t)
            t, theirs = timed(args.device, plain_scores, ce, args.kind, ims, txts)
            best["plain"] = min(best["plain"], t)
        diff = float(np.abs(ours - theirs).max())
        if diff > tol:
            raise SystemExit(f"{name}: probabilities differ by {diff:.3g} (> {tol}); no timing")
        print(
            f"{name} ({what}): same match probabilities (max |diff| {diff:.1e}, "
            f"range {ours.min():.4f}..{ours.max():.4f})"
        )
        for key, label in (
            ("xmr", f"xmr CrossEncoder.score (batch {args.batch_size})"),
            ("plain", "plain transformers loop, one pair at a time"),
        ):
            secs = best[key]
            print(f"  {label:<48} {secs * 1000:9.0f} ms  {args.k / secs:8.3g} pairs/s")
        print(f"  speed-up: {best['plain'] / best['xmr']:.2f}x")


if __name__ == "__main__":
    main()
