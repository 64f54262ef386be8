"""Prediction and submission files: detect, read (:mod:`.reader`), validate against a split
(:mod:`.validation`, the official scorers' rules), write (:mod:`.writer`).

The kinds are ``track2``, ``muge``, ``cnclip``, ``cnclip-i2t`` and ``trec``
(``PREDICTION_KINDS``); each module's docstring describes its half of the formats' rules.
"""

from xmr.eval.predictions.reader import (
    MAX_PROBLEMS_SHOWN,
    PREDICTION_KINDS,
    PredictionEntry,
    PredictionError,
    PredictionFile,
    UnknownKindError,
    detect_kind,
    read_predictions,
)
from xmr.eval.predictions.validation import exact_names, item_aliases, validate_predictions
from xmr.eval.predictions.writer import trec_scores, write_predictions

__all__ = [
    "MAX_PROBLEMS_SHOWN",
    "PREDICTION_KINDS",
    "PredictionEntry",
    "PredictionError",
    "PredictionFile",
    "UnknownKindError",
    "detect_kind",
    "exact_names",
    "item_aliases",
    "read_predictions",
    "trec_scores",
    "validate_predictions",
    "write_predictions",
]
