"""CPU inference runtimes for the image and text towers: eager PyTorch vs ``torch.compile`` vs
ONNX Runtime, same random CLIP, same inputs, one run (issue 20: adopt a ``--runtime`` option only
for what is at least 1.5x faster than eager here).

- eager: ``CLIPModel.get_text_features`` / ``get_image_features`` under ``inference_mode``.
- compile: ``torch.compile`` (inductor, default mode) of the same functions; compile time shown.
- onnxruntime: ``torch.onnx.export`` (the dynamo exporter, dynamic batch) of each tower, run by
  ``onnxruntime.InferenceSession`` (CPU provider, as many intra-op threads as torch).

Every runtime's embeddings are checked against eager (max abs difference printed). Text is timed
at batch 1 (a served query) and 32; images at batch 8.

    python benchmarks/bench_runtime.py [--size base|small] [--repeats 20] [--threads N]

Needs ``onnxruntime``, ``onnx`` and ``onnxscript`` (not project dependencies; see RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_model(out: Path, size: str) -> Path:
    from xmr.models import create_tiny_clip

    if size == "base":  # ViT-B/16 image tower, CLIP-B text tower
        dims = {"vision_width": 768, "vision_layers": 12, "text_width": 512, "text_layers": 12}
        return create_tiny_clip(
            out, embed_dim=512, image_size=224, patch_size=16, heads=8, context_length=77, **dims
        )
    dims = {"vision_width": 256, "vision_layers": 4, "text_width": 256, "text_layers": 4}
    return create_tiny_clip(
        out, embed_dim=256, image_size=224, patch_size=32, heads=4, context_length=77, **dims
    )


def per_call(fn, repeats: int) -> float:
    fn()
    fn()  # warm-up (lazy inits, allocator, compiled graph)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def onnx_session(module: torch.nn.Module, args: tuple, names: list[str], path: Path):
    import onnxruntime as ort

    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = {name: {0: batch} for name in names}
    torch.onnx.export(
        module, args, str(path), input_names=names, dynamic_shapes=shapes, dynamo=True
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class TextTower(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1)


class ImageTower(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model.get_image_features(pixel_values=pixel_values)
        return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base", choices=["base", "small"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip", default="", help="comma-separated: compile, onnxruntime")
    parser.add_argument("--threads", type=int, default=None, help="torch / ORT threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))

    from transformers import CLIPModel

    from xmr.models import create_encoder

    tmp = Path(tempfile.mkdtemp(prefix="xmr-bench-runtime-"))
    model_dir = make_model(tmp / "model", args.size)
    encoder = create_encoder(f"hf:{model_dir}", device="cpu")
    model = CLIPModel.from_pretrained(model_dir).eval()
    print(
        f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); model: {args.size} random CLIP"
    )
    rng = np.random.default_rng(0)
    words = ["a", "white", "car", "red", "truck", "on", "the", "road", "at", "night", "parked"]
    texts = [" ".join(rng.choice(words, 8)) for _ in range(32)]
    pixels = torch.from_numpy(rng.random((8, 3, 224, 224), dtype=np.float32))
    towers = {"text": TextTower(model).eval(), "image": ImageTower(model).eval()}
    cases = []
    for batch in (1, 32):
        tokens = encoder.tokenize(texts[:batch])
        cases.append(
            (f"text  batch {batch:2d}", "text", (tokens["input_ids"], tokens["attention_mask"]))
        )
    cases.append(("image batch  8", "image", (pixels,)))

    sessions, compiled = {}, {}
    if "onnxruntime" not in skip:
        for name, tower in towers.items():
            example = next(c[2] for c in cases if c[1] == name)
            names = ["input_ids", "attention_mask"] if name == "text" else ["pixel_values"]
            start = time.perf_counter()
            sessions[name] = (onnx_session(tower, example, names, tmp / f"{name}.onnx"), names)
            print(f"onnx export + session ({name}): {time.perf_counter() - start:.1f} s")
    for label, name, inputs in cases:
        tower = towers[name]
        with torch.inference_mode():
            expected = tower(*inputs)
            eager = per_call(lambda t=tower, x=inputs: t(*x), args.repeats)
            line = f"{label}: eager {eager * 1e3:8.1f} ms"
            if "compile" not in skip:
                if name not in compiled:
                    compiled[name] = torch.compile(tower)
                start = time.perf_counter()
                got = compiled[name](*inputs)
                first = time.perf_counter() - start
                fast = per_call(lambda c=compiled[name], x=inputs: c(*x), args.repeats)
                diff = float((got - expected).abs().max())
                line += f" | compile {fast * 1e3:8.1f} ms x{eager / fast:.2f} (first call {first:.0f} s, |diff| {diff:.0e})"
            if name in sessions:
                session, names = sessions[name]
                feed = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
                got = session.run(None, feed)[0]
                fast = per_call(lambda s=session, f=feed: s.run(None, f), args.repeats)
                diff = float(np.abs(got - expected.numpy()).max())
                line += (
                    f" | onnxruntime {fast * 1e3:8.1f} ms x{eager / fast:.2f} (|diff| {diff:.0e})"
                )
        print(line, flush=True)


if __name__ == "__main__":
    main()
