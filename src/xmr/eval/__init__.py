"""Evaluation: metrics over rankings, chunked top-k from scores or embeddings, prediction files.

Importing this package needs numpy only; torch loads when scores or embeddings are ranked.
"""

from xmr.eval.evaluate import (
    evaluate_embeddings,
    evaluate_predictions,
    evaluate_rankings,
    evaluate_scores,
    evaluate_split,
    format_metrics_table,
    per_query_rows,
    write_per_query_csv,
)
from xmr.eval.metrics import HitTable, hits_from_rankings, hits_from_topk, summarize
from xmr.eval.predictions import (
    PREDICTION_KINDS,
    PredictionError,
    detect_kind,
    read_predictions,
    validate_predictions,
    write_predictions,
)

__all__ = [
    "PREDICTION_KINDS",
    "HitTable",
    "PredictionError",
    "detect_kind",
    "evaluate_embeddings",
    "evaluate_predictions",
    "evaluate_rankings",
    "evaluate_scores",
    "evaluate_split",
    "format_metrics_table",
    "hits_from_rankings",
    "hits_from_topk",
    "per_query_rows",
    "read_predictions",
    "summarize",
    "validate_predictions",
    "write_per_query_csv",
    "write_predictions",
]
