"""Validation during training: embed a split with the current weights and score it with
``xmr.eval`` (the same evaluator ``xmr evaluate`` uses, so the numbers are comparable)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from xmr.errors import XmrError

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
    from xmr.eval.evaluate import recall_ks
    from xmr.eval.metrics import metric_names

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


def is_better(metric: str, value: float, best: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    if metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER:
        return value < best
    return value > best


class Validator:
    """Embeds ``split``'s images and query texts and returns ``xmr.eval`` metrics.

    The preprocessed images are kept in memory between validations when they fit in
    ``cache_max_mb`` (the split does not change; only the weights do).
    """

    def __init__(
        self,
        split,
        *,
        batch_size: int = 256,
        workers: int = 0,
        cache_max_mb: float = 1024,
        progress: bool = False,
    ) -> None:
        if not split.has_relevance:
            raise XmrError(f"validation split '{split.name}' has no relevance judgements")
        self.split = split
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.cache_max_mb = cache_max_mb
        self.progress = progress
        self._pixels: Any = None
        self._failed: list[tuple[int, str]] = []

    def categories(self) -> set[str]:
        """The categories validation reports metrics for (those of the split's items and
        queries)."""
        found = {item.category for item in self.split.items.values()}
        found |= {query.category for query in self.split.queries.values()}
        return {c for c in found if c}

    def _image_embeddings(self, encoder) -> np.ndarray:
        from torch.utils.data import DataLoader

        from xmr.train.data import TrainImageDataset, cache_size_mb, collate, preprocess_all

        refs = [item.image for item in self.split.items.values()]
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
        emb = np.full((len(refs), int(encoder.embed_dim)), np.nan, dtype=np.float32)
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

    def embeddings(self, encoder) -> tuple[np.ndarray, np.ndarray]:
        """(text embeddings in ``split.queries`` order, image embeddings in ``split.items``
        order)."""
        image_emb = self._image_embeddings(encoder)
        texts = [q.text for q in self.split.queries.values()]
        text_emb = np.asarray(
            encoder.encode_texts(texts, batch_size=self.batch_size), dtype=np.float32
        )
        return text_emb, image_emb

    @torch.no_grad()
    def __call__(self, encoder) -> dict[str, float]:
        from xmr.eval.embedded import SplitEmbeddings, evaluate_embedded

        text_emb, image_emb = self.embeddings(encoder)
        failed = [
            iid
            for iid, bad in zip(self.split.items, np.isnan(image_emb).any(axis=1), strict=True)
            if bad
        ]
        emb = SplitEmbeddings(self.split, text_emb, image_emb, "images", failed)
        return evaluate_embedded(emb, directions=("t2i", "i2t"))
