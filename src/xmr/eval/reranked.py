"""Two-stage evaluation: the metrics of a cross-encoder reranking the first stage's top K.

Moved here from ``xmr.rerank``, which keeps the algorithm; import it as
``from xmr.eval.reranked import evaluate_reranked``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.eval.evaluate import evaluate_rankings, recall_ks, split_categories
from xmr.eval.ranking import topk_from_embeddings
from xmr.models.cross_encoders import create_cross_encoder
from xmr.rerank import DEFAULT_RERANK_K, dataset_lookup, rerank_many


def evaluate_reranked(
    split: Any,
    text_emb: Any,
    image_emb: Any,
    cross_encoder: Any,
    *,
    rerank_k: int = DEFAULT_RERANK_K,
    mode: str = "itm",
    alpha: float = 1.0,
    directions: Sequence[str] = ("t2i",),
    k: int = 10,
    ks: Sequence[int] | None = None,
    batch_size: int = 32,
    device: Any = None,
    rankings_out: dict[str, dict[str, list[str]]] | None = None,
) -> dict[str, float]:
    """Metrics of two-stage retrieval on ``split``, beside the first stage's own.

    The first stage ranks by the embeddings (``text_emb`` rows in ``split.queries`` order,
    ``image_emb`` rows in ``split.items`` order, as :func:`xmr.eval.evaluate.evaluate_split`
    takes them); the cross-encoder rescores each query's top ``rerank_k``. Keys:
    ``{direction}/<metric>`` for the reranked rankings and ``first_stage/{direction}/<metric>``
    for the first stage, on the same queries and to the same depth. ``rankings_out``, when
    given, receives both rankings (``{direction}`` and ``first_stage/{direction}`` -> query id
    -> ranked ids), for a report of what reranking changed.
    """
    ks = tuple(ks or recall_ks(k))
    ce = create_cross_encoder(cross_encoder) if isinstance(cross_encoder, str) else cross_encoder
    query_ids, item_ids = list(split.queries), list(split.items)
    out: dict[str, float] = {}
    for direction in directions:
        if direction == "t2i":
            q_emb, c_emb, q_ids, c_ids = text_emb, image_emb, query_ids, item_ids
            relevance = split.relevance
            queries = {q: split.queries[q].text for q in q_ids}
            lookup = dataset_lookup(split, side="image")
        elif direction == "i2t":
            q_emb, c_emb, q_ids, c_ids = image_emb, text_emb, item_ids, query_ids
            relevance = split.item_relevance()
            queries = {i: split.items[i].image for i in q_ids}
            lookup = dataset_lookup(split, side="text")
        else:
            raise XmrError(f"unknown direction '{direction}' (t2i or i2t)")
        rows = np.array([n for n, q in enumerate(q_ids) if relevance.get(q)], dtype=np.int64)
        kept = [q_ids[n] for n in rows]
        if direction == "i2t" and any(queries[q] is None for q in kept):
            raise XmrError("i2t reranking needs every evaluated item to have an image")
        depth = min(max(rerank_k, k, *ks), len(c_ids))
        index, scores = topk_from_embeddings(q_emb, c_emb, depth, rows=rows, device=device)
        first = {
            q: [
                {"id": c_ids[j], "score": float(s)}
                for j, s in zip(index[n], scores[n], strict=True)
            ]
            for n, q in enumerate(kept)
        }
        reranked = rerank_many(
            [queries[q] for q in kept],
            [first[q] for q in kept],
            ce,
            lookup=lookup,
            k=rerank_k,
            mode=mode,
            alpha=alpha,
            batch_size=batch_size,
        )
        categories = split_categories(split, direction)
        for prefix, rankings in (
            ("", {q: [r["id"] for r in row] for q, row in zip(kept, reranked, strict=True)}),
            ("first_stage/", {q: [c["id"] for c in first[q]] for q in kept}),
        ):
            metrics = evaluate_rankings(
                rankings,
                relevance,
                ks=ks,
                k=k,
                direction=direction,
                categories=categories,
                query_ids=q_ids,
            )
            out.update({f"{prefix}{key}": value for key, value in metrics.items()})
            if rankings_out is not None:
                rankings_out[f"{prefix}{direction}"] = rankings
    return out
