"""BLIP-2 multimodal items: ``encode_split(kinds=("multimodal",))`` against the straightforward
loop over the encoder's own ``encode_items``, and against the ``images`` kind, in one run.

Data: ``generate_tianchi`` (the seed 001 layout: one caption per valid item, JPEG files) and a
tiny random BLIP-2 (``create_tiny_blip``: the tokenizer from the data's texts). Timed, best of
``--repeats`` interleaved runs each after one warm-up run, the model already loaded:

- reference: ``encoder.encode_items(refs, captions, batch_size=B)``, the encoder decoding and
  preprocessing every image in this process (what a user would write without xmr encode);
- ``multimodal``: ``encode_split`` into a fresh directory (the DataLoader data path, ``--workers``
  processes, resumable shards, the manifest);
- ``images``: the same for the ``images`` kind (the Q-Former without the caption), to show what
  reading the caption costs.

The shards are checked against the reference (max |difference|).

    python benchmarks/bench_multimodal_encode.py [--items 512] [--image-size 64] [--batch-size 64]
        [--workers 0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from xmr.data.readers import load_dataset
from xmr.data.synth_tianchi import generate_tianchi
from xmr.encode import encode_split, load_embeddings
from xmr.models import create_encoder
from xmr.models.tiny import create_tiny_blip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generate_tianchi(root / "data", n_train=0, n_test=0, n_valid=args.items,
                                image_size=args.image_size, seed=0)  # fmt: skip
        split = load_dataset(data).split("valid")
        texts = [c for it in split.items.values() for c in it.captions]
        model = create_tiny_blip(root / "blip2", "blip2", texts=texts, seed=0)
        enc = create_encoder(f"hf:{model}", device="cpu")
        items = list(split.items.values())
        refs, captions = [it.image for it in items], [it.captions[0] for it in items]
        bs = args.batch_size

        def reference():
            return enc.encode_items(refs, captions, batch_size=bs)

        def encoded(kind):
            out = Path(tempfile.mkdtemp(dir=tmp))
            encode_split(enc, split, out, kinds=(kind,), batch_size=bs, workers=args.workers,
                         progress=False)  # fmt: skip
            return load_embeddings(out, kind)

        jobs = {"reference": reference, "multimodal": lambda: encoded("multimodal"),
                "images": lambda: encoded("images")}  # fmt: skip
        for job in jobs.values():  # warm-up, untimed
            job()
        # interleaved, best of the repeats: the machine is shared, its load drifts
        times: dict[str, list[float]] = {name: [] for name in jobs}
        results: dict[str, object] = {}
        for _ in range(args.repeats):
            for name, job in jobs.items():
                start = time.perf_counter()
                results[name] = job()
                times[name].append(time.perf_counter() - start)
        ref_s, ref = min(times["reference"]), results["reference"]
        runs = {k: (min(times[k]), results[k]) for k in ("multimodal", "images")}
        mm = runs["multimodal"][1]
        order = {it.id: n for n, it in enumerate(items)}
        diff = float(np.abs(mm.vectors - np.asarray(ref)[[order[i] for i in mm.ids]]).max())

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"# {args.items} items of {args.image_size} px, tiny BLIP-2 ({enc.image_vectors} "
          f"query tokens, dim {enc.embed_dim}), batch {bs}, workers {args.workers}, best of "
          f"{args.repeats}")  # fmt: skip
    print(f"{'':38}{'seconds':>9}{'items/s':>10}{'vs reference':>14}")
    print(f"{'reference: encoder.encode_items loop':38}{ref_s:9.2f}{args.items / ref_s:10.1f}"
          f"{1.0:13.2f}x")  # fmt: skip
    for kind, (sec, _) in runs.items():
        print(f"{'encode_split kinds=' + kind:38}{sec:9.2f}{args.items / sec:10.1f}"
              f"{ref_s / sec:13.2f}x")  # fmt: skip
    print(
        f"multimodal / images time: {runs['multimodal'][0] / runs['images'][0]:.2f}x; "
        f"max |multimodal shards - reference|: {diff:.2e}"
    )


if __name__ == "__main__":
    main()
