"""The evaluator interface every trainer validates with, and the bi-encoder's evaluator.

An :class:`Evaluator` (sentence-transformers' idea) scores a model on held-out data and says
which of its metrics picks the best model (``primary_metric``) and in which direction
(``greater_is_better``). The trainers take any evaluator: :class:`RetrievalEvaluator` (here:
embed a split with the current weights and score it with ``xmr.eval``, the same evaluator
``xmr evaluate`` uses, so the numbers are comparable), ``xmr.train.fusion.FusionEvaluator`` and
``xmr.train.itm.RerankEvaluator``.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.eval.embedded import SplitEmbeddings, evaluate_embedded
from xmr.eval.evaluate import recall_ks
from xmr.eval.metrics import metric_names
from xmr.fusion import encode_items

log = logging.getLogger(__name__)

# Metrics where smaller is better (ranks, the share of queries with no hit).
LOWER_IS_BETTER = ("MeanRank", "MedianRank", "NotFound")


def default_best_metric(dataset_format: str) -> str:
    """Track2 is scored by mAP@10 (seed 000); MUGE and most others by mean recall."""
    return "t2i/mAP@10" if dataset_format == "track2" else "t2i/MeanRecall"


def check_best_metric(name: str, categories: set[str] | None = None) -> str:
    """Refuse a ``best_metric`` validation can never report, before any training: it must be
    ``{t2i|i2t}/{metric}`` or ``{t2i|i2t}/{category}/{metric}``, with a metric of the evaluator
    at K=10 and, when ``categories`` is given, one of them."""
    metrics = metric_names(recall_ks(10), 10)
    parts = str(name).split("/")
    ok = len(parts) in (2, 3) and parts[0] in ("t2i", "i2t") and parts[-1] in metrics
    if ok and len(parts) == 3 and categories is not None:
        ok = parts[1] in categories and parts[-1] != "n_skipped"
    if not ok:
        cats = f"; categories: {', '.join(sorted(categories))}" if categories else ""
        raise XmrError(
            f"best_metric '{name}' is not a validation metric: use t2i/NAME, i2t/NAME or "
            f"t2i/CATEGORY/NAME with NAME one of {', '.join(metrics)}{cats}"
        )
    return name


def greater_is_better(metric: str) -> bool:
    """False for ranks and the share of queries without a hit (``.../MeanRank``, ...)."""
    return metric.rsplit("/", 1)[-1] not in LOWER_IS_BETTER


class Evaluator(ABC):
    """Scores a model on held-out data; the trainers keep the model that scores best.

    Attributes:
        primary_metric: the key of ``__call__``'s result that selects the best model.
        greater_is_better: the direction of ``primary_metric``.
    """

    primary_metric: str
    greater_is_better: bool = True

    @abstractmethod
    def __call__(self, model: Any) -> dict[str, float]:
        """The metrics of ``model`` (the trainer's model object) on this evaluator's data."""

    def primary(self, metrics: dict[str, float]) -> float:
        """``metrics[primary_metric]``; XmrError listing the known keys when absent."""
        if self.primary_metric not in metrics:
            known = ", ".join(k for k in metrics if k.count("/") <= 1)
            raise XmrError(
                f"primary metric '{self.primary_metric}' is not a metric the evaluator reports "
                f"(known: {known})"
            )
        return float(metrics[self.primary_metric])

    def is_better(self, value: float | None, best: float | None) -> bool:
        """``value`` improves on ``best`` (None: nothing yet); NaN never does."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if best is None:
            return True
        return value > best if self.greater_is_better else value < best


class RetrievalEvaluator(Evaluator):
    """Embeds ``split``'s images and query texts with a bi-encoder and returns ``xmr.eval``
    metrics (``t2i/...`` and ``i2t/...``).

    The preprocessed images are kept in memory between validations when they fit in
    ``cache_max_mb`` (the split does not change; only the weights do).

    Args:
        split: a split with relevance judgements.
        primary_metric: the metric that selects the best model (default: ``t2i/MeanRecall``).
        batch_size, workers, cache_max_mb: embedding.
    """

    def __init__(
        self,
        split,
        *,
        primary_metric: str = "t2i/MeanRecall",
        batch_size: int = 256,
        workers: int = 0,
        cache_max_mb: float = 1024,
        progress: bool = False,
        multimodal: bool = False,
    ) -> None:
        if not split.has_relevance:
            raise XmrError(f"validation split '{split.name}' has no relevance judgements")
        self.primary_metric = primary_metric
        self.greater_is_better = greater_is_better(primary_metric)
        self.split = split
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.cache_max_mb = cache_max_mb
        self.progress = progress
        self.multimodal = multimodal
        self._pixels: Any = None
        self._failed: list[tuple[int, str]] = []

    def categories(self) -> set[str]:
        """The categories validation reports metrics for (those of the split's items and
        queries)."""
        found = {item.category for item in self.split.items.values()}
        found |= {query.category for query in self.split.queries.values()}
        return {c for c in found if c}

    def _image_embeddings(self, encoder) -> np.ndarray:
        import torch
        from torch.utils.data import DataLoader

        from xmr.train.data import TrainImageDataset, cache_size_mb, collate, preprocess_all

        refs = [item.image for item in self.split.items.values()]
        if self.multimodal:
            return self._multimodal_embeddings(encoder)
        size = cache_size_mb(len(refs), encoder.preprocess)
        if self._pixels is None and size is not None and size <= self.cache_max_mb:
            self._pixels, self._failed = preprocess_all(
                refs, encoder.preprocess, self.workers, batch_size=self.batch_size
            )
            if self._failed:
                log.warning(
                    "validation: %d image(s) could not be decoded (they rank last): %s",
                    len(self._failed),
                    self._failed[0][1],
                )
        # Rows stay NaN for images that cannot be decoded: as in `xmr evaluate --model`, they
        # rank last for every text and, as image queries, find nothing.
        # (n, K, dim) for a multi-vector encoder: ranked by max-sim like `xmr evaluate --model`
        per = int(getattr(encoder, "image_vectors", 1) or 1)
        shape = (per, int(encoder.embed_dim)) if per > 1 else (int(encoder.embed_dim),)
        emb = np.full((len(refs), *shape), np.nan, dtype=np.float32)
        if self._pixels is not None:
            emb[:] = np.asarray(encoder.encode_images(self._pixels, batch_size=self.batch_size))
            emb[[i for i, _ in self._failed]] = np.nan
            return emb
        loader = DataLoader(
            TrainImageDataset(refs, encoder.preprocess),
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
        )
        for indices, pixels, _failed in loader:
            if pixels is not None:
                emb[indices] = np.asarray(encoder.encode_images(pixels, batch_size=len(indices)))
        return emb

    def _multimodal_embeddings(self, encoder) -> np.ndarray:
        """Items as the model's multimodal embedding of image + first caption (items without a
        caption: their image), as ``xmr evaluate --fused blip2`` scores them."""
        items = encode_items(encoder, self.split.items, self.batch_size, multimodal=True)
        return items.multimodal

    def embeddings(self, encoder) -> tuple[np.ndarray, np.ndarray]:
        """(text embeddings in ``split.queries`` order, image embeddings in ``split.items``
        order)."""
        image_emb = self._image_embeddings(encoder)
        texts = [q.text for q in self.split.queries.values()]
        text_emb = np.asarray(
            encoder.encode_texts(texts, batch_size=self.batch_size), dtype=np.float32
        )
        return text_emb, image_emb

    def __call__(self, encoder) -> dict[str, float]:
        import torch

        with torch.no_grad():
            text_emb, image_emb = self.embeddings(encoder)
        failed = [
            iid
            for iid, bad in zip(
                self.split.items,
                np.isnan(image_emb.reshape(len(image_emb), -1)).any(axis=1),
                strict=True,
            )
            if bad
        ]
        emb = SplitEmbeddings(self.split, text_emb, image_emb, "images", failed)
        return evaluate_embedded(emb, directions=("t2i", "i2t"))


def resolve_valid_split(
    dataset: Any, valid_split: str | None, train_split: str, data: Any = None
) -> str | None:
    """The name of the validation split ``valid_split`` asks for in ``dataset``.

    "auto": "valid" when the data set has it and it is not the training split (else none);
    None, "" or "none": none; another name must be a split of ``dataset`` other than the
    training split (XmrError naming the data set ``data`` otherwise).
    """
    if valid_split is None or valid_split.lower() in ("none", ""):
        return None
    if valid_split == "auto":
        return "valid" if "valid" in dataset.splits and train_split != "valid" else None
    if valid_split == train_split:
        raise XmrError(
            f"validation split '{valid_split}' is the training split; name another one "
            "(valid_split=None: no validation split)"
        )
    if valid_split not in dataset.splits:
        raise XmrError(
            f"{data if data is not None else 'data set'}: no validation split '{valid_split}' "
            f"(splits: {', '.join(dataset.splits)}; valid_split=None: no validation split)"
        )
    return valid_split
