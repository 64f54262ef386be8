"""The BLIP-2 tianchi recipe twice on the same data and tiny model seed: ``label_smoothing=0``
(xmr's loss before the option) and ``0.1`` (LAVIS's ITC loss, the recipe's BLIP-2 default).

    PYTHONPATH=src python benchmarks/blip2_label_smoothing.py OUT [--data DATA]

Prints one line per setting: the recipe's R_mean per row (in %) and the weighted w=0.5 fusion's
R_mean beside the multimodal items. Without ``--data`` the recipe generates its data into
``OUT/ls_0.0/data`` and the second run reuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from dataclasses import replace
from pathlib import Path

from xmr.workflows.tianchi_recipe import TianchiRecipeConfig, run_tianchi_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--data", default=None, help="a tianchi-layout data set (default: generated)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    data = args.data
    for eps in (0.0, 0.1):
        cfg = TianchiRecipeConfig.for_family("blip2")
        overrides = {**cfg.demo.train_overrides, "label_smoothing": eps}
        cfg = replace(
            cfg, data=data, device=args.device, gated=False,
            demo=replace(cfg.demo, train_overrides=overrides),
        )  # fmt: skip
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            summary = run_tianchi_recipe(args.out / f"ls_{eps}", cfg)
        data = summary["data"]
        rows = {k: round(100 * v["R_mean"], 2) for k, v in summary["rows"].items()}
        weighted = {k: round(100 * v, 2) for k, v in summary["weighted_fused_R_mean"].items()}
        seconds = time.perf_counter() - start
        print(f"label_smoothing={eps}: R_mean {rows}; weighted {weighted} ({seconds:.0f}s)")


if __name__ == "__main__":
    main()
