"""``xmr evaluate``: score a prediction file or a model against a data set's relevance.

``--predictions FILE`` (:func:`xmr.workflows.evaluate.evaluate_prediction_file`) and ``--model M``
(:func:`xmr.workflows.evaluate.evaluate_model`) are the two sources of rankings, mutually
exclusive; the printing (the table, ``--json``) is shared by both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xmr.cli import options
from xmr.cli.data import add_skip_bad_argument
from xmr.cli.fusion_options import add_fusion_arguments, fusion_kwargs
from xmr.cli.report import check_report_dir, write_evaluation_report
from xmr.cli.rerank_options import add_rerank_arguments
from xmr.cli.text_options import add_text_arguments, text_options
from xmr.errors import XmrError
from xmr.eval.clip_benchmark import clip_benchmark_result
from xmr.eval.evaluate import format_metrics_table
from xmr.eval.predictions import PREDICTION_KINDS, UnknownKindError
from xmr.workflows.evaluate import evaluate_model, evaluate_prediction_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predictions against a data set's relevance (R@K, mAP@K, nDCG, MRR)",
        description=(
            "Score a prediction file against the relevance of a data set split: R@1/5/10, "
            "MeanRecall (MUGE), mAP@K (the Track2 scorer), mAP@K_trec, nDCG@K, P@K, MRR and "
            "first-hit ranks, for all queries and per category. The prediction file's format "
            "(Track2 JSON, MUGE or Chinese-CLIP JSON lines, TREC run) is detected from its "
            "content and it is validated as the official scorers do."
        ),
    )
    add_evaluate_arguments(p)
    p.set_defaults(func=run)


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``xmr evaluate``."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", metavar="FILE", help="prediction or submission file")
    source.add_argument(
        "--model",
        metavar="M",
        help="encode the split with model M (hf:DIR, open_clip:..., a dir), rank exactly, score; "
        "st:DIR (a text model) or bm25[:k1=..,b=..,tokenizer=..] score text retrieval (t2t/)",
    )
    p.add_argument("--data", required=True, metavar="PATH", help="the data set with relevance")
    options.add_data_format(p)
    options.add_split(p, "split to score against (default: the one with relevance)")
    p.add_argument(
        "--predictions-format",
        default=None,
        choices=list(PREDICTION_KINDS),
        help="format of the --predictions file (default: detected from the content)",
    )
    options.add_deprecated_alias(
        p, "--prediction-kind", "--predictions-format", dest="predictions_format",
        choices=list(PREDICTION_KINDS),
    )  # fmt: skip
    options.add_k(p, "cut-off K: ids per query and the K of mAP/nDCG/P")
    options.add_json(p, "print one JSON object (fractions in [0, 1], NaN as null)")
    p.add_argument(
        "--json-format",
        default=None,
        choices=("xmr", "clip_benchmark"),
        help="with --json: xmr's keys (default) or CLIP_benchmark's result object "
        '({"dataset", "model", "task", "metrics": {"image_retrieval_recall@K", ...}}) with '
        "xmr's keys beside it; implies --json",
    )
    p.add_argument(
        "--skip-empty-queries",
        action="store_true",
        help="LENIENT, not the official numbers: leave queries whose ground truth lists no "
        "relevant item out of every mean (the official scorers count each as 0)",
    )
    p.add_argument(
        "--per-query",
        default=None,
        metavar="OUT.csv",
        help="write id,text,first_hit_rank,AP,hits per query",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also write DIR/index.html: metric tables, Recall@K curves, rank and AP "
        "histograms, failure gallery with thumbnails, provenance (needs xmr[report])",
    )
    add_model_arguments(p)
    add_rerank_arguments(p)
    add_fusion_arguments(p)
    add_text_arguments(p)
    add_skip_bad_argument(p)


def add_model_arguments(p: argparse.ArgumentParser, *, evaluate: bool = True) -> None:
    """Options of the --model path, shared with ``xmr predict`` (``evaluate=False``)."""
    g = p.add_argument_group("with --model")
    if evaluate:
        g.add_argument(
            "--directions",
            default=None,
            metavar="D",
            help="t2i, i2t or t2i,i2t (default: both when items are images, else t2i)",
        )
    g.add_argument(
        "--emb-dir",
        default=None,
        metavar="DIR",
        help="keep the embeddings here: a killed run resumes, a re-run reuses them "
        "(default: a temporary directory)",
    )
    if evaluate:
        g.add_argument(
            "--depth",
            default=None,
            metavar="N|all",
            help="rank this deep for MRR / MeanRank / MedianRank / NotFound; 'all' ranks every "
            "item (uncut MRR) (default: K)",
        )
    options.add_batch_size(g)
    options.add_workers(g)
    options.add_device(g)
    options.add_precision(g)
    options.add_draft(g)
    options.add_image_backend(g)
    options.add_runtime(g)


def _depth(text: str | None) -> int | None:
    if text is None or text == "all":
        return None if text is None else 0
    try:
        depth = int(text)
    except ValueError:
        depth = -1
    if depth < 0:
        raise XmrError(f"--depth takes a number >= 0 or 'all', not {text!r}")
    return depth


def model_kwargs(args: argparse.Namespace) -> dict:
    """The library parameters of the --model options (shared with ``xmr predict``)."""
    return {
        "split": args.split,
        "format": args.format,
        "k": args.k,
        "emb_dir": args.emb_dir,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": args.device,
        "precision": args.precision,
        "progress": not args.json,
        "rerank": args.rerank,
        "rerank_k": args.rerank_k,
        "rerank_mode": args.rerank_mode,
        "rerank_alpha": args.rerank_alpha,
        "rerank_batch_size": args.rerank_batch_size,
        "skip_bad": args.skip_bad,
        "draft": args.draft,
        "image_backend": args.image_backend,
        "runtime": args.runtime,
        "text": text_options(args),
    }


# Options that mean something with one source of rankings only: refusing them beats ignoring them.
_MODEL_ONLY = ("directions", "depth", "emb_dir", "rerank", "fused", "gate", "tune_split", "hybrid",
               "bm25", "hybrid_weights", "rrf_k")  # fmt: skip
_PREDICTIONS_ONLY = ("predictions_format",)


def run(args: argparse.Namespace) -> int:
    source, other = ("--model", _PREDICTIONS_ONLY) if args.model else ("--predictions", _MODEL_ONLY)
    given = [name for name in other if getattr(args, name, None) is not None]
    if given:
        raise XmrError(f"--{given[0].replace('_', '-')} does not apply with {source}")
    if args.json_format:
        args.json = True
    if args.json_format == "clip_benchmark" and args.skip_empty_queries:
        raise XmrError(
            "--json-format clip_benchmark counts empty queries as 0, as CLIP_benchmark does; "
            "it cannot be combined with --skip-empty-queries"
        )
    if args.report:
        check_report_dir(args.report)  # before the work, not after it
    if args.model is not None:
        result = evaluate_model(
            args.model,
            args.data,
            directions=args.directions,
            depth=_depth(args.depth),
            per_query=args.per_query,
            skip_empty=args.skip_empty_queries,
            **model_kwargs(args),
            **fusion_kwargs(args),
            keep_rankings=bool(args.report),
        )
    else:
        try:
            result = evaluate_prediction_file(
                args.predictions,
                args.data,
                split=args.split,
                format=args.format,
                predictions_format=args.predictions_format,
                k=args.k,
                per_query=args.per_query,
                skip_empty=args.skip_empty_queries,
                skip_bad=args.skip_bad,
                keep_rankings=bool(args.report),
            )
        except UnknownKindError as exc:
            raise XmrError(f"{exc} with --predictions-format") from None
    print_warnings(result.warnings)
    if args.report:
        write_evaluation_report(args, result)
    if args.json_format == "clip_benchmark":
        model = args.model or None
        out = clip_benchmark_result(result.metrics, dataset=Path(args.data).name, model=model)
        print(json.dumps(out, ensure_ascii=False))
    elif args.json:
        print(json.dumps(result.json_metrics(), ensure_ascii=False))
    else:
        print(format_metrics_table(result.metrics))
    return 0


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"xmr: warning: {warning}", file=sys.stderr)
