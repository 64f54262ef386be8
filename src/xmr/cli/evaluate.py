"""``xmr evaluate``: score a prediction file or a model against a data set's relevance.

``--predictions FILE`` and ``--model M`` are the two sources of rankings, mutually exclusive;
everything after the rankings (the metric dict, the table, ``--json``, ``--per-query``) is
shared by both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


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
        "--model",
        metavar="M",
        help="encode the split with model M (hf:DIR, open_clip:..., a dir), rank exactly, score",
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
    # --report: the HTML report (xmr.workflows.report); all its logic lives in cli/report.py.
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also write DIR/index.html: metric tables, Recall@K curves, rank and AP "
        "histograms, failure gallery with thumbnails, provenance (needs xmr[report])",
    )
    add_model_arguments(p)
    from xmr.cli.data import add_skip_bad_argument
    from xmr.cli.fusion_options import add_fusion_arguments

    add_skip_bad_argument(p)
    from xmr.cli.rerank_options import add_rerank_arguments

    add_rerank_arguments(p)
    add_fusion_arguments(p)
    p.set_defaults(func=run)


def add_model_arguments(p: argparse.ArgumentParser, *, directions: bool = True) -> None:
    """Options of the --model path, shared with ``xmr predict``."""
    from xmr.cli.encode import DEFAULT_WORKERS

    g = p.add_argument_group("with --model")
    if directions:
        g.add_argument(
            "--directions",
            default=None,
            metavar="D",
            help="t2i, i2t or t2i,i2t [both when items are images, else t2i]",
        )
    g.add_argument(
        "--emb-dir",
        default=None,
        metavar="DIR",
        help="keep the embeddings here (a killed run resumes; a re-run reuses them) "
        "[a temporary directory]",
    )
    if directions:  # evaluate only
        g.add_argument(
            "--depth",
            default=None,
            metavar="N|all",
            help="rank this deep for MRR / MeanRank / MedianRank / NotFound; 'all' ranks every "
            "item (uncut MRR) [K]",
        )
    g.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass [64]")
    g.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"image decoding processes [{DEFAULT_WORKERS}]",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])


def run(args: argparse.Namespace) -> int:
    from xmr.errors import XmrError

    if args.k < 1:
        raise XmrError(f"--k must be at least 1 (got {args.k})")
    if args.json_format:
        args.json = True
    if args.json_format == "clip_benchmark" and args.skip_empty_queries:
        raise XmrError(
            "--json-format clip_benchmark counts empty queries as 0, as CLIP_benchmark does; "
            "it cannot be combined with --skip-empty-queries"
        )
    _check_options(args)
    if args.per_query:
        from xmr.io.atomic import check_output_file

        check_output_file(args.per_query)  # before the work, not after it
    if args.report:
        from xmr.cli.report import check_report_dir

        check_report_dir(args.report)
    if args.model is not None:
        metrics, rows = _from_model(args)
    else:
        metrics, rows = _from_predictions(args)
    if args.report:
        from xmr.cli.report import write_evaluation_report

        write_evaluation_report(args, metrics)
    return report(metrics, rows, args)


# Options that mean something with one source of rankings only: refusing them beats ignoring them.
_MODEL_ONLY = ("directions", "depth", "emb_dir", "rerank", "fused", "tune_split")
_PREDICTIONS_ONLY = ("prediction_kind",)


def _check_options(args: argparse.Namespace) -> None:
    from xmr.errors import XmrError

    source, other = ("--model", _PREDICTIONS_ONLY) if args.model else ("--predictions", _MODEL_ONLY)
    given = [name for name in other if getattr(args, name, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise XmrError(f"{flag} does not apply with {source}")


def _load_split(args: argparse.Namespace):
    from xmr.cli.data import report_skipped
    from xmr.data.readers import load_dataset

    dataset = load_dataset(args.data, args.format, args.split, skip_bad=args.skip_bad)
    report_skipped(dataset, args.data)
    return dataset.split(args.split, need_relevance=True)


def _from_predictions(args: argparse.Namespace):
    from xmr.errors import XmrError
    from xmr.eval.evaluate import evaluate_predictions

    split = _load_split(args)
    if not split.has_relevance:
        raise XmrError(f"{args.data}: split '{split.name}' has no relevance to score against")
    args.report_inputs = {"split": split}  # for --report
    return evaluate_predictions(
        args.predictions,
        split,
        k=args.k,
        kind=args.prediction_kind,
        skip_empty=args.skip_empty_queries,
        on_warning=lambda message: print(f"xmr: warning: {message}", file=sys.stderr),
    )


def embed_for_cli(args: argparse.Namespace, dataset, split):
    """Load ``--model`` and embed ``split`` as the ``--model`` options say (shared with
    ``xmr predict``); returns (encoder, SplitEmbeddings)."""
    from xmr.eval.embedded import embed_split
    from xmr.models import create_encoder

    encoder = create_encoder(args.model, device=args.device, precision=args.precision)
    emb = embed_split(
        encoder,
        split,
        emb_dir=args.emb_dir,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not getattr(args, "json", False),
        source=dataset.source(args.data, split.name),
    )
    if emb.failed:
        print(
            f"xmr: warning: {len(emb.failed)} item(s) could not be encoded and rank last "
            f"(first: {emb.failed[0]})",
            file=sys.stderr,
        )
    return encoder, emb


def _int_option(flag: str, value: str) -> int:
    from xmr.errors import XmrError

    try:
        return int(value)
    except ValueError:
        raise XmrError(f"{flag} takes a number or 'all', not {value!r}") from None


def _from_model(args: argparse.Namespace):
    from xmr.cli.data import report_skipped
    from xmr.cli.fusion_options import fusion_metrics
    from xmr.cli.rerank_options import rerank_metrics
    from xmr.data.readers import load_dataset
    from xmr.errors import XmrError
    from xmr.eval.embedded import default_directions, evaluate_embedded

    # Tuning a fusion weight needs its own split (train by default), so read them all then.
    tuning = args.fused == "tune"
    dataset = load_dataset(
        args.data, args.format, None if tuning else args.split, skip_bad=args.skip_bad
    )
    report_skipped(dataset, args.data)
    split = dataset.split(args.split, need_relevance=True)
    if not split.has_relevance:
        raise XmrError(f"{args.data}: split '{split.name}' has no relevance to score against")
    train = dataset.splits.get("train")
    default_tune = "train" if train is not None and train.has_relevance else split.name
    if tuning and (args.tune_split or default_tune) == split.name:
        print(
            f"xmr: warning: the fusion weight is tuned on the evaluated split '{split.name}'; "
            "its fused numbers are optimistic (choose another with --tune-split)",
            file=sys.stderr,
        )
    encoder, emb = embed_for_cli(args, dataset, split)
    directions = default_directions(emb)
    if args.directions:
        directions = tuple(d.strip() for d in args.directions.split(",") if d.strip())
    depth = None
    if args.depth is not None:
        depth = 0 if args.depth == "all" else _int_option("--depth", args.depth)
    metrics = evaluate_embedded(
        emb,
        directions=directions,
        k=args.k,
        depth=depth,
        device=args.device,
        skip_empty=args.skip_empty_queries,
    )
    if args.rerank:
        # The reranked numbers replace the first stage's keys; the first stage stays beside them.
        reranked: dict = {}  # both stages' rankings, for --report
        metrics |= rerank_metrics(
            args, split, emb.text, emb.items, directions=directions, rankings_out=reranked
        )
        args.report_rankings = reranked
    metrics |= fusion_metrics(args, encoder, dataset, split)
    args.report_inputs = {"split": split, "emb": emb, "directions": directions}  # for --report
    return metrics, _model_per_query(args, split, emb) if args.per_query else []


def _model_per_query(args: argparse.Namespace, split, emb) -> list:
    """Per-query rows of the first-stage text->image ranking, cut at K as a submission is."""
    from xmr.eval.embedded import rank_embedded
    from xmr.eval.evaluate import per_query_rows
    from xmr.eval.metrics import hits_from_rankings

    ranked = rank_embedded(emb, min(args.k, len(split.items)), device=args.device)
    rankings = {q: [i for i, _ in row] for q, row in ranked.items()}
    table = hits_from_rankings(rankings, split.relevance, skip_empty=args.skip_empty_queries)
    return per_query_rows(table, args.k, {q: query.text for q, query in split.queries.items()})


def report(metrics: dict, rows: list, args: argparse.Namespace) -> int:
    """Print ``metrics`` (table or ``--json``) and write ``--per-query``."""
    from xmr.eval.evaluate import format_metrics_table, write_per_query_csv

    if args.per_query:
        write_per_query_csv(rows, args.per_query)
    left_out = sum(int(v) for key, v in metrics.items() if key.endswith("n_empty_skipped"))
    if getattr(args, "skip_empty_queries", False):
        print(
            f"xmr: warning: --skip-empty-queries: {left_out} queries with no relevant item are "
            "left out of every mean; these are not the official numbers (the official scorers "
            "count such queries as 0)",
            file=sys.stderr,
        )
    if getattr(args, "json_format", None) == "clip_benchmark":
        from pathlib import Path

        from xmr.eval.clip_benchmark import clip_benchmark_result

        model = args.model or None
        result = clip_benchmark_result(metrics, dataset=Path(args.data).name, model=model)
        print(json.dumps(result, ensure_ascii=False))
    elif args.json or getattr(args, "json_format", None):
        clean = {
            k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()
        }
        print(json.dumps(clean, ensure_ascii=False))
    else:
        print(format_metrics_table(metrics))
    return 0
