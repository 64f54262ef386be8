"""mPLUG reranking: xmr's ``mplug:`` cross-encoder against ModelScope's pipeline, pair by pair.

A random mPLUG retrieval model written in ModelScope's layout (``create_tiny_mplug``), at
``--size small`` (ViT 256 wide, 4 layers, 224 px; BERT 256 wide, 2 text + 3 fusion layers, one a
skip layer) or ``--size large`` (the published mPLUG-L: ViT-L/14 at 384 px, BERT-base, 6 + 6
layers; 600M parameters: slow on a CPU). Two workloads on the same K pairs: text->image (one
text, K distinct images) and image->text (one image, K texts).

- xmr: ``CrossEncoder.score(images, texts, batch_size)``: batched, the vision tower once per
  distinct image of a batch, texts padded to the longest.
- reference: what ModelScope's ``ImageTextRetrievalPipeline`` does for each ``{'image', 'text'}``
  input, one at a time: preprocess the image, tokenize padded to 25 tokens, run the whole model
  on the pair, softmax. ModelScope's code cannot be imported here (see README), so the
  reference runs that sequence on the same module object xmr uses.

The script checks that both give the same match probabilities before it prints times; repeats
alternate between the two (best of each).

    python benchmarks/bench_mplug.py --size small --k 16
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = "two young guys with shaggy hair look at their hands while hanging out in the yard"

SIZES = {
    "small": dict(hidden=256, heads=4, vision_width=256, vision_layers=4, text_layers=2,
                  fusion_layers=3, stride_layer=2, unused_fusion_layers=0, image_res=224),
    "large": dict(hidden=768, heads=12, vision_width=1024, vision_layers=24, text_layers=6,
                  fusion_layers=6, stride_layer=6, unused_fusion_layers=6, image_res=384),
}  # fmt: skip


def reference_scores(ce, images, texts) -> np.ndarray:
    """ModelScope's pipeline, pair by pair: preprocess, 25-token max_length padding, forward."""
    import torch

    out = []
    with torch.inference_mode():
        for image, text in zip(images, texts, strict=True):
            pixels = ce.pixel_values([image])
            enc = ce.tokenizer(
                text.lower(), padding="max_length", truncation=True, max_length=25,
                return_tensors="pt",
            )  # fmt: skip
            logits = ce.model.itm_logits(
                ce.model.encode_images(pixels), enc["input_ids"], enc["attention_mask"]
            )
            out.append(float(torch.softmax(logits, dim=-1)[0, 1]))
    return np.asarray(out, dtype=np.float32)


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    import torch
    from PIL import Image

    from xmr.models.cross_encoders import create_cross_encoder
    from xmr.models.mplug.tiny import create_tiny_mplug

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = create_tiny_mplug(Path(tmp) / "mplug", words=TEXT.split(), **SIZES[args.size])
        ce = create_cross_encoder(f"mplug:{path}", device=args.device)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)) for _ in range(args.k)
    ]
    words = TEXT.split()
    texts = [" ".join(rng.permutation(words)[: 6 + n % 10]) for n in range(args.k)]
    n_tokens = len(ce.tokenizer(TEXT)["input_ids"])
    print(
        f"mplug {args.size} on {args.device}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.machine()}; "
        f"K={args.k}, query {n_tokens} tokens; best of {args.repeats}, preprocessing inside the timing"
    )
    workloads = {
        "text->image (1 text, K distinct images)": (images, [TEXT] * args.k),
        "image->text (1 image, K texts)": ([images[0]] * args.k, texts),
    }
    for name, (ims, txts) in workloads.items():
        ours_t, ours = best_of(lambda ims=ims, txts=txts: ce.score(ims, txts, args.batch_size), 1)
        ref_t, ref = best_of(lambda ims=ims, txts=txts: reference_scores(ce, ims, txts), 1)
        for _ in range(args.repeats - 1):
            ours_t = min(
                ours_t,
                best_of(lambda ims=ims, txts=txts: ce.score(ims, txts, args.batch_size), 1)[0],
            )
            ref_t = min(
                ref_t, best_of(lambda ims=ims, txts=txts: reference_scores(ce, ims, txts), 1)[0]
            )
        diff = float(np.abs(np.asarray(ours) - np.asarray(ref)).max())
        if diff > 1e-4:
            raise SystemExit(f"{name}: the two disagree (max |diff| {diff:.2e})")
        print(
            f"{name}: same match probabilities (max |diff| {diff:.1e}, range {min(ref):.4f}..{max(ref):.4f})"
        )
        print(
            f"  xmr CrossEncoder.score (batch {args.batch_size})  {ours_t * 1000:9.0f} ms  {args.k / ours_t:8.1f} pairs/s"
        )
        print(
            f"  ModelScope pipeline steps, pair by pair  {ref_t * 1000:9.0f} ms  {args.k / ref_t:8.1f} pairs/s"
        )
        print(f"  speed-up: {ref_t / ours_t:.2f}x")


if __name__ == "__main__":
    main()
