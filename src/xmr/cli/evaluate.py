"""``xmr evaluate``: score a prediction file (or, later, a model) against a data set's relevance.

``--predictions FILE`` and ``--model M`` are the two sources of rankings, mutually exclusive;
everything after the rankings (the metric dict, the table, ``--json``, ``--per-query``) is
shared by both.
"""

from __future__ import annotations

import argparse
import json
import math


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predictions against a data set's relevance (R@K, mAP@K, nDCG, MRR)",
        description=(
            "Score a prediction file against the relevance of a data set split: R@1/5/10, "
            "MeanRecall (MUGE), mAP@K (the Track2 scorer), mAP@K_trec, nDCG@K, P@K, MRR and "
            "first-hit ranks, for all queries and per category. The prediction file's kind "
            "(Track2 JSON, MUGE or Chinese-CLIP JSON lines, TREC run) is detected from its "
            "content and it is validated as the official scorers do."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", metavar="FILE", help="prediction or submission file")
    source.add_argument(
        "--model", metavar="M", help="encode, search and evaluate with model M (not available yet)"
    )
    p.add_argument("--data", required=True, metavar="PATH", help="the data set with relevance")
    p.add_argument(
        "--format", default=None, metavar="F", help="data set format (default: detected)"
    )
    p.add_argument(
        "--split", default=None, help="split to score against (default: the one with relevance)"
    )
    p.add_argument(
        "--prediction-kind",
        default=None,
        metavar="KIND",
        help="track2, muge, cnclip, cnclip-i2t or trec (default: detected from the content)",
    )
    p.add_argument(
        "--k", type=int, default=10, help="cut-off K: ids per query and mAP/nDCG/P cut (10)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (fractions in [0,1])")
    p.add_argument(
        "--per-query",
        default=None,
        metavar="OUT.csv",
        help="write id,text,first_hit_rank,AP,hits per query",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmr.errors import XmrError

    if args.k < 1:
        raise XmrError(f"--k must be at least 1 (got {args.k})")
    if args.model is not None:
        metrics, rows = _from_model(args)
    else:
        metrics, rows = _from_predictions(args)
    return report(metrics, rows, args)


def _load_split(args: argparse.Namespace):
    from xmr.data.readers import load_dataset

    dataset = load_dataset(args.data, args.format, args.split)
    return dataset.split(args.split, need_relevance=True)


def _from_predictions(args: argparse.Namespace):
    from xmr.errors import XmrError
    from xmr.eval.evaluate import evaluate_predictions

    split = _load_split(args)
    if not split.has_relevance:
        raise XmrError(f"{args.data}: split '{split.name}' has no relevance to score against")
    return evaluate_predictions(args.predictions, split, k=args.k, kind=args.prediction_kind)


def _from_model(args: argparse.Namespace):
    from xmr.errors import XmrError

    raise XmrError(
        "xmr evaluate --model is not available yet; score a prediction file with --predictions"
    )


def report(metrics: dict, rows: list, args: argparse.Namespace) -> int:
    """Print ``metrics`` (table or ``--json``) and write ``--per-query``."""
    from xmr.eval.evaluate import format_metrics_table, write_per_query_csv

    if args.per_query:
        write_per_query_csv(rows, args.per_query)
    if args.json:
        clean = {
            k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()
        }
        print(json.dumps(clean, ensure_ascii=False))
    else:
        print(format_metrics_table(metrics))
    return 0
