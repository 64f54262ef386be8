"""Inception feature extraction for T2I evaluation: images/s of xmr against torch-fidelity's
own extractor, and FID/IS cross-checks against torchmetrics fed with xmr's feature module.

Both sides run the same network on the same random weights (what costs time is the network, not
the weights), on base64 PNG lines of a MUGE-style TSV:

* xmr: ``extract_inception_features`` (decode + TF resize per image in DataLoader workers,
  batched network, float64 logits);
* reference: decode each image with PIL in a loop, stack into a uint8 batch, run
  torch-fidelity's ``FeatureExtractorInceptionV3`` (imported without torchvision).

    python benchmarks/bench_t2i.py --images 32 --batch-size 16 --workers 2
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import io
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xmr.data.images import ImageRef
from xmr.eval.generation import fid_from_features, inception_score
from xmr.models.inception import load_fid_inception, resize_like_tensorflow1x
from xmr.models.inception_features import extract_inception_features
from xmr.models.tiny_inception import random_fid_inception, save_fid_inception


def _isolated_torch_fidelity():
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        sys.exit("pip install --no-deps torch-fidelity (the reference)")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    package._xmr_isolated = True
    sys.modules["torch_fidelity"] = package
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


def _write_tsv(path: Path, n: int, size: int, seed: int) -> list[ImageRef]:
    rng = np.random.default_rng(seed)
    lines, refs, offset = [], [], 0
    for i in range(n):
        pixels = np.clip(rng.normal(120 + 3 * i, 50, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        line = f"img{i:05d}\t{base64.b64encode(buf.getvalue()).decode()}\n".encode()
        refs.append(ImageRef(tsv=str(path), offset=offset, line=i + 1, tsv_id=f"img{i:05d}"))
        lines.append(line)
        offset += len(line)
    path.write_bytes(b"".join(lines))
    return refs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    fidelity = _isolated_torch_fidelity()
    tmp = Path(tempfile.mkdtemp(prefix="bench_t2i_"))
    weights = save_fid_inception(random_fid_inception(0), tmp / "w.pth")
    net = load_fid_inception(weights, args.device)
    fake = _write_tsv(tmp / "fake.tsv", args.images, args.size, 0)
    real = _write_tsv(tmp / "real.tsv", args.images, args.size, 1)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.machine()}; {args.images} PNG {args.size}x{args.size} images per set, "
        f"batch {args.batch_size}, device {args.device}"
    )

    extract_inception_features(net, fake[: args.batch_size], batch_size=args.batch_size)  # warm-up
    timings = {}
    for workers in sorted({0, args.workers}):
        start = time.perf_counter()
        pool, logits = extract_inception_features(
            net, fake, batch_size=args.batch_size, workers=workers
        )
        timings[f"xmr workers={workers}"] = time.perf_counter() - start

    ref = fidelity.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], str(weights)
    ).to(args.device)
    start = time.perf_counter()
    ref_pool, ref_logits = [], []
    for i in range(0, len(fake), args.batch_size):
        batch = [np.asarray(r.open(), dtype=np.uint8) for r in fake[i : i + args.batch_size]]
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous().to(args.device)
        with torch.no_grad():
            p, lg = ref(x)
        ref_pool.append(p.double().cpu().numpy())
        ref_logits.append(lg.double().cpu().numpy())
    timings["torch-fidelity extractor, PIL loop"] = time.perf_counter() - start
    ref_pool, ref_logits = np.concatenate(ref_pool), np.concatenate(ref_logits)

    base = timings["torch-fidelity extractor, PIL loop"]
    for name, seconds in timings.items():
        print(
            f"  {name:38s} {seconds:7.2f} s  {len(fake) / seconds:6.2f} images/s  "
            f"x{base / seconds:.2f}"
        )
    print(f"pool features vs torch-fidelity: max |diff| {np.abs(pool - ref_pool).max():.2e}")
    print(f"logits vs torch-fidelity: max |diff| {np.abs(logits - ref_logits).max():.2e}")

    real_pool, _ = extract_inception_features(net, real, batch_size=args.batch_size, workers=0)
    ours = fid_from_features(pool, real_pool)
    print(f"FID xmr (eigh, float64) {ours:.6f}")
    print(f"FID torch-fidelity features + xmr formula {fid_from_features(ref_pool, real_pool):.6f}")

    from scipy import linalg

    s1, s2 = np.cov(pool, rowvar=False), np.cov(real_pool, rowvar=False)
    root = linalg.sqrtm(s1 @ s2)
    ref_fid = (
        ((pool.mean(0) - real_pool.mean(0)) ** 2).sum()
        + np.trace(s1 + s2)
        - 2 * np.trace(root.real)
    )
    print(f"FID scipy.linalg.sqrtm (pytorch-fid's)  {ref_fid:.6f}")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
    except ImportError as exc:
        print(f"torchmetrics not importable ({exc})")
        return

    class XmrInception(torch.nn.Module):
        """xmr's Inception as torchmetrics' feature module: uint8 images -> pool (or logits)."""

        num_features = 2048

        def __init__(self, logits: bool = False) -> None:
            super().__init__()
            self.want_logits = logits

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pool = net.pool(resize_like_tensorflow1x(x.float()))
            return net.logits(pool) if self.want_logits else pool

    def batch_of(refs):
        return torch.from_numpy(np.stack([np.asarray(r.open()) for r in refs])).permute(0, 3, 1, 2)

    tm_fid = FrechetInceptionDistance(feature=XmrInception())
    tm_fid.update(batch_of(real), real=True)
    tm_fid.update(batch_of(fake), real=False)
    print(f"FID torchmetrics fed xmr's module      {float(tm_fid.compute()):.6f}")
    tm_is = InceptionScore(feature=XmrInception(logits=True), splits=min(10, args.images // 2))
    tm_is.update(batch_of(fake))
    torch.manual_seed(0)
    mean, std = tm_is.compute()
    torch.manual_seed(0)
    perm = torch.randperm(len(fake)).numpy()
    ours_is = inception_score(logits[perm], splits=min(10, args.images // 2))
    print(f"IS torchmetrics fed xmr's module {float(mean):.6f}; xmr (same order) {ours_is[0]:.6f}")


if __name__ == "__main__":
    main()
