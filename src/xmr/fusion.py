"""Fused items (seed 001, text -> image+caption): an item is retrieved by its image AND caption.

With a bi-encoder, the three ways to embed an item that carries a caption are:

* ``image``:   ``e_img = encode_images([image])``
* ``caption``: ``e_cap = normalize(mean_j encode_texts([caption_j]))`` (several captions are
  averaged; each is already L2-normalised)
* ``fused``:   ``e_fused = normalize(w * e_img + (1 - w) * e_cap)``, ``0 <= w <= 1``

``normalize(v) = v / max(||v||, 1e-12)``. A query ``q`` (L2-normalised text embedding) scores an
item by ``q . e``; for the fused item that is
``(w * q.e_img + (1 - w) * q.e_cap) / ||w * e_img + (1 - w) * e_cap||``.
``w = 1`` is image-only, ``w = 0`` caption-only. An item lacking one side is fused from the other
alone; in the image-only or caption-only mode an item lacking that side ranks last (NaN score).

:func:`tune_fusion_weight` picks ``w`` by grid search on a validation split;
:func:`evaluate_fused` reports the three modes side by side on the same queries, with keys
``image/t2i/<metric>``, ``caption/t2i/<metric>``, ``fused/t2i/<metric>`` and ``fused/weight``.

The weighted sum is the ``weighted`` kind of a small registry of fusions
(:mod:`xmr.fusion_models`); ``gated`` is a gate learned by ``xmr train --fused``
(:mod:`xmr.train.fusion`). Wherever a weight is taken, a :class:`Fusion` (or what
:func:`load_fusion` reads: a weight or a directory) may be given instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.fusion_models import (  # noqa: F401 - the fusion API, re-exported here
    Fusion,
    GatedFusion,
    WeightedFusion,
    create_fusion,
    list_fusions,
    load_fusion,
    register_fusion,
)
from xmr.vectors import l2_normalize

FUSION_MODES = ("image", "caption", "fused")
DEFAULT_FUSION_WEIGHT = 0.5
DEFAULT_WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_TUNE_METRIC = "MeanRecall"


def normalize(v: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (at least 1e-12), as float32 (:func:`xmr.vectors.l2_normalize`)."""
    return l2_normalize(v)


def fuse_embeddings(image_emb: np.ndarray, caption_emb: np.ndarray, weight: float) -> np.ndarray:
    """``normalize(w * image_emb + (1 - w) * caption_emb)`` row by row.

    Rows that are NaN on one side (that side is missing) take the other side alone.
    """
    _check_weight(weight)
    image_emb = np.asarray(image_emb, dtype=np.float32)
    caption_emb = np.asarray(caption_emb, dtype=np.float32)
    if image_emb.shape != caption_emb.shape:
        raise XmrError(f"image {image_emb.shape} and caption {caption_emb.shape} shapes differ")
    no_image = np.isnan(image_emb).any(axis=-1)
    no_caption = np.isnan(caption_emb).any(axis=-1)
    fused = normalize(
        weight * np.nan_to_num(image_emb) + (1.0 - weight) * np.nan_to_num(caption_emb)
    )
    fused[no_image] = caption_emb[no_image]
    fused[no_caption] = image_emb[no_caption]
    return fused


def _check_weight(weight: float) -> None:
    if not 0.0 <= float(weight) <= 1.0:
        raise XmrError(f"fusion weight must be in [0, 1], got {weight}")


@dataclass
class ItemEmbeddings:
    """Image and caption embeddings of a gallery; a missing side is a row of NaN."""

    ids: list[str]
    image: np.ndarray
    caption: np.ndarray

    def mode(self, mode: str, weight: float | Fusion = DEFAULT_FUSION_WEIGHT) -> np.ndarray:
        """The item embeddings for ``mode`` ("image", "caption" or "fused" with ``weight``: a
        weight in [0, 1] or a :class:`Fusion`)."""
        if mode == "image":
            return self.image
        if mode == "caption":
            return self.caption
        if mode == "fused":
            if isinstance(weight, Fusion):
                return weight.fuse(self.image, self.caption)
            return fuse_embeddings(self.image, self.caption, weight)
        raise XmrError(f"unknown fusion mode '{mode}' (choose from {', '.join(FUSION_MODES)})")


def encode_items(
    encoder: Any, items: Mapping[str, Any] | Sequence[Any], batch_size: int | None = None
) -> ItemEmbeddings:
    """Encode each item's image and captions (see the module docstring for the caption mean)."""
    items = list(items.values()) if isinstance(items, Mapping) else list(items)
    if not items:
        raise XmrError("no items to encode")
    ids = [str(it.id) for it in items]
    with_image = [i for i, it in enumerate(items) if it.image is not None]
    texts: list[str] = []
    owner: list[int] = []
    for i, it in enumerate(items):
        for caption in it.captions:
            texts.append(caption)
            owner.append(i)
    if not with_image and not texts:
        raise XmrError("the items have neither images nor captions")
    dim = None
    image_rows = None
    if with_image:
        image_rows = np.asarray(
            encoder.encode_images([items[i].image for i in with_image], batch_size=batch_size),
            dtype=np.float32,
        )
        dim = image_rows.shape[1]
    text_rows = None
    if texts:
        text_rows = np.asarray(encoder.encode_texts(texts, batch_size=batch_size), dtype=np.float32)
        dim = text_rows.shape[1]
    image = np.full((len(items), dim), np.nan, dtype=np.float32)
    if image_rows is not None:
        image[with_image] = image_rows
    caption = np.full((len(items), dim), np.nan, dtype=np.float32)
    if text_rows is not None:
        sums = np.zeros((len(items), dim), dtype=np.float64)
        np.add.at(sums, np.asarray(owner), text_rows)
        has = np.bincount(owner, minlength=len(items)) > 0
        caption[has] = normalize(sums[has])
    return ItemEmbeddings(ids, image, caption)


def _relevant_queries(split: Any) -> tuple[list[str], list[str]]:
    qids = [q for q in split.queries if split.relevance.get(q)]
    if not qids:
        raise XmrError(f"split '{split.name}' has no query with relevant items")
    return qids, [split.queries[q].text for q in qids]


def evaluate_modes(
    query_emb: np.ndarray,
    query_ids: Sequence[str],
    items: ItemEmbeddings,
    relevance: Mapping[str, Any],
    *,
    modes: Sequence[str] = FUSION_MODES,
    weight: float | Fusion = DEFAULT_FUSION_WEIGHT,
    ks: Sequence[int] = (1, 5, 10),
    k: int = 10,
    device: Any = "cpu",
) -> dict[str, float]:
    """Text->item metrics per mode from precomputed embeddings: ``{mode}/t2i/{metric}``; with a
    learned ``weight`` (a Fusion other than weighted), ``fused/image_share`` is its mean gate."""
    from xmr.eval.metrics import hits_from_topk, summarize
    from xmr.eval.ranking import topk_from_embeddings

    depth = min(max(max(ks), k), len(items.ids))
    out: dict[str, float] = {}
    for mode in modes:
        # NaN rows (missing side) rank below every number.
        top, _ = topk_from_embeddings(query_emb, items.mode(mode, weight), depth, device=device)
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
        _check_weight(w)
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
) -> dict[str, float]:
    """Image-only, caption-only and fused text->item retrieval on the same queries of ``split``.

    Args:
        encoder: a bi-encoder (``encode_texts`` / ``encode_images``).
        split: the evaluated split (queries, relevance, items with images and captions).
        weight: the fusion weight ``w``, or a learned :class:`Fusion` (or a directory holding
            one, see :func:`load_fusion`); default: tuned on ``tune_split`` when given, else 0.5.
        tune_split: a validation split to grid-search ``w`` on (maximising ``metric``).
        grid, metric: the search grid and the metric it maximises.
        ks, k: recall cut-offs and the cut-off of mAP/nDCG/P.
        device: where rankings are computed.

    Returns:
        ``{image,caption,fused}/t2i/<metric>``, ``fused/weight`` and, when tuned,
        ``fused/tuned/w=<w>/<metric>`` for each grid point (on the tuning split).
    """
    out: dict[str, float] = {}
    if weight is None and tune_split is not None:
        t_qids, t_texts = _relevant_queries(tune_split)
        t_items = encode_items(encoder, tune_split.items, batch_size)
        t_query = np.asarray(encoder.encode_texts(t_texts, batch_size=batch_size))
        weight, curve = tune_fusion_weight(
            t_query, t_qids, t_items, tune_split.relevance, grid=grid, metric=metric, device=device
        )
        out.update({f"fused/tuned/w={w:g}/{metric}": v for w, v in curve.items()})
    if weight is None:
        weight = DEFAULT_FUSION_WEIGHT
    if isinstance(weight, str | Fusion):
        weight = load_fusion(weight)
        manifest = getattr(encoder, "manifest", None)
        weight.check_model(manifest() if callable(manifest) else None, what="the embeddings")
    else:
        _check_weight(weight)
    qids, texts = _relevant_queries(split)
    items = encode_items(encoder, split.items, batch_size)
    query = np.asarray(encoder.encode_texts(texts, batch_size=batch_size))
    out.update(
        evaluate_modes(
            query, qids, items, split.relevance, weight=weight, ks=ks, k=k, device=device
        )
    )
    # Image, caption, fused; each mode's metrics in display order (a stable sort by mode).
    return dict(sorted(out.items(), key=lambda kv: FUSION_MODES.index(kv[0].split("/")[0])))


def fused_embeddings(emb_dir: Any, weight: float | Fusion | str = DEFAULT_FUSION_WEIGHT) -> Any:
    """Fused item vectors from an ``xmr encode`` directory holding ``images`` and ``captions``;
    ``weight`` is a weight in [0, 1], a :class:`Fusion` or a directory with a learned one.

    ``xmr encode --kinds images,captions`` stores each item's *first* caption, so here
    ``e_cap`` is that caption's embedding (for tianchi's validation data, one caption per item,
    it is the same as :func:`encode_items`' mean). Items with only one side take that side.
    Returns an ``Embeddings`` of kind ``fused`` (ids: the items with an image, then those with
    only a caption) whose manifest records the fusion (``fusion``: kind, formula, the weight or
    the learned fusion's path and digest).
    """
    from xmr.encode import load_embeddings
    from xmr.encode.store import Embeddings

    fusion = load_fusion(weight)
    images = load_embeddings(emb_dir, "images")
    captions = load_embeddings(emb_dir, "captions")
    if images.model != captions.model:
        raise XmrError(f"{emb_dir}: images and captions were encoded by different models")
    fusion.check_model(images.model, what=f"the embeddings in {emb_dir}")
    seen = set(images.ids)
    ids = images.ids + [i for i in captions.ids if i not in seen]
    row = {i: n for n, i in enumerate(ids)}
    dim = images.vectors.shape[1] if len(images) else captions.vectors.shape[1]
    image = np.full((len(ids), dim), np.nan, dtype=np.float32)
    caption = np.full((len(ids), dim), np.nan, dtype=np.float32)
    image[[row[i] for i in images.ids]] = images.vectors
    caption[[row[i] for i in captions.ids]] = captions.vectors
    manifest = {**images.manifest, "fusion": fusion.describe()}
    return Embeddings("fused", ids, fusion.fuse(image, caption), manifest)
