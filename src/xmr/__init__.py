"""xmr: cross-modal retrieval. ``import xmr`` is light: heavy parts load on first use."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it. Resolved on first attribute access (PEP 562) so that importing
# xmr never imports torch, transformers or faiss.
_EXPORTS = {
    "XmrError": "xmr.errors",
    "DataError": "xmr.errors",
    "ModelMismatchError": "xmr.errors",
    "RetrievalDataset": "xmr.data.dataset",
    "Split": "xmr.data.dataset",
    "Item": "xmr.data.dataset",
    "Query": "xmr.data.dataset",
    "ImageRef": "xmr.data.images",
    "load_dataset": "xmr.data.readers",
    "detect_format": "xmr.data.readers",
    "list_readers": "xmr.data.readers",
    "generate_synthetic": "xmr.data.synth",
    "inspect_dataset": "xmr.data.inspect",
    "convert_dataset": "xmr.data.convert",
    "create_encoder": "xmr.models",
    "create_tiny_clip": "xmr.models",
    "encode_split": "xmr.encode",
    "load_embeddings": "xmr.encode",
    "build_index": "xmr.index.building",
    "load_index": "xmr.index.store",
    "Searcher": "xmr.search",
    "evaluate_split": "xmr.eval",
    "evaluate_rankings": "xmr.eval",
    "evaluate_predictions": "xmr.eval",
    "evaluate_model": "xmr.workflows.evaluate",
    "evaluate_prediction_file": "xmr.workflows.evaluate",
    "EvaluationResult": "xmr.workflows.evaluation_result",
    "predict": "xmr.workflows.predict",
    "PredictionResult": "xmr.workflows.predict",
    "TrainConfig": "xmr.train.config",
    "pipeline": "xmr.workflows.pipeline",
    "create_cross_encoder": "xmr.models.cross_encoders",
    "list_cross_encoders": "xmr.models.cross_encoders",
    "load_fusion": "xmr.fusion",
    "create_fusion": "xmr.fusion",
    "list_fusions": "xmr.fusion",
    "train_fusion": "xmr.train.fusion",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xmr' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
