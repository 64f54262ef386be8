"""What ``xmr evaluate`` hands back: :class:`EvaluationResult`, its metrics and what they came from."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(eq=False)
class EvaluationResult(Mapping[str, float]):
    """What an evaluation found. It is also a read-only mapping of its ``metrics`` (so
    ``result["t2i/mAP@10"]`` works, as the plain dict earlier versions returned did).

    Attributes:
        metrics: ``{direction}/{metric}`` and ``{direction}/{category}/{metric}`` (fractions in
            [0, 1]; NaN where a metric is undefined), plus ``first_stage/...`` with reranking
            and ``{image,caption,fused}/...`` with fused items.
        split: the evaluated split's name.
        source: ``"model"`` or ``"predictions"``.
        per_query: one row per evaluated query (``id``, ``text``, ``first_hit_rank``, ``AP``,
            ``hits``) when asked for, else None.
        per_query_path: where those rows were written as CSV, or None.
        failed_items: items whose image could not be encoded (they rank last).
        warnings: things the caller should tell the user (numbers that are optimistic,
            items that could not be encoded).
        rankings: with ``keep_rankings``, ``direction -> query id -> ranked ids`` as the
            evaluation ranked them (a model: 100 deep, or both stages ``{direction}`` and
            ``first_stage/{direction}`` when reranked; a prediction file: as read), else None.
        split_data: with ``keep_rankings``, the evaluated split itself (for a report).
        model_fingerprint: with ``keep_rankings`` and a model, its short fingerprint.
    """

    metrics: dict[str, float]
    split: str
    source: str
    per_query: list[dict[str, Any]] | None = None
    per_query_path: Path | None = None
    failed_items: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rankings: dict[str, dict[str, list[str]]] | None = None
    split_data: Any = None
    model_fingerprint: str | None = None

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def json_metrics(self) -> dict[str, float | None]:
        """The metrics with NaN as None, ready for ``json.dumps``."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in self.metrics.items()
        }
