"""Image encoding: xmr's data path against the straightforward transformers reference.

Three measurements, each side by side in one run on the same generated JPEGs (photo-like:
gradients, shapes, blur, noise) and the same tiny random CLIP (224 px input, so preprocessing is
the real CLIP preprocessing; a small transformer, so the model does not hide the data path):

1. ``preprocess``: decode + preprocess, ms per image on one core (one process, one torch thread).
   reference: ``PIL.Image.open`` + the model's own ``AutoImageProcessor`` on lists of 32 images.
   xmr: ``ImageRef.open`` + ``ImagePreprocess.crop`` per image (what a worker does) +
   ``ImagePreprocess.normalize`` per batch of 32. Max abs difference of the pixels printed.
2. ``encode``: wall time and peak memory of ``xmr encode`` (``encode_split``, loader chosen from
   the machine) against the batched reference loop a user writes from the transformers docs
   (``AutoImageProcessor`` on 32 PIL images + ``get_image_features``), each in its own process;
   peak RSS of that process (``VmHWM``) and of its largest child (a decoding worker, forked, so
   pages it shares with the main process count in both).
3. ``draft``: ``encode_split`` with and without ``draft=True`` on large JPEGs: speed, and the
   accuracy cost as the max abs / mean cosine difference from the reference loop's embeddings.

    python benchmarks/bench_encode.py [--images 1000] [--min-size 120 --max-size 400]
        [--what preprocess,encode,draft] [--draft-size 1024x768] [--large --device cuda]
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


def make_images(root: Path, n: int, min_size: int, max_size: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs of random sides in [min_size, max_size] (camera crops): smooth
    gradients, shapes and noise (random noise alone compresses badly and decodes unlike a
    photo)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        width, height = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        yy, xx = yy / height, xx / width
        a, b, c = rng.random(3)
        base = np.stack([a * xx + (1 - a) * yy, b * yy, c * (1 - xx)], axis=-1) * 200
        base += rng.normal(0, 12, base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.integers(0, min(width, height) - 20, 2)
            w, h = rng.integers(10, min(width, height) // 2, 2)
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


def reference_loop(model_dir: Path, paths: list[Path], device: str, batch: int = 32):
    """The loop from the transformers docs: the model's own processor on lists of PIL images,
    ``get_image_features``, L2 normalisation."""
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir).to(device).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            images = [Image.open(p) for p in paths[i : i + batch]]
            inputs = processor(images=images, return_tensors="pt").to(device)
            feats = model.get_image_features(**inputs)
            feats = getattr(feats, "pooler_output", feats)  # transformers 5 may wrap the tensor
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
    return torch.cat(out).numpy(), type(processor).__name__


def xmr_encode(encoder, paths, out: Path, **options) -> tuple[np.ndarray, dict]:
    from xmr.data import ImageRef, Item, Split
    from xmr.encode import encode_split, load_embeddings

    split = Split("bench", {p.stem: Item(p.stem, ImageRef(path=str(p))) for p in paths})
    shutil.rmtree(out, ignore_errors=True)
    summary = encode_split(encoder, split, out, kinds=("images",), progress=False, **options)
    return load_embeddings(out, "images").vectors, summary.to_dict()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_preprocess(model_dir: Path, paths: list[Path], batch: int = 32) -> None:
    """Decode + preprocess on one core: ms per image, xmr vs the processor, same images."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from xmr.data import ImageRef
    from xmr.models import create_encoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    pre = create_encoder(f"hf:{model_dir}", device="cpu").preprocess

    def reference():
        out = []
        for i in range(0, len(paths), batch):
            images = [Image.open(p) for p in paths[i : i + batch]]
            for im in images:
                im.load()
            out.append(processor(images=images, return_tensors="pt")["pixel_values"])
        return torch.cat(out)

    def decode_only():
        for p in paths:
            ImageRef(path=str(p)).open()

    def ours():
        out = []
        for i in range(0, len(paths), batch):
            crops = [pre.crop(ImageRef(path=str(p)).open()) for p in paths[i : i + batch]]
            out.append(pre.normalize(np.stack(crops)))
        return torch.cat(out)

    def worker():  # a decoding worker's share when the batch is normalised on the device
        for p in paths:
            pre.crop(ImageRef(path=str(p)).open())

    resample = getattr(Image.Resampling, pre.resample.upper())

    def shared_floor():
        # What both sides do with the very same PIL calls (decode, then the bicubic resize to
        # the processor's size): no bit-exact path can go below it while PIL resamples.
        for p in paths:
            im = ImageRef(path=str(p)).open()
            h, w = pre.target_size(im.height, im.width)
            if (h, w) != (im.height, im.width):
                im.resize((w, h), resample=resample)

    from dataclasses import replace

    pre_tv = replace(pre, backend="torchvision")

    def ours_torchvision():
        out = []
        for i in range(0, len(paths), batch):
            crops = [pre_tv.crop(ImageRef(path=str(p)).open()) for p in paths[i : i + batch]]
            out.append(pre_tv.normalize(np.stack(crops)))
        return torch.cat(out)

    def worker_torchvision():
        for p in paths:
            pre_tv.crop(ImageRef(path=str(p)).open())

    reference(), ours()  # warm-up
    (expected, ref_s), (got, xmr_s) = timed(reference), timed(ours)
    _, dec_s = timed(decode_only)
    _, worker_s = timed(worker)
    _, floor_s = timed(shared_floor)
    (got_tv, tv_s), (_, tv_worker_s) = timed(ours_torchvision), timed(worker_torchvision)
    n = len(paths)
    diff = float((got - expected).abs().max())
    print(
        f"decode+preprocess, 1 core: reference {type(processor).__name__} {ref_s / n * 1e3:.2f} "
        f"ms/img, xmr {xmr_s / n * 1e3:.2f} ms/img (of which decoding {dec_s / n * 1e3:.2f}): "
        f"x{ref_s / xmr_s:.2f}; max |diff| {diff:.1e}"
    )
    print(
        f"  worker share (decode + uint8 crop; normalised on the device): "
        f"{worker_s / n * 1e3:.2f} ms/img, x{ref_s / worker_s:.2f}; shared floor (decode + the "
        f"same PIL resize): {floor_s / n * 1e3:.2f} ms/img, so at exact parity at most "
        f"x{ref_s / floor_s:.2f}"
    )
    print(
        f"xmr --image-backend torchvision (the torchvision processor's pixels, see "
        f"crosscheck_processor_backends.py): {tv_s / n * 1e3:.2f} ms/img, x{ref_s / tv_s:.2f}; "
        f"worker share {tv_worker_s / n * 1e3:.2f} ms/img, x{ref_s / tv_worker_s:.2f}; "
        f"max |diff| from the pil processor {float((got_tv - expected).abs().max()):.1e}"
    )
    torch.set_num_threads(threads)


def _child(args) -> None:
    """One side of the encode comparison in a fresh process, so peak memory is its own."""
    import json
    import resource

    paths = sorted(Path(args.child_images).glob("*.jpg"))
    model_dir = Path(args.child_model)
    if args.child == "reference":
        (vecs, _), seconds = timed(lambda: reference_loop(model_dir, paths, args.device))
        info = {}
    else:
        from xmr.models import create_encoder

        encoder = create_encoder(f"hf:{model_dir}", device=args.device, precision=args.precision)
        out = Path(args.child_images).parent / "emb"
        (vecs, summary), seconds = timed(
            lambda: xmr_encode(encoder, paths, out, workers=None, batch_size=None)
        )
        info = {"loader": summary["loader"], "kind": summary["kinds"]["images"]}
    np.save(Path(args.child_images).parent / f"{args.child}.npy", vecs)
    # VmHWM: this process's own peak (getrusage's ru_maxrss would carry the launching process's
    # peak over the exec). Workers: the largest one's peak, pages shared with this process
    # included (they are forked from it).
    status = Path("/proc/self/status").read_text().splitlines()
    own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": own, "child_peak_mb": kids, **info}))


def bench_encode(tmp: Path, model_dir: Path, n: int, args) -> None:
    import json
    import subprocess
    import sys

    results = {}
    for side in ("reference", "xmr"):
        cmd = [sys.executable, __file__, "--child", side, "--child-images", str(tmp / "images")]
        cmd += ["--child-model", str(model_dir), "--device", args.device]
        cmd += ["--precision", args.precision]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    ref, ours = results["reference"], results["xmr"]
    diff = float(np.abs(np.load(tmp / "xmr.npy") - np.load(tmp / "reference.npy")).max())
    loader, kind = ours["loader"], ours["kind"]
    print(
        f"reference loop (processor on 32 PIL images + get_image_features): "
        f"{n / ref['seconds']:7.1f} img/s ({ref['seconds']:.2f} s), peak {ref['peak_mb']:.0f} MB"
    )
    print(
        f"xmr encode ({loader['workers']} worker(s), batch {loader['batch_size']}):"
        f"{' ' * 21}{n / ours['seconds']:7.1f} img/s ({ours['seconds']:.2f} s), peak "
        f"{ours['peak_mb']:.0f} MB (+ workers' peak {ours['child_peak_mb']:.0f} MB); waited "
        f"for data {kind['data_wait_share']:.0%}"
    )
    print(f"speed-up x{ref['seconds'] / ours['seconds']:.2f}; max |diff| {diff:.1e}")


def bench_draft(tmp: Path, model_dir: Path, encoder, args) -> None:
    w, h = (int(v) for v in args.draft_size.split("x"))
    paths = make_images(tmp / "large", args.draft_images, min(w, h), max(w, h), seed=1)
    ref, _ = reference_loop(model_dir, paths, args.device)
    rows = {}
    for draft in (False, True):
        xmr_encode(encoder, paths[:8], tmp / "warm", draft=draft, workers=0)
        (vecs, summary), seconds = timed(
            lambda d=draft: xmr_encode(encoder, paths, tmp / "emb", draft=d, workers=1)
        )
        cos = (vecs * ref).sum(axis=1)
        rows[draft] = seconds
        print(
            f"{'draft' if draft else 'full decode'} ({len(paths)} JPEGs {min(w, h)}-{max(w, h)} "
            f"px): {len(paths) / seconds:6.1f} img/s; vs reference max |diff| "
            f"{np.abs(vecs - ref).max():.1e}, mean 1-cos {np.mean(1 - cos):.1e}, top-1 "
            f"neighbour kept {_top1_agreement(vecs, ref):.0%}"
        )
    print(f"draft speed-up x{rows[False] / rows[True]:.2f}")


def _top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of images whose nearest other image is the same under both embeddings."""
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -2)
    np.fill_diagonal(sb, -2)
    return float((sa.argmax(1) == sb.argmax(1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--min-size", type=int, default=120, help="smallest JPEG side")
    parser.add_argument("--max-size", type=int, default=400, help="largest JPEG side")
    parser.add_argument("--what", default="preprocess,encode,draft")
    parser.add_argument("--draft-size", default="1024x768", help="the large JPEGs of 'draft'")
    parser.add_argument("--draft-images", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--large", action="store_true", help="a ViT-B/16-sized random model")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-images", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    what = set(args.what.split(","))

    from xmr.models import create_encoder

    tmp = Path(tempfile.mkdtemp(prefix="xmr-bench-encode-"))
    try:
        paths = make_images(tmp / "images", args.images, args.min_size, args.max_size)
        model_dir = make_model(tmp / "model", args.large)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average "
            f"{os.getloadavg()[0]:.1f}, torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads), device {args.device}"
            + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
        )
        print(
            f"data: {len(paths)} JPEGs, sides {args.min_size}-{args.max_size} px; model: "
            f"{'ViT-B/16-sized' if args.large else 'tiny'} random CLIP, 224 px input; "
            f"precision {args.precision}"
        )
        if "preprocess" in what:
            bench_preprocess(model_dir, paths)
        if "encode" in what:
            bench_encode(tmp, model_dir, len(paths), args)
        if "draft" in what:
            encoder = create_encoder(
                f"hf:{model_dir}", device=args.device, precision=args.precision
            )
            bench_draft(tmp, model_dir, encoder, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
