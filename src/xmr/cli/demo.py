"""``xmr demo``: generate data, train a tiny model from scratch, index and search, offline."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the offline demo: synthetic data -> tiny CLIP -> training -> index -> search",
        description=(
            "Generate synthetic traffic data (Track2 layout), create a tiny random CLIP, report "
            "its zero-shot scores, train it from scratch, build the search index and report the "
            "trained scores next to the zero-shot ones, with a few example searches. Needs no "
            "network. The last line printed is the final metrics as JSON."
        ),
    )
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output directory [demo_out]")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    p.add_argument("--seed", type=int, default=None, help="data and model seed [0]")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes [0]")
    p.add_argument(
        "--smoke", action="store_true", help="a seconds-long run with tiny sizes (for tests)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from xmr.workflows.demo import TARGET_METRIC, DemoConfig, run_demo

    cfg = DemoConfig.smoke() if args.smoke else DemoConfig()
    changes = {
        k: v
        for k, v in (("epochs", args.epochs), ("seed", args.seed), ("workers", args.workers))
        if v is not None
    }
    cfg = replace(cfg, **changes)
    summary = run_demo(args.out, cfg)
    if not args.smoke and not summary["passed"]:
        import sys

        print(
            f"xmr demo: {TARGET_METRIC} {summary['trained'][TARGET_METRIC]:.3f} is below the "
            "demo's target of 0.9",
            file=sys.stderr,
        )
        return 1
    return 0
