"""Options of text retrieval (BM25, hybrid), shared by ``xmr evaluate``, ``predict``, ``search``
and ``serve``; the CLI only parses them, the library does the work."""

from __future__ import annotations

import argparse
from typing import Any


def add_text_arguments(
    p: argparse.ArgumentParser, *, search: bool = False, mode: bool = True
) -> None:
    """``--hybrid``, ``--bm25``, ``--hybrid-weights``, ``--rrf-k`` (for search/serve
    ``--bm25-index`` instead of ``--bm25``, and for search ``--mode``)."""
    g = p.add_argument_group("text retrieval (--model bm25, st:..., hybrid)")
    g.add_argument(
        "--hybrid",
        default=None,
        choices=["rrf", "weighted"],
        help="fuse the dense model's ranking with BM25's: reciprocal rank fusion or a weighted "
        "sum of min-max normalised scores (default: none, the dense model alone)",
    )
    if search:
        g.add_argument(
            "--bm25-index",
            default=None,
            metavar="DIR",
            help="a BM25 index of the same items (xmr index build --model bm25), for "
            "--mode bm25|hybrid beside a vector index (default: none)",
        )
    if search and mode:
        g.add_argument(
            "--mode",
            default=None,
            choices=["dense", "bm25", "hybrid"],
            help="text search mode (default: dense; bm25 for a BM25 index)",
        )
    if not search:
        g.add_argument(
            "--bm25",
            default=None,
            metavar="SPEC",
            help="the BM25 side of --hybrid: bm25[:k1=..,b=..,method=..,tokenizer=..] "
            "(default: bm25)",
        )
    g.add_argument(
        "--hybrid-weights",
        default=None,
        metavar="WD,WB",
        help="weights of the dense and the BM25 ranking (default: 1,1 for rrf; 0.5,0.5 for "
        "weighted)",
    )
    g.add_argument(
        "--rrf-k", type=int, default=None, help="RRF's k in 1 / (k + rank) (default: 60)"
    )


def _weights(value: str | None) -> list[float] | None:
    from xmr.errors import XmrError

    if value is None:
        return None
    try:
        weights = [float(x) for x in value.split(",")]
    except ValueError:
        raise XmrError(f"--hybrid-weights takes two numbers, e.g. 0.7,0.3, not {value!r}") from None
    if len(weights) != 2:
        raise XmrError(f"--hybrid-weights takes two numbers (dense, bm25), got {value!r}")
    return weights


def text_options(args: argparse.Namespace) -> dict[str, Any]:
    """The library keywords of the parsed text options (``text=`` of the workflows)."""
    out: dict[str, Any] = {}
    if getattr(args, "hybrid", None):
        out["hybrid"] = args.hybrid
    if getattr(args, "bm25", None):
        out["bm25"] = args.bm25
    if getattr(args, "hybrid_weights", None):
        out["hybrid_weights"] = _weights(args.hybrid_weights)
    if getattr(args, "rrf_k", None) is not None:
        out["rrf_k"] = args.rrf_k
    return out


def searcher_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords of :meth:`xmr.search.Searcher.from_index_dir` for ``--bm25-index`` / hybrid."""
    out: dict[str, Any] = {}
    if getattr(args, "bm25_index", None):
        out["bm25_index"] = args.bm25_index
    if getattr(args, "hybrid", None):
        out["hybrid"] = args.hybrid
    if getattr(args, "hybrid_weights", None):
        out["hybrid_weights"] = _weights(args.hybrid_weights)
    if getattr(args, "rrf_k", None) is not None:
        out["rrf_k"] = args.rrf_k
    return out


def is_text_model(args: argparse.Namespace) -> bool:
    from xmr.index.bm25_index import is_bm25_spec

    return is_bm25_spec(getattr(args, "model", None)) or bool(getattr(args, "hybrid", None))
