"""The ``--fused`` options of ``xmr evaluate --model`` (not a command of its own)."""

from __future__ import annotations

import argparse
from typing import Any


def add_fusion_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "fused items (text -> image+caption)",
        "Also report image-only, caption-only and fused retrieval of items that carry captions "
        "(fused = normalize(W * image + (1 - W) * caption), or a fusion learned by "
        "`xmr train --fused`), side by side on the same queries.",
    )
    g.add_argument(
        "--fused",
        default=None,
        metavar="W|tune|DIR",
        help="fusion weight W in [0, 1], 'tune' to grid-search it on --tune-split, or a learned "
        "fusion directory (xmr train --fused)",
    )
    g.add_argument(
        "--tune-split",
        default=None,
        metavar="S",
        help="split to tune the weight on [train when it has relevance, else the evaluated one]",
    )
    g.add_argument(
        "--tune-metric", default="MeanRecall", metavar="M", help="metric tuning maximises"
    )


def fusion_metrics(args: argparse.Namespace, encoder: Any, dataset: Any, split: Any) -> dict:
    """``{image,caption,fused}/t2i/<metric>`` for ``split`` when ``--fused`` was given, else {}."""
    from xmr.errors import XmrError
    from xmr.eval.evaluate import recall_ks
    from xmr.eval.fused import evaluate_fused

    if args.fused is None:
        return {}
    weight, tune_split = None, None
    if args.fused == "tune":
        name = args.tune_split
        if name is None:
            train = dataset.splits.get("train")
            name = "train" if train is not None and train.has_relevance else split.name
        tune_split = dataset.split(name, need_relevance=True)
    else:
        from pathlib import Path

        try:
            weight = float(args.fused)
        except ValueError:
            if not Path(args.fused).expanduser().exists():
                raise XmrError(
                    f"--fused takes a weight in [0, 1], 'tune' or a learned fusion directory "
                    f"(xmr train --fused), not {args.fused!r}"
                ) from None
            weight = args.fused
    return evaluate_fused(
        encoder,
        split,
        weight=weight,
        tune_split=tune_split,
        metric=args.tune_metric,
        ks=recall_ks(args.k),
        k=args.k,
    )
