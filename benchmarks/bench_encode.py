"""Image-encoding throughput: xmr's pipeline against the straightforward reference loop.

Both embed the same generated JPEGs (default 500 at 256x256, so decoding and resizing cost what
they cost on real photos) with the same tiny random CLIP (224 px input, so preprocessing is the
real CLIP preprocessing; a small transformer, so the model does not hide it).

- reference: for each image, PIL open + the model's own transformers image processor
  (``AutoImageProcessor.from_pretrained``) + one forward pass of ``CLIPModel.get_image_features``.
- xmr: ``xmr.encode.encode_split``: DataLoader workers decode (JPEG draft mode) and run xmr's
  torchvision-free preprocessing, the model runs batched under ``inference_mode``, shards are
  written atomically, for each ``--workers`` value.

The script checks that both give the same embeddings (max abs difference printed) and prints
items/s and the speed-up.

    python benchmarks/bench_encode.py [--images 500] [--size 256] [--batch-size 64] [--workers 0,1,2]
    python benchmarks/bench_encode.py --large --device cuda --precision bf16   # ViT-B/16-sized
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_images(root: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth gradients, shapes and noise (random noise alone compresses badly
    and decodes unlike a photo)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        a, b, c = rng.random(3)
        base = np.stack([a * xx + (1 - a) * yy, b * yy, c * (1 - xx)], axis=-1) * 200
        base += rng.normal(0, 12, base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.integers(0, size - 20, 2)
            w, h = rng.integers(10, size // 2, 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(0.8))
        path = root / f"{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def make_model(out: Path, large: bool) -> Path:
    from xmr.models import create_tiny_clip

    if large:  # ViT-B/16 image tower, CLIP-B text tower
        return create_tiny_clip(
            out,
            embed_dim=512,
            image_size=224,
            patch_size=16,
            vision_width=768,
            vision_layers=12,
            text_width=512,
            text_layers=12,
            heads=8,
            context_length=77,
        )
    return create_tiny_clip(
        out,
        embed_dim=64,
        image_size=224,
        patch_size=32,
        vision_width=128,
        vision_layers=2,
        text_width=64,
        text_layers=1,
        heads=4,
        context_length=16,
    )


def reference_loop(model_dir: Path, paths: list[Path], device: str) -> tuple[np.ndarray, str]:
    """One image at a time: PIL open, the model's own processor, one forward pass."""
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir).to(device).eval()
    out = []
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            inputs = processor(images=image, return_tensors="pt").to(device)
            feats = model.get_image_features(**inputs)
            feats = getattr(feats, "pooler_output", feats)  # transformers 5 may wrap the tensor
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
    return torch.cat(out).numpy(), type(processor).__name__


def xmr_pipeline(encoder, paths, out: Path, batch_size: int, workers: int) -> np.ndarray:
    from xmr.data import ImageRef, Item, Split
    from xmr.encode import encode_split, load_embeddings

    split = Split("bench", {p.stem: Item(p.stem, ImageRef(path=str(p))) for p in paths})
    shutil.rmtree(out, ignore_errors=True)
    encode_split(
        encoder,
        split,
        out,
        batch_size=batch_size,
        workers=workers,
        kinds=("images",),
        progress=False,
    )
    return load_embeddings(out, "images").vectors


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--large", action="store_true", help="a ViT-B/16-sized random model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from xmr.models import create_encoder

    tmp = Path(tempfile.mkdtemp(prefix="xmr-bench-encode-"))
    try:
        paths = make_images(tmp / "images", args.images, args.size)
        model_dir = make_model(tmp / "model", args.large)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), device {args.device}"
            + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
        )
        print(
            f"data: {len(paths)} JPEGs {args.size}x{args.size}; model: "
            f"{'ViT-B/16-sized' if args.large else 'tiny'} random CLIP, 224 px input; "
            f"batch {args.batch_size}; precision {args.precision}"
        )
        encoder = create_encoder(f"hf:{model_dir}", device=args.device, precision=args.precision)
        ref = None
        ref_rate = None
        if not args.skip_reference:
            reference_loop(model_dir, paths[:8], args.device)  # warm-up (lazy inits, allocator)
            (ref, proc_name), seconds = timed(lambda: reference_loop(model_dir, paths, args.device))
            ref_rate = len(paths) / seconds
            print(
                f"reference ({proc_name} + model per image, fp32): {ref_rate:8.1f} img/s  "
                f"({seconds:.2f} s)"
            )
        xmr_pipeline(encoder, paths[:8], tmp / "warm", args.batch_size, 0)
        for workers in [int(w) for w in args.workers.split(",")]:
            vecs, seconds = timed(
                lambda w=workers: xmr_pipeline(encoder, paths, tmp / "emb", args.batch_size, w)
            )
            rate = len(paths) / seconds
            line = f"xmr pipeline, {workers} worker(s):               {rate:8.1f} img/s  ({seconds:.2f} s)"
            if ref is not None:
                diff = float(np.abs(vecs - ref).max())
                line += f"  x{rate / ref_rate:.2f} vs reference; max |diff| {diff:.1e}"
            print(line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
