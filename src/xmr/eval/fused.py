"""Fused items evaluated: image-only, caption-only and fused text->item retrieval side by side,
and the grid search of the fusion weight (formulas in :mod:`xmr.fusion`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.eval.metrics import hits_from_topk, judged, summarize
from xmr.eval.ranking import topk_from_embeddings
from xmr.fusion import (
    DEFAULT_FUSION_WEIGHT,
    DEFAULT_TUNE_METRIC,
    DEFAULT_WEIGHT_GRID,
    FUSION_MODES,
    GATED,
    MULTIMODAL,
    SIDE_BY_SIDE,
    Fusion,
    ItemEmbeddings,
    WeightedFusion,
    check_weight,
    encode_items,
    load_fusion,
)


def _relevant_queries(split: Any, skip_empty: bool = False) -> tuple[list[str], list[str]]:
    """The judged queries: those with ground truth, an empty one included (it scores 0, as the
    official scorers count it) unless ``skip_empty``."""
    qids = [q for q in split.queries if judged(split.relevance, q, skip_empty)]
    if not any(split.relevance.get(q) for q in qids):
        raise XmrError(f"split '{split.name}' has no query with relevant items")
    return qids, [split.queries[q].text for q in qids]


def evaluate_modes(
    query_emb: np.ndarray,
    query_ids: Sequence[str],
    items: ItemEmbeddings,
    relevance: Mapping[str, Any],
    *,
    modes: Sequence[str] | None = None,
    weight: float | Fusion = DEFAULT_FUSION_WEIGHT,
    ks: Sequence[int] = (1, 5, 10),
    k: int = 10,
    device: Any = "cpu",
    gate: Fusion | None = None,
) -> dict[str, float]:
    """Text->item metrics per mode from precomputed embeddings: ``{mode}/t2i/{metric}``; with a
    learned ``weight`` (a Fusion other than weighted), ``fused/image_share`` is its mean gate.
    ``gate``, a learned fusion, is the ``gated`` mode (``gated/image_share`` its mean gate).
    ``modes`` default: image, caption, fused, gated when ``gate`` is given, and multimodal when
    ``items`` have it."""
    if modes is None:
        modes = [
            *FUSION_MODES,
            *([GATED] if gate is not None else []),
            *([MULTIMODAL] if items.multimodal is not None else []),
        ]
    depth = min(max(max(ks), k), len(items.ids))
    out: dict[str, float] = {}
    for mode in modes:
        # NaN rows (missing side) rank below every number.
        side = items.mode(mode, gate if mode == GATED else weight)
        top, _ = topk_from_embeddings(query_emb, side, depth, device=device)
        table = hits_from_topk(top, list(query_ids), items.ids, relevance)
        for name, value in summarize(table, ks, k).items():
            out[f"{mode}/t2i/{name}"] = value
    if "fused" in modes:
        if isinstance(weight, WeightedFusion):
            weight = weight.weight
        if isinstance(weight, Fusion):
            out["fused/image_share"] = weight.image_share(items.image, items.caption)
        else:
            out["fused/weight"] = float(weight)
    if GATED in modes and gate is not None:
        out[f"{GATED}/image_share"] = gate.image_share(items.image, items.caption)
    return out


def tune_fusion_weight(
    query_emb: np.ndarray,
    query_ids: Sequence[str],
    items: ItemEmbeddings,
    relevance: Mapping[str, Any],
    *,
    grid: Sequence[float] = DEFAULT_WEIGHT_GRID,
    metric: str = DEFAULT_TUNE_METRIC,
    device: Any = "cpu",
) -> tuple[float, dict[float, float]]:
    """Grid search: the ``w`` of ``grid`` with the highest fused ``metric`` (ties: the first).

    Returns ``(best_w, {w: metric})``.
    """
    if not grid:
        raise XmrError("the fusion weight grid is empty")
    curve: dict[float, float] = {}
    for w in grid:
        check_weight(w)
        scores = evaluate_modes(
            query_emb, query_ids, items, relevance, modes=("fused",), weight=w, device=device
        )
        key = f"fused/t2i/{metric}"
        if key not in scores:
            names = sorted(s.split("/")[-1] for s in scores if s.startswith("fused/t2i/"))
            raise XmrError(f"unknown metric '{metric}' (choose from {', '.join(names)})")
        curve[float(w)] = scores[key]
    best = max(curve, key=lambda w: (curve[w], -list(curve).index(w)))
    return best, curve


def load_gate(gate: Fusion | str) -> Fusion:
    """The learned fusion of a ``gated`` column (a Fusion or a directory, :func:`load_fusion`);
    a weight is refused: it is the ``fused`` column's."""
    gate = load_fusion(gate)
    if isinstance(gate, WeightedFusion):
        raise XmrError(
            "gate: a learned fusion directory (xmr train --fused) is its own column; a fixed "
            "weight is the fused column's (weight / --fused W)"
        )
    return gate


def evaluate_fused(
    encoder: Any,
    split: Any,
    *,
    weight: float | Fusion | str | None = None,
    tune_split: Any = None,
    grid: Sequence[float] = DEFAULT_WEIGHT_GRID,
    metric: str = DEFAULT_TUNE_METRIC,
    ks: Sequence[int] = (1, 5, 10),
    k: int = 10,
    batch_size: int | None = None,
    device: Any = "cpu",
    skip_empty: bool = False,
    workers: int = 0,
    multimodal: bool | None = None,
    gate: Fusion | str | None = None,
) -> dict[str, float]:
    """Image-only, caption-only and fused text->item retrieval on the same queries of ``split``,
    a learned fusion (``gated/t2i/...``) and BLIP-2's multimodal items (``multimodal/t2i/...``)
    beside them.

    Args:
        encoder: a bi-encoder (``encode_texts`` / ``encode_images``).
        split: the evaluated split (queries, relevance, items with images and captions).
        weight: the fusion weight ``w``, or a learned :class:`Fusion` (or a directory holding
            one, see :func:`load_fusion`); default: tuned on ``tune_split`` when given, else 0.5.
        tune_split: a validation split to grid-search ``w`` on (maximising ``metric``).
        grid, metric: the search grid and the metric it maximises.
        ks, k: recall cut-offs and the cut-off of mAP/nDCG/P.
        device: where rankings are computed.
        workers: image-decoding processes (see :func:`xmr.fusion.encode_items`, which embeds
            the images through :func:`xmr.encode.encode_split`).
        skip_empty: leave queries with an empty ground truth out of the means (lenient; the
            official scorers count them as 0, which is the default).
        multimodal: also score the encoder's own image+caption item embedding
            (``encoder.encode_items``: BLIP-2's Q-Former over image and caption); None: when the
            encoder has one; True without one is an XmrError.
        gate: a learned fusion (a :class:`Fusion` or its directory, as ``xmr train --fused``
            writes it) scored as a column of its own, ``gated``, beside the weighted ``fused``
            one; it must belong to ``encoder`` (:meth:`Fusion.check_model`).

    Returns:
        ``{image,caption,fused}/t2i/<metric>``, ``fused/weight`` and, when tuned,
        ``fused/tuned/w=<w>/<metric>`` for each grid point (on the tuning split); with ``gate``,
        ``gated/t2i/<metric>`` and ``gated/image_share``.
    """
    out: dict[str, float] = {}
    manifest = getattr(encoder, "manifest", None)
    model = manifest() if callable(manifest) else None
    if gate is not None:
        gate = load_gate(gate)
        gate.check_model(model, what="the embeddings")
    if weight is None and tune_split is not None:
        t_qids, t_texts = _relevant_queries(tune_split)
        t_items = encode_items(encoder, tune_split.items, batch_size, workers=workers)
        t_query = np.asarray(encoder.encode_texts(t_texts, batch_size=batch_size))
        weight, curve = tune_fusion_weight(
            t_query, t_qids, t_items, tune_split.relevance, grid=grid, metric=metric, device=device
        )
        out.update({f"fused/tuned/w={w:g}/{metric}": v for w, v in curve.items()})
    if weight is None:
        weight = DEFAULT_FUSION_WEIGHT
    if isinstance(weight, str | Fusion):
        weight = load_fusion(weight)
        weight.check_model(model, what="the embeddings")
    else:
        check_weight(weight)
    qids, texts = _relevant_queries(split, skip_empty)
    if multimodal is None:
        multimodal = callable(getattr(encoder, "encode_items", None))
    items = encode_items(encoder, split.items, batch_size, workers=workers, multimodal=multimodal)
    query = np.asarray(encoder.encode_texts(texts, batch_size=batch_size))
    out.update(
        evaluate_modes(
            query,
            qids,
            items,
            split.relevance,
            weight=weight,
            ks=ks,
            k=k,
            device=device,
            gate=gate,
        )
    )
    # Image, caption, fused, gated, multimodal: each mode's metrics in display order (stable).
    return dict(sorted(out.items(), key=lambda kv: SIDE_BY_SIDE.index(kv[0].split("/")[0])))
