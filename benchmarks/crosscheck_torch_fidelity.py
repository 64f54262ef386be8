"""Cross-check xmr's FID and IS against torch-fidelity itself (``make crosscheck``).

torch-fidelity needs torchvision, which does not load with this project's CPU torch, so this runs
in its own environment (``.venv/crosscheck``: torch 2.14.1 + torchvision 0.29.1 + torch-fidelity
+ xmr). Both sides get the same random-weight Inception file and the same PNG images (two sets of
different statistics, written as folders for torch-fidelity and as TSVs for xmr):

    torch_fidelity.calculate_metrics(input1=fake_dir, input2=real_dir, fid=True, isc=True,
                                     feature_extractor_weights_path=W, samples_shuffle=...)
    xmr.workflows.t2i.evaluate_t2i(fake.tsv, texts, W, real=real.tsv, is_shuffle_seed=2020)

torch-fidelity shuffles before the IS splits with seed 2020 by default; xmr is run with
``is_shuffle_seed=2020`` to compare like with like.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def _write(folder: Path, tsv: Path, n: int, size: int, seed: int, mean: float) -> list[str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids, lines = [], []
    for i in range(n):
        pixels = np.clip(rng.normal(mean, 50, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        (folder / f"{i:05d}.png").write_bytes(buf.getvalue())
        ids.append(f"{tsv.stem}{i:05d}")
        lines.append(f"{ids[-1]}\t{base64.b64encode(buf.getvalue()).decode()}\n")
    tsv.write_text("".join(lines), encoding="utf-8")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    import torch_fidelity

    from xmr.models.tiny_inception import random_fid_inception, save_fid_inception
    from xmr.workflows.t2i import evaluate_t2i

    tmp = Path(tempfile.mkdtemp(prefix="crosscheck_"))
    weights = save_fid_inception(random_fid_inception(0), tmp / "w.pth")
    fake_ids = _write(tmp / "fake", tmp / "fake.tsv", args.images, args.size, 0, 110.0)
    _write(tmp / "real", tmp / "real.tsv", args.images, args.size, 1, 140.0)
    texts = tmp / "texts.tsv"
    texts.write_text("".join(f"{i}\tdescription {i}\n" for i in fake_ids), encoding="utf-8")
    theirs = torch_fidelity.calculate_metrics(
        input1=str(tmp / "fake"),
        input2=str(tmp / "real"),
        fid=True,
        isc=True,
        feature_extractor_weights_path=str(weights),
        cuda=False,
        verbose=False,
    )
    ours = evaluate_t2i(
        tmp / "fake.tsv", texts, weights, real=tmp / "real.tsv", is_shuffle_seed=2020, device="cpu"
    )
    rows = {
        "fid": (ours["fid"], theirs["frechet_inception_distance"]),
        "is_mean": (ours["is_mean"], theirs["inception_score_mean"]),
        "is_std": (ours["is_std"], theirs["inception_score_std"]),
    }
    for name, (a, b) in rows.items():
        print(f"{name:8s} xmr {a:.6f}  torch-fidelity {b:.6f}  rel diff {abs(a - b) / abs(b):.2e}")
    print(json.dumps({k: {"xmr": a, "torch_fidelity": b} for k, (a, b) in rows.items()}))


if __name__ == "__main__":
    main()
