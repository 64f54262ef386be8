"""Is PIL's ``resize(reducing_gap=G)`` (a ``reduce()`` box pre-shrink by an integer factor when
the image is at least G times the target, then the filter) bit-identical to the plain ``resize``
the transformers processors use? Issue 20's candidate for an exact preprocessing speed-up.

Photo-like images of random sides 300-1400 px, resized to a 224 shortest edge with BICUBIC
(CLIP's filter), one core. Cases where the pre-shrink cannot apply (the image under G times the
target) are identical by construction, so they are counted apart.

    python benchmarks/check_reducing_gap.py [--cases 150]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image


def photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx * yy) % 256], -1)
    base = base + rng.normal(0, 15, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=150)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for gap in (2.0, 3.0):
        applies = identical = 0
        worst = 0
        plain_s = gap_s = 0.0
        for _ in range(args.cases):
            w, h = int(rng.integers(300, 1400)), int(rng.integers(300, 1400))
            img = photo(rng, w, h)
            scale = 224 / min(w, h)
            size = (max(224, int(w * scale)), max(224, int(h * scale)))
            if min(w, h) < gap * 224:
                continue  # no pre-shrink: the same call
            applies += 1
            t0 = time.perf_counter()
            ref = np.asarray(img.resize(size, Image.BICUBIC))
            t1 = time.perf_counter()
            fast = np.asarray(img.resize(size, Image.BICUBIC, reducing_gap=gap))
            t2 = time.perf_counter()
            plain_s, gap_s = plain_s + t1 - t0, gap_s + t2 - t1
            identical += bool(np.array_equal(ref, fast))
            worst = max(worst, int(np.abs(ref.astype(int) - fast).max()))
        print(
            f"reducing_gap={gap}: pre-shrink applies to {applies} of {args.cases} images; "
            f"bit-identical in {identical} of them (worst pixel {worst} levels off); resize "
            f"{plain_s / max(applies, 1) * 1e3:.1f} -> {gap_s / max(applies, 1) * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
