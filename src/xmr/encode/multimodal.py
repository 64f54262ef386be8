"""The ``multimodal`` encode kind: one (K, dim) row per item with an image, the encoder's own
image+caption embedding (BLIP-2's Q-Former reading the image and the item's *first* caption,
``encode_items``); an item with an image but no caption gets its image vectors (the Q-Former
without text is exactly the image path), as :func:`xmr.fusion.multimodal_embeddings` does.

Its inputs are ``(ImageRef, caption or None)`` pairs; the caption is part of the input hash, so
editing a caption invalidates the shard that holds it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.errors import XmrError

KIND = "multimodal"
# What a multimodal row is, written into the kind's manifest entry.
DESCRIPTION = (
    "encode_items(image, first caption): the encoder reading image and caption together; "
    "an item with an image but no caption: its image vectors (encode_images)"
)


def require_item_encoder(encoder: Any) -> Any:
    """The encoder's ``encode_items``, or a clear error when it has none."""
    encode = getattr(encoder, "encode_items", None)
    if not callable(encode):
        raise XmrError(
            f"{type(encoder).__name__} has no multimodal item embedding (encode_items): it needs "
            "a model that reads image and caption together, e.g. BLIP-2 "
            "(hf:<Blip2ForImageTextRetrieval dir or hub id>)"
        )
    return encode


def multimodal_inputs(split: Any) -> tuple[list[str], list[tuple[Any, str | None]]]:
    """(ids, (image, first caption or None)) of every item of ``split`` with an image."""
    pairs = [
        (str(i.id), (i.image, i.captions[0] if i.captions else None))
        for i in split.items.values()
        if i.image is not None
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def encode_multimodal_batch(
    encoder: Any, pixels: Any, captions: Sequence[str | None]
) -> np.ndarray:
    """(m, K, dim) rows of a decoded batch (``pixels``: the uint8 crops of ``encode_images``):
    ``encode_items`` for the rows with a caption, ``encode_images`` for the others."""
    encode = require_item_encoder(encoder)
    if all(c is not None for c in captions):  # the usual batch: no row selection, no copy
        return np.asarray(encode(pixels, list(captions)), dtype=np.float32)
    with_caption = [n for n, c in enumerate(captions) if c is not None]
    without = [n for n, c in enumerate(captions) if c is None]
    out: np.ndarray | None = None
    for rows, run in (
        (with_caption, lambda sel: encode(pixels[sel], [captions[n] for n in sel])),
        (without, lambda sel: encoder.encode_images(pixels[sel])),
    ):
        if not rows:
            continue
        vectors = np.asarray(run(rows), dtype=np.float32)
        if out is None:
            out = np.zeros((len(captions), *vectors.shape[1:]), np.float32)
        out[rows] = vectors
    if out is None:
        raise XmrError("encode_multimodal_batch: an empty batch")
    return out
