"""``xmr demo``: generate data, train a tiny model from scratch, index and search, offline."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace

from xmr.cli import options
from xmr.errors import XmrError
from xmr.workflows.demo import TARGET_METRIC, DemoConfig, run_demo
from xmr.workflows.tianchi_recipe import (
    FAMILIES,
    TianchiRecipeConfig,
    blip2_demo_sizes,
    is_blip2,
    run_tianchi_recipe,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the offline demo: synthetic data -> tiny CLIP -> training -> index -> search",
        description=(
            "Generate synthetic traffic data (Track2 layout), create a tiny random CLIP, report "
            "its zero-shot scores, train it from scratch, build the search index and report the "
            "trained scores next to the zero-shot ones, with a few example searches. Needs no "
            "network. The last line printed is the final metrics as JSON. "
            "--recipe tianchi runs seed 001's table instead: synthetic e-commerce data (tianchi "
            "layout), image-text and text->(image+text) retrieval, zero-shot and fine-tuned, "
            "R@1/5/10 and R_mean; --model and --data run it on real weights and data."
        ),
    )
    add_demo_arguments(p)
    p.set_defaults(func=run)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``xmr demo``."""
    options.add_out(p, "output directory (default: demo_out; tianchi_recipe_out for --recipe "
                    "tianchi)", required=False, default=None)  # fmt: skip
    p.add_argument(
        "--recipe",
        choices=("traffic", "tianchi"),
        default="traffic",
        help="traffic: the demo (seed 000's data); tianchi: seed 001's table (default: traffic)",
    )
    g = p.add_argument_group("--recipe tianchi")
    g.add_argument("--model", default=None, metavar="SPEC",
                   help="the encoder to start from (hf:DIR, hf:Salesforce/blip2-itm-vit-g); "
                   "default: the demo's tiny random CLIP")  # fmt: skip
    g.add_argument("--family", default=None, choices=FAMILIES,
                   help="the tiny random model made when --model is not given: the demo's "
                   "CLIP (default) or a BLIP-2, whose rows are the seed's (multimodal items, "
                   "multimodal_items fine-tuning)")  # fmt: skip
    g.add_argument("--data", default=None, metavar="PATH",
                   help="a tianchi-layout data set (default: generated into OUT/data)")  # fmt: skip
    g.add_argument("--fused", default=None, metavar="W|tune|DIR",
                   help="the item fusion of the text->(image+text) rows, as `xmr evaluate "
                   "--fused` (default: tune, on the train split)")  # fmt: skip
    g.add_argument("--gated", action=argparse.BooleanOptionalAction, default=None,
                   help="learn a gated fusion on each model (xmr train --fused) and add its "
                   "text->(image+text) rows, xmr evaluate --gate (default: on)")  # fmt: skip
    g.add_argument("--eval-split", default=None, metavar="S",
                   help="the split the table is scored on (default: test)")  # fmt: skip
    options.add_device(g)
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
    if args.recipe == "tianchi":
        return run_tianchi(args)
    only_tianchi = ("model", "family", "data", "fused", "gated", "eval_split")
    given = [f"--{n.replace('_', '-')}" for n in only_tianchi if getattr(args, n) is not None]
    if args.device != "auto":  # the traffic demo runs on the CPU, as recorded
        given.append("--device")
    if given:
        raise XmrError(f"{', '.join(given)}: only for --recipe tianchi")
    args.out = args.out or "demo_out"
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


def run_tianchi(args: argparse.Namespace) -> int:
    """``xmr demo --recipe tianchi``: seed 001's table (:func:`run_tianchi_recipe`)."""
    if args.family is not None and args.model is not None:
        raise XmrError("--family: only without --model (it picks the tiny model to make)")
    cfg = TianchiRecipeConfig.for_family(args.family or "clip", smoke=args.smoke)
    if args.model is not None and is_blip2(args.model):
        cfg = replace(cfg, demo=blip2_demo_sizes(args.smoke))
    demo = cfg.demo
    if args.epochs is not None:
        demo = replace(demo, epochs=args.epochs)
    if args.workers is not None:
        demo = replace(demo, workers=args.workers)
    given = {
        name: getattr(args, name)
        for name in ("model", "data", "fused", "gated", "eval_split", "device", "seed")
        if getattr(args, name) is not None
    }
    cfg = replace(cfg, demo=demo, **given)
    out = args.out or "tianchi_recipe_out"
    if args.json:
        with contextlib.redirect_stdout(sys.stderr):
            summary = run_tianchi_recipe(out, cfg)
        print(json.dumps(summary), flush=True)
    else:
        run_tianchi_recipe(out, cfg)
    return 0
