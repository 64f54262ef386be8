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
        help=k_help
        or f"how many first-stage results the cross-encoder rescores [{DEFAULT_RERANK_K}]",
    )
    g.add_argument(
        "--rerank-mode",
        default="itm",
        choices=RERANK_MODES,
        help="final score: itm = match probability (mPLUG); itm+sim = ITM match logit + alpha * "
        "first-stage similarity (BLIP-2) [itm]",
    )
    g.add_argument(
        "--rerank-alpha",
        type=float,
        default=1.0,
        metavar="A",
        help="weight of the first-stage similarity in itm+sim [1.0]",
    )
    g.add_argument(
        "--rerank-batch-size", type=int, default=32, metavar="N", help="pairs per forward pass"
    )


def rerank_options(args: argparse.Namespace) -> dict:
    """Keyword arguments shared by :func:`xmr.rerank.search_reranked` and ``rerank_many``
    (callers add the depth: ``rerank_k=`` or ``k=`` respectively)."""
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


def rerank_metrics(
    args: argparse.Namespace,
    split,
    text_emb,
    image_emb,
    directions=("t2i",),
    rankings_out: dict | None = None,
) -> dict:
    """Two-stage metrics (``{direction}/...`` reranked, ``first_stage/{direction}/...``) when
    ``--rerank`` was given, else {}; for ``xmr evaluate --model``."""
    if not args.rerank:
        return {}
    from xmr.rerank import evaluate_reranked

    return evaluate_reranked(
        split,
        text_emb,
        image_emb,
        load_cross_encoder(args),
        rerank_k=args.rerank_k,
        directions=directions,
        k=getattr(args, "k", 10),
        rankings_out=rankings_out,
        **rerank_options(args),
    )
