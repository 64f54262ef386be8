"""Item embeddings for fused items: the image side, the caption side and their fusion.

See :mod:`xmr.fusion` for the formulas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmr.encode import Embeddings, embed_image_refs, load_embeddings
from xmr.encode.multimodal import require_item_encoder
from xmr.errors import XmrError
from xmr.fusion.models import Fusion, load_fusion, per_vector_sides
from xmr.vectors import l2_normalize

FUSION_MODES = ("image", "caption", "fused")
# BLIP-2's own fused item (the Q-Former reading image and caption together,
# ``Blip2Encoder.encode_items``), reported after the three modes when the encoder has one.
MULTIMODAL = "multimodal"
# A learned fusion scored beside the weighted one (``evaluate --fused W --gate DIR``).
GATED = "gated"
SIDE_BY_SIDE = (*FUSION_MODES, GATED, MULTIMODAL)
DEFAULT_FUSION_WEIGHT = 0.5
DEFAULT_WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_TUNE_METRIC = "MeanRecall"


def normalize(v: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (at least 1e-12), as float32 (:func:`xmr.vectors.l2_normalize`)."""
    return l2_normalize(v)


def fuse_embeddings(image_emb: np.ndarray, caption_emb: np.ndarray, weight: float) -> np.ndarray:
    """``normalize(w * image_emb + (1 - w) * caption_emb)`` row by row.

    Rows that are NaN on one side (that side is missing) take the other side alone. A
    multi-vector ``image_emb`` ``(n, K, d)`` fuses each of an item's K vectors with its caption
    and returns ``(n, K, d)`` (scored by max-sim, see :mod:`xmr.vectors`).
    """
    check_weight(weight)
    n = len(image_emb)
    image_emb, caption_emb, k = per_vector_sides(image_emb, caption_emb)
    if k > 1:
        return fuse_embeddings(image_emb, caption_emb, weight).reshape(n, k, -1)
    if image_emb.shape != caption_emb.shape:
        raise XmrError(f"image {image_emb.shape} and caption {caption_emb.shape} shapes differ")
    n = len(image_emb)
    no_image = np.isnan(image_emb.reshape(n, -1)).any(axis=1)
    no_caption = np.isnan(caption_emb.reshape(n, -1)).any(axis=1)
    fused = normalize(
        weight * np.nan_to_num(image_emb) + (1.0 - weight) * np.nan_to_num(caption_emb)
    )
    fused[no_image] = caption_emb[no_image]
    fused[no_caption] = image_emb[no_caption]
    return fused


def check_weight(weight: float) -> None:
    if not 0.0 <= float(weight) <= 1.0:
        raise XmrError(f"fusion weight must be in [0, 1], got {weight}")


@dataclass
class ItemEmbeddings:
    """Image and caption embeddings of a gallery; a missing side is a row of NaN. ``image`` is
    ``(N, K, D)`` for a multi-vector encoder; ``multimodal`` the encoder's own image+caption
    embedding (BLIP-2), None when it has none."""

    ids: list[str]
    image: np.ndarray
    caption: np.ndarray
    failed: list[str] = field(default_factory=list)  # items whose image could not be decoded
    multimodal: np.ndarray | None = None  # the encoder's own image+caption items (BLIP-2)

    @property
    def no_image(self) -> np.ndarray:
        """``(N,)`` bool: the items without an image embedding (NaN rows, any K)."""
        return np.isnan(self.image.reshape(len(self.image), -1)).any(axis=1)

    @property
    def no_caption(self) -> np.ndarray:
        """``(N,)`` bool: the items without a caption embedding."""
        return np.isnan(self.caption.reshape(len(self.caption), -1)).any(axis=1)

    @property
    def image_vectors(self) -> int:
        """K, the image vectors per item (1 for a single-vector encoder)."""
        return int(self.image.shape[1]) if self.image.ndim == 3 else 1

    def mode(self, mode: str, weight: float | Fusion = DEFAULT_FUSION_WEIGHT) -> np.ndarray:
        """The item embeddings for ``mode`` ("image", "caption", "fused" with ``weight``: a
        weight in [0, 1] or a :class:`Fusion`, "gated" with a learned :class:`Fusion`, or
        "multimodal")."""
        if mode == "image":
            return self.image
        if mode == "caption":
            return self.caption
        if mode == GATED:
            if not isinstance(weight, Fusion):
                raise XmrError("the gated mode needs a learned fusion (xmr train --fused)")
            return weight.fuse(self.image, self.caption)
        if mode == "fused":
            if isinstance(weight, Fusion):
                return weight.fuse(self.image, self.caption)
            return fuse_embeddings(self.image, self.caption, weight)
        if mode == MULTIMODAL:
            if self.multimodal is None:
                raise XmrError(
                    "the multimodal item embedding needs an encoder that reads image and "
                    "caption together (a BLIP-2 model: hf:<Blip2ForImageTextRetrieval dir or id>)"
                )
            return self.multimodal
        raise XmrError(f"unknown fusion mode '{mode}' (choose from {', '.join(SIDE_BY_SIDE)})")


def encode_items(
    encoder: Any,
    items: Mapping[str, Any] | Sequence[Any],
    batch_size: int | None = None,
    *,
    workers: int = 0,
    progress: bool = False,
    multimodal: bool = False,
) -> ItemEmbeddings:
    """Encode each item's image and captions (see the module docstring for the caption mean);
    with ``multimodal``, also the encoder's own image+caption embedding
    (:func:`multimodal_embeddings`).

    The images are embedded the one way every xmr job embeds images,
    :func:`xmr.encode.encode_split` (into a temporary directory): ``workers`` decoding
    processes, the encoder's JPEG draft setting, and an image that cannot be decoded is
    reported, not fatal: its item gets a NaN image row (so its fused vector is its caption's)
    and is listed in ``failed``. The captions are texts, encoded with ``encode_texts``.
    """
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
    dim = int(encoder.embed_dim)
    per_image = int(getattr(encoder, "image_vectors", 1))
    # (n, K, dim) for a multi-vector encoder (BLIP-2): fused per vector, scored by max-sim
    shape = (per_image, dim) if per_image > 1 else (dim,)
    image = np.full((len(items), *shape), np.nan, dtype=np.float32)
    failed: list[str] = []
    if with_image:
        failed = _encode_images(encoder, items, with_image, image, batch_size, workers, progress)
    caption = np.full((len(items), dim), np.nan, dtype=np.float32)
    if texts:
        text_rows = np.asarray(encoder.encode_texts(texts, batch_size=batch_size), dtype=np.float32)
        sums = np.zeros((len(items), dim), dtype=np.float64)
        np.add.at(sums, np.asarray(owner), text_rows)
        has = np.bincount(owner, minlength=len(items)) > 0
        caption[has] = normalize(sums[has])
    fused = None
    if multimodal:
        fused = multimodal_embeddings(encoder, items, image, caption, batch_size, failed=failed)
    return ItemEmbeddings(ids, image, caption, failed, multimodal=fused)


def _encode_images(encoder, items, with_image, image, batch_size, workers, progress) -> list[str]:
    """Fill ``image``'s rows of ``with_image`` (:func:`xmr.encode.embed_image_refs`); the ids
    that failed."""
    rows, failed = embed_image_refs(
        encoder, [items[n].image for n in with_image], batch_size=batch_size, workers=workers,
        progress=progress,
    )  # fmt: skip
    image[with_image] = rows
    return [str(items[with_image[n]].id) for n in failed]


def multimodal_embeddings(
    encoder: Any,
    items: Sequence[Any],
    image: np.ndarray,
    caption: np.ndarray,
    batch_size: int | None = None,
    *,
    failed: Sequence[str] = (),
) -> np.ndarray:
    """The encoder's ``encode_items(images, captions)`` for every item with an image and a
    caption (its *first* caption: seed 001's validation items have one). An item lacking one
    side takes the other alone, as the weighted fusion does: no caption, its image embedding
    (the Q-Former without text is exactly the image path); no image, its caption embedding
    (repeated over the K vectors). An item of ``failed`` (its image could not be decoded, see
    :func:`encode_items`) counts as one without an image, as in the weighted fusion and in an
    index of multimodal items (where such an item is absent from the multimodal kind)."""
    encode = require_item_encoder(encoder)
    out = image.copy()
    bad = {str(i) for i in failed}
    has_image = [it.image is not None and not (bad and str(it.id) in bad) for it in items]
    both = [i for i, it in enumerate(items) if has_image[i] and it.captions]
    if both:
        rows = encode(
            [items[i].image for i in both],
            [items[i].captions[0] for i in both],
            batch_size=batch_size,
        )
        out[both] = np.asarray(rows, dtype=np.float32)
    no_image = [i for i in range(len(items)) if not has_image[i]]
    if no_image:
        side = caption[no_image]
        out[no_image] = side[:, None, :] if out.ndim == 3 else side
    return out


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
    fusion = load_fusion(weight)
    images = load_embeddings(emb_dir, "images")
    captions = load_embeddings(emb_dir, "captions")
    if images.model != captions.model:
        raise XmrError(f"{emb_dir}: images and captions were encoded by different models")
    fusion.check_model(images.model, what=f"the embeddings in {emb_dir}")
    seen = set(images.ids)
    ids = images.ids + [i for i in captions.ids if i not in seen]
    row = {i: n for n, i in enumerate(ids)}
    dim = images.vectors.shape[-1] if len(images) else captions.vectors.shape[-1]
    # (n, K, dim) for a multi-vector encoder: each vector is fused with the caption
    image = np.full((len(ids), *images.vectors.shape[1:]), np.nan, dtype=np.float32)
    caption = np.full((len(ids), dim), np.nan, dtype=np.float32)
    image[[row[i] for i in images.ids]] = images.vectors
    caption[[row[i] for i in captions.ids]] = captions.vectors
    manifest = {**images.manifest, "fusion": fusion.describe()}
    return Embeddings("fused", ids, fusion.fuse(image, caption), manifest)


def multimodal_items(emb_dir: Any) -> Any:
    """BLIP-2 multimodal items from an ``xmr encode --kinds multimodal`` directory, as ``xmr
    evaluate --fused blip2`` ranks them: every item with an image is its ``multimodal`` row
    (image + first caption; an item without a caption, its image vectors), and an item with a
    caption but no image, when the directory also holds ``captions``, that caption's vector
    repeated over the K vectors (without ``captions`` such items are left out, and counted).

    Items whose image could not be decoded are in neither (the directory's ``failed.jsonl``).
    Returns an ``Embeddings`` of kind ``multimodal`` whose manifest records the fusion
    (``fusion``: ``{"kind": "multimodal", ...}``, with the counts of each sort of item)."""
    from xmr.encode import load_metadata, read_manifest
    from xmr.encode.multimodal import DESCRIPTION, KIND

    kinds = read_manifest(emb_dir).get("kinds") or {}
    if KIND not in kinds:
        raise XmrError(
            f"{emb_dir}: no {KIND} embeddings (encoded: {', '.join(kinds) or 'none'}); encode "
            f"them with a BLIP-2 model and kinds={KIND}"
        )
    items = load_embeddings(emb_dir, KIND)
    meta = load_metadata(emb_dir, KIND)
    have = set(items.ids)
    caption_only = [
        i
        for i, rec in meta.items()
        if i not in have and not rec.get("image") and rec.get("captions")
    ]
    ids, vectors, used = list(items.ids), items.vectors, []
    if caption_only and "captions" in kinds:
        captions = load_embeddings(emb_dir, "captions")
        if captions.model != items.model:
            raise XmrError(
                f"{emb_dir}: multimodal items and captions were encoded by different models"
            )
        row = {i: n for n, i in enumerate(captions.ids)}
        used = [i for i in caption_only if i in row]
        if used:
            side = captions.vectors[[row[i] for i in used]]
            k = vectors.shape[1] if vectors.ndim == 3 else 1
            side = np.repeat(side[:, None, :], k, axis=1) if vectors.ndim == 3 else side
            ids, vectors = ids + used, np.concatenate([vectors, side.astype(np.float32)])
    fusion = {
        "kind": KIND,
        "formula": DESCRIPTION + "; an item with a caption but no image: its caption's vector "
        "repeated over the K vectors (when captions were encoded)",
        "items": len(items),
        "image_only": int(kinds[KIND].get("image_only", 0)),
        "caption_only": len(used),
        "caption_only_left_out": len(caption_only) - len(used),
    }
    return Embeddings(KIND, ids, vectors, {**items.manifest, "fusion": fusion})
