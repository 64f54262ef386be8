"""xmr's preprocessing against both of transformers' image-processor backends, where both load.

transformers 5 has a ``pil`` and a ``torchvision`` backend per image processor, and
``AutoImageProcessor`` picks ``torchvision`` whenever torchvision is installed. Their pixels
differ, so xmr reproduces each (``ImagePreprocess(backend="pil" | "torchvision")``). The main
venv has no torchvision (it does not load beside the CPU torch 2.13.0), so this check runs in the
crosscheck venv (``make crosscheck``: torch 2.14.1 + torchvision 0.29.1).

For every family xmr reads (CLIP, Chinese-CLIP, SigLIP, BLIP/BLIP-2) and the resize filters
their configs use, on JPEG-decoded images of many sizes (smaller than the crop too, so padding is
covered), it prints the max abs difference of xmr's output (``crop`` per image, ``normalize`` per
batch) from each backend's processor, and ms per image on one core (decode included) for the
four of them. It exits 1 when a difference is over 1e-5 (the bar of ``tests/test_preprocess.py``).

    .venv/crosscheck/bin/python benchmarks/crosscheck_processor_backends.py [--images 200]
        [--write-golden tests/data/torchvision_backend_golden.npz]

``--write-golden`` also saves the torchvision processors' outputs on a few small generated
images, so ``tests/test_preprocess_torchvision.py`` pins xmr against torchvision's own output
in the main venv, where torchvision does not load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encode import make_images  # noqa: E402

# family -> (xmr model_type, transformers processor class name without the backend suffix)
FAMILIES = {
    "clip": ("clip", "CLIPImageProcessor"),
    "chinese_clip": ("chinese_clip", "ChineseCLIPImageProcessor"),
    "siglip": ("siglip", "SiglipImageProcessor"),
    "blip": ("blip", "BlipImageProcessor"),
}
# resample ids (PIL) each family is checked with: its default, and the other two torch has.
RESAMPLES = {"bicubic": 3, "bilinear": 2, "nearest": 0}


def processors(name: str, config: dict):
    import transformers

    torchvision_cls = getattr(transformers, name)
    pil_cls = getattr(transformers, name + "Pil")
    return {"pil": pil_cls(**config), "torchvision": torchvision_cls(**config)}


def per_core_ms(fn, n: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1e3


# (family, resample, size config, crop) of the golden file: small sizes keep it a few 100 KB.
GOLDEN_CASES = [
    ("clip", 3, {"shortest_edge": 24}, {"height": 24, "width": 24}),
    ("clip", 2, {"shortest_edge": 20}, {"height": 16, "width": 20}),
    ("clip", 0, {"shortest_edge": 24}, {"height": 24, "width": 24}),
    ("siglip", 3, {"height": 20, "width": 28}, None),
    ("blip", 2, {"height": 24, "width": 24}, None),
]
# Input sides: smaller than the crop (padding), odd, and large enough to downsample.
GOLDEN_SIZES = [(9, 31), (23, 24), (25, 25), (40, 17), (61, 97), (130, 70)]


def write_golden(path: Path) -> None:
    """The torchvision processors' outputs on seeded uint8 images, with the inputs and configs."""
    import json

    from xmr.models.preprocess import HF_DEFAULTS

    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {}
    for n, (h, w) in enumerate(GOLDEN_SIZES):
        smooth = np.cumsum(rng.integers(-9, 10, (h, w, 3)), axis=1) % 256  # some structure
        arrays[f"input{n}"] = smooth.astype(np.uint8)
    cases = []
    for c, (model_type, resample, size, crop) in enumerate(GOLDEN_CASES):
        _, class_name = FAMILIES[model_type]
        config = {**HF_DEFAULTS[model_type], "resample": resample, "size": size}
        if crop is not None:
            config["crop_size"] = crop
        proc = processors(class_name, config)["torchvision"]
        for n in range(len(GOLDEN_SIZES)):
            image = arrays[f"input{n}"]
            out = proc(images=[image], return_tensors="pt")["pixel_values"][0]
            arrays[f"case{c}_input{n}"] = out.numpy()
        cases.append({"model_type": model_type, "config": config})
    arrays["cases"] = np.frombuffer(json.dumps(cases).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB, {len(cases)} cases)")


def main() -> int:
    from dataclasses import replace

    from PIL import Image

    from xmr.data import ImageRef
    from xmr.models.preprocess import HF_DEFAULTS, ImagePreprocess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--write-golden", type=Path, default=None, metavar="NPZ")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write_golden is not None:
        write_golden(args.write_golden)

    import torchvision
    import transformers

    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, transformers "
        f"{transformers.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="xmr-backends-"))
    paths = make_images(tmp, args.images, 40, 500)
    refs = [ImageRef(path=str(p)) for p in paths]
    worst = 0.0
    for family, (model_type, class_name) in FAMILIES.items():
        for filter_name, resample in RESAMPLES.items():
            config = {**HF_DEFAULTS[model_type], "resample": resample}
            procs = processors(class_name, config)
            base = ImagePreprocess.from_hf_config(config, model_type)
            row = []
            for backend, proc in procs.items():
                ours = replace(base, backend=backend)
                diff = 0.0
                for i in range(0, len(refs), args.batch):
                    images = [r.open() for r in refs[i : i + args.batch]]
                    expected = proc(images=images, return_tensors="pt")["pixel_values"]
                    got = ours.normalize(np.stack([ours.crop(im) for im in images]))
                    diff = max(diff, float((got - expected).abs().max()))
                worst = max(worst, diff)
                row.append(f"{backend} max |diff| {diff:.1e}")
            print(f"{family:13s} {filter_name:9s} " + "; ".join(row))
        if family == "clip":
            times = []
            for backend, proc in processors(class_name, HF_DEFAULTS[model_type]).items():
                ours = replace(
                    base.__class__.from_hf_config(HF_DEFAULTS[model_type]), backend=backend
                )

                def reference(proc=proc):
                    for i in range(0, len(paths), 32):
                        images = [Image.open(p) for p in paths[i : i + 32]]
                        proc(images=images, return_tensors="pt")

                def xmr(ours=ours):
                    for i in range(0, len(refs), 32):
                        crops = [ours.crop(r.open()) for r in refs[i : i + 32]]
                        ours.normalize(np.stack(crops))

                def worker(ours=ours):  # a decoding worker's share: normalised on the device
                    for r in refs:
                        ours.crop(r.open())

                ref_ms, xmr_ms = per_core_ms(reference, len(paths)), per_core_ms(xmr, len(paths))
                times.append((backend, ref_ms, xmr_ms, per_core_ms(worker, len(paths))))
            for backend, ref_ms, xmr_ms, worker_ms in times:
                print(
                    f"decode+preprocess, 1 core, {backend} backend: transformers {ref_ms:.2f} "
                    f"ms/img, xmr {xmr_ms:.2f} ms/img: x{ref_ms / xmr_ms:.2f}; xmr's worker share "
                    f"(normalised on the device) {worker_ms:.2f} ms/img: x{ref_ms / worker_ms:.2f}"
                )
            pil_ref = times[0][1]
            print(
                f"xmr's torchvision backend against transformers' pil processor: "
                f"x{pil_ref / times[1][2]:.2f}"
            )
    print(f"worst max |diff| {worst:.1e} (bar 1e-5)")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
