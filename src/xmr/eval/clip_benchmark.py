"""CLIP_benchmark's result shape for users moving from CLIP_benchmark or evalscope.

CLIP_benchmark (and evalscope's ``clip_benchmark`` backend, seed 003) prints one JSON object per
run::

    {"dataset": "custom", "model": "...", "task": "zeroshot_retrieval",
     "metrics": {"image_retrieval_recall@5": 1.0, "text_retrieval_recall@5": 1.0}}

Its definitions (``clip_benchmark/metrics/zeroshot_retrieval.py``): ``image_retrieval_recall@K``
is text -> image retrieval, ``text_retrieval_recall@K`` image -> text; each is, per query, 1 when
at least one positive is among the top K (its ``recall_at_k(...) > 0``), averaged over all
queries, so a query without any positive counts 0. That is xmr's ``t2i/R@K`` and ``i2t/R@K``
with empty queries counted (the default): the values are copied, not recomputed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from xmr.errors import XmrError

TASK = "zeroshot_retrieval"
_DIRECTION_KEYS = (("t2i", "image_retrieval_recall"), ("i2t", "text_retrieval_recall"))


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def clip_benchmark_result(
    metrics: Mapping[str, float], *, dataset: str, model: str | None
) -> dict[str, Any]:
    """``metrics`` (an evaluator's dict) as CLIP_benchmark prints a retrieval result, with
    xmr's own keys beside it under ``"xmr"``. Only the unprefixed, all-queries ``R@K`` of each
    direction are CLIP_benchmark metrics; per-category, reranked and fused keys stay in
    ``"xmr"``. Refuses a lenient result (empty queries left out), which CLIP_benchmark never
    computes."""
    if any(key.endswith("n_empty_skipped") for key in metrics):
        raise XmrError(
            "the clip_benchmark result counts queries without a positive as 0, as "
            "CLIP_benchmark does; it cannot be made with empty queries skipped"
        )
    ks = sorted({int(m.group(1)) for key in metrics if (m := re.fullmatch(r"t2i/R@(\d+)", key))})
    ks = ks or sorted(
        {int(m.group(1)) for key in metrics if (m := re.fullmatch(r"i2t/R@(\d+)", key))}
    )
    out: dict[str, float] = {}
    for k in ks:
        for direction, name in _DIRECTION_KEYS:
            value = metrics.get(f"{direction}/R@{k}")
            if value is not None:
                out[f"{name}@{k}"] = _clean(value)
    return {
        "dataset": dataset,
        "model": model,
        "task": TASK,
        "metrics": out,
        "xmr": {key: _clean(value) for key, value in metrics.items()},
    }
