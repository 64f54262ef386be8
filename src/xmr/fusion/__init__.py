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

:func:`xmr.eval.fused.tune_fusion_weight` picks ``w`` by grid search on a validation split;
:func:`xmr.eval.fused.evaluate_fused` reports the three modes side by side on the same queries, with keys
``image/t2i/<metric>``, ``caption/t2i/<metric>``, ``fused/t2i/<metric>`` and ``fused/weight``.

The weighted sum is the ``weighted`` kind of a small registry of fusions
(:mod:`xmr.fusion.models`); ``gated`` is a gate learned by ``xmr train --fused``
(:mod:`xmr.train.fusion`). A BLIP-2 encoder brings a fourth, ``multimodal``: its Q-Former reads
the image and the item's first caption together (``Blip2Encoder.encode_items``, the seed's fused
item; see :mod:`xmr.models.blip_encoders`), (K, D) per item, scored by max-sim like its images.
A learned fusion can also be scored as a column of its own, ``gated``, beside the weighted
``fused`` one (``evaluate_fused(..., gate=DIR)``), so one run gives the whole table: image,
caption, weighted, gated and multimodal.
Wherever a weight is taken, a :class:`Fusion` (or what
:func:`load_fusion` reads: a weight or a directory) may be given instead.
"""

from xmr.fusion.embeddings import (
    DEFAULT_FUSION_WEIGHT,
    DEFAULT_TUNE_METRIC,
    DEFAULT_WEIGHT_GRID,
    FUSION_MODES,
    GATED,
    MULTIMODAL,
    SIDE_BY_SIDE,
    ItemEmbeddings,
    check_weight,
    encode_items,
    fuse_embeddings,
    fused_embeddings,
    multimodal_embeddings,
    multimodal_items,
    normalize,
)
from xmr.fusion.models import (
    Fusion,
    GatedFusion,
    WeightedFusion,
    create_fusion,
    fusion_digest,
    list_fusions,
    load_fusion,
    register_fusion,
)

__all__ = [
    "DEFAULT_FUSION_WEIGHT",
    "DEFAULT_TUNE_METRIC",
    "DEFAULT_WEIGHT_GRID",
    "FUSION_MODES",
    "GATED",
    "MULTIMODAL",
    "SIDE_BY_SIDE",
    "Fusion",
    "GatedFusion",
    "ItemEmbeddings",
    "WeightedFusion",
    "check_weight",
    "create_fusion",
    "encode_items",
    "fuse_embeddings",
    "fused_embeddings",
    "fusion_digest",
    "list_fusions",
    "multimodal_embeddings",
    "multimodal_items",
    "load_fusion",
    "normalize",
    "register_fusion",
]
