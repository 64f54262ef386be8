"""The ``--rerank`` options shared by ``xmr search`` / ``evaluate`` / ``predict`` (not a command)."""

from __future__ import annotations

import argparse


def add_rerank_arguments(p: argparse.ArgumentParser, *, k_help: str | None = None) -> None:
    """``--rerank SPEC --rerank-k K --rerank-mode itm|itm+sim --rerank-alpha A``."""
    from xmr.rerank import DEFAULT_RERANK_K, RERANK_MODES

    g = p.add_argument_group("two-stage reranking")
    g.add_argument(
        "--rerank",
        default=None,
        metavar="MODEL",
        help="rescore the first-stage top K with this cross-encoder (blip:HUB_ID, blip2:HUB_ID, "
        "blip-itm-base-coco, blip2-itm-vit-g, mplug:DIR, a local dir)",
    )
    g.add_argument(
        "--rerank-k",
        type=int,
        default=DEFAULT_RERANK_K,
        metavar="K",
        help=k_help or "how many first-stage results the cross-encoder rescores",
    )
    g.add_argument(
        "--rerank-mode",
        default="itm",
        choices=RERANK_MODES,
        help="final score: itm = match probability (mPLUG); itm+sim = ITM match logit + alpha * "
        "first-stage similarity (BLIP-2)",
    )
    g.add_argument(
        "--rerank-alpha",
        type=float,
        default=1.0,
        metavar="A",
        help="weight of the first-stage similarity in itm+sim",
    )
    g.add_argument(
        "--rerank-batch-size", type=int, default=32, metavar="N", help="pairs per forward pass"
    )


def check_rerank_arguments(args: argparse.Namespace) -> None:
    """The flags' own checks, so that a bad value is reported by its flag name."""
    from xmr.errors import XmrError

    if args.rerank_k < 1:
        raise XmrError(f"--rerank-k must be at least 1, not {args.rerank_k}")
    if args.rerank_batch_size < 1:
        raise XmrError(f"--rerank-batch-size must be at least 1, not {args.rerank_batch_size}")


def rerank_options(args: argparse.Namespace) -> dict:
    """Keyword arguments shared by :class:`xmr.search.Reranker` and ``rerank_many`` (callers add
    the depth: ``k=``)."""
    check_rerank_arguments(args)
    return {
        "mode": args.rerank_mode,
        "alpha": args.rerank_alpha,
        "batch_size": args.rerank_batch_size,
    }


def load_cross_encoder(args: argparse.Namespace):
    from xmr.models.cross_encoders import create_cross_encoder

    precision = getattr(args, "precision", "fp32") or "fp32"
    return create_cross_encoder(
        args.rerank, device=getattr(args, "device", None), precision=precision
    )
