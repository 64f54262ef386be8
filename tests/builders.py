"""Builders of small real inputs that many test files share: random JPEG images, a split over
them, and the tiny random CLIP (transformers' layout) most tests embed with.

``conftest.py`` offers the common ones once per session (``tiny_clip``); call these directly
only for a variant (another seed, another width, images a test then changes).
"""

from __future__ import annotations

import numpy as np

from xmr.data import ImageRef, Item, Query, Split

N_IMAGES = 18


def make_images(root, n=N_IMAGES, size=(40, 56), seed=0):
    """``n`` random-noise JPEGs ``img000.jpg``... under ``root``; returns their paths."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = root / f"img{i:03d}.jpg"
        Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8")).save(path, quality=90)
        paths.append(path)
    return paths


def make_split(paths, extra=()):
    """A test split: item ``it{i:03d}`` per image (caption "photo i", category a/b), five
    queries "a white car number i" without relevance, and the ``extra`` items."""
    items = {
        f"it{i:03d}": Item(
            f"it{i:03d}", ImageRef(path=str(p)), [f"photo {i}"], category="a" if i % 2 else "b"
        )
        for i, p in enumerate(paths)
    }
    for item in extra:
        items[item.id] = item
    queries = {f"q{i}": Query(f"q{i}", f"a white car number {i}") for i in range(5)}
    return Split("test", items, queries)


def tiny_model(path, seed=0, embed_dim=32, texts=None):
    """A tiny random CLIP saved at ``path`` (32x32 images, one layer per tower; ``texts``: words
    its tokenizer knows whole, see ``create_tiny_clip``); returns it."""
    from xmr.models import create_tiny_clip

    return create_tiny_clip(
        path,
        texts=texts,
        embed_dim=embed_dim,
        seed=seed,
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_layers=1,
        text_width=64,
        text_layers=1,
        heads=2,
        context_length=16,
    )
