"""``xmr demo``: generate data, train a tiny model from scratch, index and search, offline."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace

from xmr.cli import options
from xmr.workflows.demo import TARGET_METRIC, DemoConfig, run_demo


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
    add_demo_arguments(p)
    p.set_defaults(func=run)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``xmr demo``."""
    options.add_out(p, "output directory", required=False, default="demo_out")
    p.add_argument("--epochs", type=options.positive_int, default=None, metavar="N",
                   help="training epochs (default: the demo's, 30)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="data and model seed (default: 0)")
    options.add_workers(p, default=None, help="image decoding processes (default: 0)")
    p.add_argument(
        "--smoke", action="store_true", help="a seconds-long run with tiny sizes (for tests)"
    )
    options.add_json(
        p, "print only the final metrics, as one JSON object (the progress goes to stderr)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = DemoConfig.smoke() if args.smoke else DemoConfig()
    changes = {
        k: v
        for k, v in (("epochs", args.epochs), ("seed", args.seed), ("workers", args.workers))
        if v is not None
    }
    cfg = replace(cfg, **changes)
    if args.json:
        # The demo reports as it goes and ends with the JSON line; with --json that line is
        # all stdout gets.
        with contextlib.redirect_stdout(sys.stderr):
            summary = run_demo(args.out, cfg)
        print(json.dumps(summary), flush=True)
    else:
        summary = run_demo(args.out, cfg)
    if not args.smoke and not summary["passed"]:
        print(
            f"xmr demo: {TARGET_METRIC} {summary['trained'][TARGET_METRIC]:.3f} is below the "
            "demo's target of 0.9",
            file=sys.stderr,
        )
        return 1
    return 0
