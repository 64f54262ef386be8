"""The ``--fused`` options of ``xmr evaluate --model`` (not a command of its own)."""

from __future__ import annotations

import argparse

from xmr.fusion import DEFAULT_TUNE_METRIC


def add_fusion_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "fused items (text -> image+caption)",
        "Also report image-only, caption-only and fused retrieval of items that carry captions "
        "(fused = normalize(W * image + (1 - W) * caption), or a fusion learned by "
        "`xmr train --fused`), side by side on the same queries; with a BLIP-2 model also its "
        "multimodal items (the Q-Former reading image and caption together, seed 001). "
        "`--fused blip2 --gate DIR` is the whole table: image, caption, weighted, gated, "
        "multimodal.",
    )
    g.add_argument(
        "--fused",
        default=None,
        metavar="W|tune|DIR|blip2",
        help="fusion weight W in [0, 1], 'tune' to grid-search it on --tune-split, a learned "
        "fusion directory (xmr train --fused), or 'blip2': W=0.5 beside BLIP-2's multimodal "
        "items (needs a BLIP-2 --model)",
    )
    g.add_argument(
        "--gate",
        default=None,
        metavar="DIR",
        help="also score this learned fusion (xmr train --fused) as a column of its own, "
        "'gated', beside --fused's weighted one (without --fused: beside W=0.5)",
    )
    g.add_argument(
        "--tune-split",
        default=None,
        metavar="S",
        help="split to tune the weight on (default: train when it has relevance, else the "
        "evaluated one)",
    )
    g.add_argument(
        "--tune-metric", default=DEFAULT_TUNE_METRIC, metavar="M", help="metric tuning maximises"
    )


def fusion_kwargs(args: argparse.Namespace) -> dict:
    """The library parameters of these options (:func:`xmr.workflows.evaluate.evaluate_model`)."""
    return {
        "fused": args.fused,
        "gate": args.gate,
        "tune_split": args.tune_split,
        "tune_metric": args.tune_metric,
    }
