"""``xmr evaluate --report DIR`` (the glue the evaluate command calls) and ``xmr report``."""

from __future__ import annotations

import argparse
import json
import sys

from xmr.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="build or compare HTML reports")
    reports = p.add_subparsers(dest="report_command", metavar="WHAT")
    reports.required = True
    c = reports.add_parser(
        "compare",
        help="two evaluation reports of the same split side by side",
        description="Compare two evaluation reports (xmr evaluate --report DIR) of the same "
        "split: every metric with its delta, and the queries that gained and lost the most.",
    )
    c.add_argument("a", metavar="DIR_A", help="the first (baseline) report")
    c.add_argument("b", metavar="DIR_B", help="the second report")
    c.add_argument(
        "--out", default=None, metavar="DIR", help="where to write (default: DIR_B/compare)"
    )
    c.add_argument("--top", type=int, default=10, help="queries gained / lost shown")
    options.add_json(c, 'print {"report": PATH} instead of the bare path')
    c.set_defaults(func=run_compare)
    t = reports.add_parser(
        "train",
        help="(re)build OUT/report.html of a training run",
        description="Rebuild OUT/report.html from a training run's logs (train_log.jsonl, "
        "metrics.jsonl, train_config.json): loss, learning rates, logit scale, samples/s and "
        "every validation metric against the step, the best step marked, the configuration.",
    )
    # An input (the run's directory, read and written into), hence not named like an output.
    t.add_argument("run_dir", metavar="OUT", help="the training output directory")
    options.add_json(t, 'print {"report": PATH} instead of the bare path')
    t.set_defaults(func=run_train_report)


def check_report_dir(path: str) -> None:
    """Refuse an unusable ``--report DIR`` before the evaluation's work."""
    from xmr.workflows.report.evaluation import check_report_dir as check

    check(path)


def write_evaluation_report(args: argparse.Namespace, result) -> None:
    """Build ``args.report`` from an ``EvaluationResult`` evaluated with ``keep_rankings``."""
    from xmr.workflows.report import build_evaluation_report
    from xmr.workflows.report.sources import run_provenance

    provenance = run_provenance(
        model=args.model,
        fingerprint=result.model_fingerprint,
        data=args.data,
        split=result.split,
        predictions=args.predictions,
        k=args.k,
        argv=getattr(args, "argv", None),
    )
    path = build_evaluation_report(
        args.report,
        result.metrics,
        result.rankings,
        result.split_data,
        k=args.k,
        skip_empty=args.skip_empty_queries,
        provenance=provenance,
    )
    print(f"xmr: report written to {path}", file=sys.stderr)


def run_compare(args: argparse.Namespace) -> int:
    from xmr.workflows.report.compare import compare_reports

    path = compare_reports(args.a, args.b, out_dir=args.out, top=args.top)
    _print_path(path, args.json)
    return 0


def run_train_report(args: argparse.Namespace) -> int:
    from xmr.workflows.report.training import build_training_report

    _print_path(build_training_report(args.run_dir), args.json)
    return 0


def _print_path(path, as_json: bool) -> None:
    print(json.dumps({"report": str(path)}) if as_json else path)


def training_report_hook():
    """The callable ``xmr train`` hands the trainer to rebuild ``OUT/report.html`` after each
    validation, or None (with a warning) without matplotlib. A report that cannot be written
    is a warning, never the end of a training run."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print(
            "xmr: warning: no OUT/report.html: the training report needs matplotlib "
            "(pip install 'xmr[report]')",
            file=sys.stderr,
        )
        return None
    from xmr.errors import XmrError
    from xmr.workflows.report.training import build_training_report

    def hook(out) -> None:
        try:
            build_training_report(out)
        except (XmrError, OSError) as exc:
            print(f"xmr: warning: training report not written: {exc}", file=sys.stderr)

    return hook
