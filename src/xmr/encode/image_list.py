"""Embed a list of image references (not a data set split) the one way xmr embeds images.

Fused items and ITM hard-negative mining hold images as a list, not as a split on disk; they
embed them through :func:`xmr.encode.encode_split` into a temporary directory, so decoding
workers, the encoder's JPEG draft setting and undecodable images behave as in ``xmr encode``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.data.dataset import Item, Split
from xmr.encode.pipeline import encode_split
from xmr.encode.store import load_embeddings, vector_shape


def embed_image_refs(
    encoder: Any,
    refs: Sequence[Any],
    *,
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """Embeddings of ``refs`` (:class:`~xmr.data.images.ImageRef`) in order, and the positions of
    those that could not be decoded (their rows are NaN, so they rank last everywhere).

    Returns ``(N, dim)`` float32, or ``(N, K, dim)`` for a multi-vector encoder.
    """
    shape = vector_shape(int(encoder.embed_dim), int(getattr(encoder, "image_vectors", 1)))
    out = np.full((len(refs), *shape), np.nan, dtype=np.float32)
    if not refs:
        return out, []
    # Positions, not ids, name the temporary split's items: a list may hold an image twice.
    split = Split("images", {str(n): Item(str(n), ref) for n, ref in enumerate(refs)})
    with tempfile.TemporaryDirectory(prefix="xmr-images-") as tmp:
        encode_split(
            encoder, split, tmp, batch_size=batch_size, workers=workers, kinds=("images",),
            progress=progress,
        )  # fmt: skip
        emb = load_embeddings(tmp, "images")
    done = [int(n) for n in emb.ids]
    out[done] = emb.vectors
    ok = set(done)
    return out, [n for n in range(len(refs)) if n not in ok]
