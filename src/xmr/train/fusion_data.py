"""The data of fusion training: a split's frozen embeddings, the fusion evaluator, and the
candidates and positives of each step."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.eval.fused import evaluate_modes
from xmr.fusion import DEFAULT_TUNE_METRIC, ItemEmbeddings, encode_items
from xmr.train.validate import Evaluator, greater_is_better


@dataclass
class FusionData:
    """Frozen embeddings of one split: queries (rows in ``query_ids`` order), items and
    relevance (query id -> relevant item ids)."""

    query_emb: np.ndarray
    query_ids: list[str]
    items: ItemEmbeddings
    relevance: Mapping[str, Any]
    name: str = ""

    @classmethod
    def encode(cls, encoder: Any, split: Any, batch_size: int | None = None) -> FusionData:
        """Encode the split's items (image, mean caption) and its queries with relevant items."""
        qids = [q for q in split.queries if split.relevance.get(q)]
        if not qids:
            raise XmrError(
                f"split '{split.name}' has no query with relevant items: a fusion learns from "
                "queries and the items they should find"
            )
        texts = [split.queries[q].text for q in qids]
        items = encode_items(encoder, split.items, batch_size)
        query_emb = np.asarray(encoder.encode_texts(texts, batch_size=batch_size), np.float32)
        return cls(query_emb, qids, items, split.relevance, split.name)

    def pairs(self) -> np.ndarray:
        """(query row, item row) for every relevant item that has an embedding."""
        row = {item_id: n for n, item_id in enumerate(self.items.ids)}
        usable = ~(self.items.no_image & self.items.no_caption)
        out = [
            (qi, row[i])
            for qi, q in enumerate(self.query_ids)
            for i in sorted(self.relevance.get(q) or ())
            if i in row and usable[row[i]]
        ]
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)

    def metrics(self, fusion: Any, device: Any = "cpu") -> dict[str, float]:
        """The fused text->item metrics of ``fusion`` on these embeddings (``R@1``, ...)."""
        scores = evaluate_modes(
            self.query_emb,
            self.query_ids,
            self.items,
            self.relevance,
            modes=("fused",),
            weight=fusion,
            device=device,
        )
        prefix = "fused/t2i/"
        return {k[len(prefix) :]: float(v) for k, v in scores.items() if k.startswith(prefix)}


class FusionEvaluator(Evaluator):
    """Scores a fusion by its fused text->item ``metric`` on ``data`` (frozen embeddings)."""

    def __init__(self, data: FusionData, metric: str = DEFAULT_TUNE_METRIC) -> None:
        self.data = data
        self.primary_metric = metric
        self.greater_is_better = greater_is_better(metric)

    def __call__(self, fusion: Any) -> dict[str, float]:
        metrics = self.data.metrics(fusion)
        if self.primary_metric not in metrics:
            names = ", ".join(sorted(metrics))
            raise XmrError(f"unknown metric '{self.primary_metric}' (choose from {names})")
        return metrics


def relevant_rows(data: FusionData) -> list[set[int]]:
    row = {item_id: n for n, item_id in enumerate(data.items.ids)}
    return [{row[i] for i in (data.relevance.get(q) or ()) if i in row} for q in data.query_ids]


def positive_mask(query_rows: np.ndarray, cand: np.ndarray, relevant: list[set[int]]):
    column = {int(c): j for j, c in enumerate(cand)}
    mask = np.zeros((len(query_rows), len(cand)), dtype=bool)
    for b, q in enumerate(query_rows):
        for r in relevant[q]:
            j = column.get(r)
            if j is not None:
                mask[b, j] = True
    return mask


def candidates(batch_items: np.ndarray, n_items: int, negatives: int, rng) -> np.ndarray:
    """The batch's items and ``negatives`` random others (every item when there are few)."""
    own = np.unique(batch_items)
    if n_items <= len(own) + negatives:
        return np.arange(n_items)
    extra = rng.choice(n_items, size=min(negatives + len(own), n_items), replace=False)
    extra = extra[~np.isin(extra, own)][:negatives]
    return np.concatenate([own, extra])
