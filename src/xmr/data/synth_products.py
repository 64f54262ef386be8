"""Drawing for the synthetic e-commerce data set: one product on a plain backdrop.

A product's *type* is its silhouette, its *colour* the flat fill of its body (a ``PALETTE``
colour) and its *pattern* (stripes, dots, checks, stars or none) is drawn over the body in a
contrasting ink. Everything else varies per image and is never an attribute: backdrop, position,
scale, mirror, lighting and noise. The scene code (``Canvas``, ``Frame``, backdrop, colour
jitter, down-sampling and noise) is the traffic generator's, :mod:`xmr.data.synth_render`.

``render_product(..., with_masks=True)`` also returns the masks ``body`` (pixels showing the body
colour) and ``pattern`` (pixels showing the pattern ink), which the tests use to check that the
labelled colour and pattern are really in the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from xmr.data.synth_render import (
    GLASS,
    PALETTE,
    STRAP,
    SUPERSAMPLE,
    Canvas,
    Frame,
    background,
    finish_scene,
    jitter,
)

PRODUCT_TYPES: tuple[str, ...] = (
    "t-shirt",
    "mug",
    "cushion",
    "phone case",
    "bottle",
    "handbag",
    "cap",
    "vase",
)
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checked", "star")

LID = (120, 120, 125)
WHITE_INK = (245, 245, 245)
BLACK_INK = (20, 20, 20)

# Height / width of each type's bounding box.
_ASPECT = {
    "t-shirt": 0.95,
    "mug": 0.85,
    "cushion": 1.0,
    "phone case": 1.8,
    "bottle": 2.2,
    "handbag": 0.85,
    "cap": 0.62,
    "vase": 1.4,
}


@dataclass(frozen=True)
class ProductLook:
    """What a product image shows (its theme, a text-only attribute, is not drawn)."""

    ptype: str
    colour: str
    pattern: str


def ink_for(colour: str) -> tuple[int, int, int]:
    """The pattern ink: white on dark bodies, black on light ones (always far from the body)."""
    r, g, b = PALETTE[colour]
    return BLACK_INK if 0.299 * r + 0.587 * g + 0.114 * b > 140 else WHITE_INK


def _dome(f: Frame, n: int = 12) -> list[tuple[float, float]]:
    """The crown of a cap: a half ellipse over the box's lower edge at v=0.85."""
    angles = np.linspace(np.pi, 2 * np.pi, n)
    return f.pts([(0.42 + 0.4 * np.cos(a), 0.85 + 0.85 * np.sin(a)) for a in angles])


def _draw_body(c: Canvas, f: Frame, ptype: str, body) -> None:
    """The product's silhouette in ``body`` (region ``body``), then details in neutral colours
    that cover it (and so leave the body mask)."""
    if ptype == "t-shirt":
        pts = [(0.36, 0.02), (0.64, 0.02), (0.86, 0.1), (1.0, 0.32), (0.84, 0.42), (0.8, 0.36),
               (0.8, 1.0), (0.2, 1.0), (0.2, 0.36), (0.16, 0.42), (0.0, 0.32), (0.14, 0.1)]  # fmt: skip
        c.polygon(f.pts(pts), body, "body")
        c.line(f.pts([(0.38, 0.03), (0.5, 0.1), (0.62, 0.03)]), LID, width=f.h * 0.025)
    elif ptype == "mug":
        c.rectangle(f.box(0.0, 0.08, 0.74, 1.0), body, "body")
        for box in ((0.7, 0.25, 0.98, 0.35), (0.88, 0.25, 0.98, 0.8), (0.7, 0.7, 0.98, 0.8)):
            c.rectangle(f.box(*box), body, "body")
        c.rectangle(f.box(0.0, 0.04, 0.74, 0.1), LID)  # the rim
    elif ptype == "cushion":
        pts = [(0.0, 0.0), (0.5, 0.08), (1.0, 0.0), (0.92, 0.5), (1.0, 1.0), (0.5, 0.92),
               (0.0, 1.0), (0.08, 0.5)]  # fmt: skip
        c.polygon(f.pts(pts), body, "body")
    elif ptype == "phone case":
        pts = [(0.1, 0.0), (0.9, 0.0), (1.0, 0.05), (1.0, 0.95), (0.9, 1.0), (0.1, 1.0),
               (0.0, 0.95), (0.0, 0.05)]  # fmt: skip
        c.polygon(f.pts(pts), body, "body")
        c.rectangle(f.box(0.1, 0.04, 0.46, 0.2), GLASS)  # the camera cut-out
    elif ptype == "bottle":
        c.rectangle(f.box(0.08, 0.28, 0.92, 1.0), body, "body")
        c.polygon(f.pts([(0.08, 0.3), (0.3, 0.14), (0.7, 0.14), (0.92, 0.3)]), body, "body")
        c.rectangle(f.box(0.3, 0.0, 0.7, 0.15), LID)
    elif ptype == "handbag":
        c.polygon(f.pts([(0.06, 0.38), (0.94, 0.38), (1.0, 1.0), (0.0, 1.0)]), body, "body")
        c.line(f.pts([(0.25, 0.4), (0.33, 0.04), (0.67, 0.04), (0.75, 0.4)]), STRAP,
               width=f.h * 0.06)  # fmt: skip
    elif ptype == "cap":
        c.polygon(_dome(f), body, "body")
        c.polygon(f.pts([(0.6, 0.72), (1.0, 0.8), (1.0, 0.92), (0.6, 0.98)]), body, "body")
        c.ellipse(f.circle(0.42, 0.05, 0.05), LID)  # the button on top
    elif ptype == "vase":
        pts = [(0.34, 0.0), (0.66, 0.0), (0.62, 0.22), (0.96, 0.55), (0.76, 1.0), (0.24, 1.0),
               (0.04, 0.55), (0.38, 0.22)]  # fmt: skip
        c.polygon(f.pts(pts), body, "body")
    else:
        raise ValueError(f"unknown product type {ptype!r}")


def _pattern_mask(pattern: str, f: Frame, size: int) -> Image.Image:
    """The pattern as a mask over the product's box (255 = ink), periods relative to the box."""
    mask = Image.new("L", (size, size), 0)
    if pattern == "plain":
        return mask
    d = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = f.box(0.0, 0.0, 1.0, 1.0)
    period = max(4.0, min(x1 - x0, y1 - y0) / 4)
    if pattern == "striped":
        y = y0 + period * 0.25
        while y < y1:
            d.rectangle([x0, y, x1, y + period * 0.45], fill=255)
            y += period
    elif pattern == "checked":
        y, row = y0, 0
        while y < y1:
            x = x0 + (period / 2 if row % 2 else 0.0)
            while x < x1:
                d.rectangle([x, y, x + period / 2, y + period / 2], fill=255)
                x += period
            y, row = y + period / 2, row + 1
    elif pattern in ("dotted", "star"):
        r = period * (0.22 if pattern == "dotted" else 0.34)
        y, row = y0 + period / 2, 0
        while y < y1:
            x = x0 + period / 2 + (period / 2 if row % 2 else 0.0)
            while x < x1:
                if pattern == "dotted":
                    d.ellipse([x - r, y - r, x + r, y + r], fill=255)
                else:
                    a = np.pi / 2 + np.arange(10) * np.pi / 5
                    rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
                    d.polygon([(x + q * np.cos(t), y - q * np.sin(t)) for q, t in zip(rad, a, strict=True)],
                              fill=255)  # fmt: skip
                x += period
            y, row = y + period, row + 1
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return mask


def render_product(
    look: ProductLook, image_size: int, rng: np.random.Generator, *, with_masks: bool = False
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Draw one product on a random backdrop; return the RGB image (``image_size`` square) and,
    with ``with_masks``, boolean masks of the pixels fully inside ``body`` and ``pattern``."""
    size = image_size * SUPERSAMPLE
    canvas = Canvas(background(size, rng), ("body",))
    aspect = _ASPECT[look.ptype]
    h = size * rng.uniform(0.62, 0.88)
    w = h / aspect
    if w > size * 0.9:
        w, h = size * 0.9, size * 0.9 * aspect
    x0 = rng.uniform(0.04 * size, max(0.04 * size, size * 0.96 - w))
    y0 = rng.uniform(0.04 * size, max(0.04 * size, size * 0.96 - h))
    f = Frame(x0, y0, w, h, mirror=bool(rng.random() < 0.5))
    _draw_body(canvas, f, look.ptype, jitter(PALETTE[look.colour], rng))
    body = canvas.masks["body"]
    ink = ImageChops.multiply(body, _pattern_mask(look.pattern, f, size))
    canvas.image.paste(jitter(ink_for(look.colour), rng), mask=ink)
    masks = {"body": ImageChops.subtract(body, ink), "pattern": ink} if with_masks else {}
    return finish_scene(canvas.image, masks, image_size, rng)
