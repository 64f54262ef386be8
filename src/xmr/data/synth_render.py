"""Drawing for the synthetic traffic data set: vehicles and pedestrians on street-like backgrounds.

Everything an attribute names is a large, flat region of a palette colour (a vehicle's body, a
pedestrian's upper and lower clothing); everything else varies per image and is never an attribute
(background gradient, clutter, road, noise, position, scale, mirror, skin and hair tone, a vehicle's
viewpoint). Scenes are drawn at twice the output size and box-filtered down, which anti-aliases
the edges without per-pixel Python work.

Renderers can also return masks of the visible attribute regions (``with_masks=True``), which the
tests use to check that the labelled colour is really in the pixels.

(One module, a little over 400 lines, on purpose: the scene, vehicle and pedestrian drawing share
one canvas and frame geometry; split, each half would import the other's private helpers.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Well-separated colours; a data set uses the first ``n_colours``. Backgrounds are muted greys
# (70..185 with a small tint), so none of these can be mistaken for the background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "red": (215, 30, 30),
    "blue": (30, 75, 215),
    "yellow": (245, 220, 30),
    "green": (30, 160, 55),
    "orange": (250, 130, 20),
    "purple": (135, 40, 175),
    "pink": (250, 140, 200),
    "cyan": (40, 205, 225),
}
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)

VEHICLE_TYPES: tuple[str, ...] = ("sedan", "SUV", "truck", "bus", "van")
VEHICLE_VIEWS: tuple[str, ...] = ("side", "front", "back")
ORIENTATIONS: tuple[str, ...] = ("front", "side", "back")
CARRY: tuple[str, ...] = ("none", "backpack", "handbag")

GLASS = (95, 115, 135)
TYRE = (30, 30, 32)
HEADLIGHT = (235, 235, 205)
TAILLIGHT = (170, 25, 35)
GRILLE = (55, 55, 60)
PLATE = (215, 215, 200)
HAT = (190, 165, 115)
BAG = (125, 90, 55)
STRAP = (65, 55, 45)
SHOE = (45, 40, 38)
SKIN_TONES = ((235, 200, 170), (210, 165, 130), (170, 120, 85), (120, 80, 55))
HAIR_TONES = ((35, 28, 22), (75, 50, 30), (120, 85, 45), (55, 55, 55))

SUPERSAMPLE = 2


@dataclass(frozen=True)
class VehicleLook:
    colour: str
    vtype: str


@dataclass(frozen=True)
class PedestrianLook:
    female: bool
    hat: bool
    carry: str
    short_sleeve: bool
    orientation: str
    upper: str
    lower: str


class Canvas:
    """An ImageDraw that can also keep masks of named regions: drawing a shape marks its region
    and unmarks every other region, so a mask is what stays visible in the end."""

    def __init__(self, image: Image.Image, regions: tuple[str, ...] = ()) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.masks = {r: Image.new("L", image.size, 0) for r in regions}
        self._mask_draws = {r: ImageDraw.Draw(m) for r, m in self.masks.items()}

    def _shape(self, method: str, geom, fill, region: str | None, **kw) -> None:
        getattr(self.draw, method)(geom, fill=fill, **kw)
        for name, d in self._mask_draws.items():
            getattr(d, method)(geom, fill=255 if name == region else 0, **kw)

    def polygon(self, pts, fill, region: str | None = None) -> None:
        self._shape("polygon", pts, fill, region)

    def ellipse(self, box, fill, region: str | None = None) -> None:
        self._shape("ellipse", box, fill, region)

    def rectangle(self, box, fill, region: str | None = None) -> None:
        self._shape("rectangle", box, fill, region)

    def chord(self, box, start: float, end: float, fill) -> None:
        self.draw.chord(box, start, end, fill=fill)
        for d in self._mask_draws.values():
            d.chord(box, start, end, fill=0)

    def line(self, pts, fill, width: int) -> None:
        self._shape("line", pts, fill, None, width=max(1, int(width)))


class Frame:
    """Maps local coordinates (u across, v down; both 0..1 of the box) to canvas pixels,
    optionally mirrored left-right."""

    def __init__(self, x0: float, y0: float, w: float, h: float, mirror: bool = False) -> None:
        self.x0, self.y0, self.w, self.h, self.mirror = x0, y0, w, h, mirror

    def pt(self, u: float, v: float) -> tuple[float, float]:
        if self.mirror:
            u = 1.0 - u
        return (self.x0 + u * self.w, self.y0 + v * self.h)

    def pts(self, uvs) -> list[tuple[float, float]]:
        return [self.pt(u, v) for u, v in uvs]

    def box(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        (xa, ya), (xb, yb) = self.pt(u0, v0), self.pt(u1, v1)
        return [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)]

    def circle(self, u: float, v: float, r_h: float) -> list[float]:
        """A circle of radius ``r_h`` box heights."""
        x, y = self.pt(u, v)
        r = r_h * self.h
        return [x - r, y - r, x + r, y + r]

    def rect(self, u0: float, v0: float, u1: float, v1: float) -> list[tuple[float, float]]:
        return self.pts([(u0, v0), (u1, v0), (u1, v1), (u0, v1)])


def jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """Lighting: a small brightness change and per-channel wobble that keep the colour's name."""
    scale = rng.uniform(0.9, 1.08)
    c = np.clip(np.asarray(rgb, dtype=float) * scale + rng.normal(0.0, 5.0, 3), 0, 255)
    return tuple(int(x) for x in c)


def _muted(rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.uniform(70, 185) + rng.normal(0.0, 15.0, 3), 55, 200)


def background(size: int, rng: np.random.Generator) -> Image.Image:
    """A muted two-colour gradient in a random direction (computed on a small grid, then
    bilinearly enlarged: a linear ramp survives that exactly and costs far less)."""
    c1, c2 = _muted(rng), _muted(rng)
    angle = rng.uniform(0, 2 * np.pi)
    axis = np.linspace(-1.0, 1.0, 16)
    t = np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None]
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    arr = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    small = Image.fromarray(arr.astype(np.uint8), "RGB")
    return small.resize((size, size), Image.Resampling.BILINEAR)


def _clutter(canvas: Canvas, size: int, ground: float, rng: np.random.Generator) -> None:
    """Distractors that are never attributes: buildings/poles above the ground, a road with lane
    marks below it."""
    for _ in range(int(rng.integers(0, 4))):
        w = rng.uniform(0.08, 0.35) * size
        x = rng.uniform(-0.1, 1.0) * size
        top = rng.uniform(0.0, 0.5) * ground
        canvas.rectangle([x, top, x + w, ground], tuple(int(c) for c in _muted(rng)))
    if rng.random() < 0.7:
        grey = int(rng.uniform(60, 120))
        canvas.rectangle([0, ground, size, size], (grey, grey, grey + int(rng.integers(0, 8))))
        lane = (200, 200, 190) if rng.random() < 0.5 else (200, 180, 95)
        y = ground + rng.uniform(0.3, 0.8) * (size - ground)
        dash, gap = rng.uniform(0.08, 0.2) * size, rng.uniform(0.05, 0.15) * size
        x = -rng.uniform(0, dash + gap)
        while x < size:
            canvas.line([(x, y), (x + dash, y)], lane, width=size * 0.02)
            x += dash + gap


# --- vehicles --------------------------------------------------------------------------------

# Side-view aspect (height / length) and front-view (width / scene, height / width) per type.
_SIDE_ASPECT = {"sedan": 0.42, "SUV": 0.55, "truck": 0.6, "bus": 0.5, "van": 0.6}
_FRONT_SHAPE = {
    "sedan": (0.78, 0.62),
    "SUV": (0.76, 0.8),
    "truck": (0.72, 1.05),
    "bus": (0.72, 1.15),
    "van": (0.72, 0.95),
}


def _wheels_side(c: Canvas, f: Frame, us, v: float, r: float) -> None:
    for u in us:
        c.ellipse(f.circle(u, v, r), TYRE)
        c.ellipse(f.circle(u, v, r * 0.45), (150, 150, 150))


def _vehicle_side(c: Canvas, f: Frame, vtype: str, body) -> None:
    if vtype == "sedan":
        c.polygon(f.pts([(0.24, 0.46), (0.36, 0.06), (0.68, 0.06), (0.82, 0.46)]), body, "body")
        c.polygon(
            f.pts([(0.0, 0.5), (0.05, 0.42), (0.95, 0.44), (1.0, 0.52), (1.0, 0.8), (0.0, 0.8)]),
            body,
            "body",
        )
        c.polygon(f.pts([(0.3, 0.43), (0.39, 0.13), (0.51, 0.13), (0.51, 0.43)]), GLASS)
        c.polygon(f.pts([(0.54, 0.43), (0.54, 0.13), (0.66, 0.13), (0.76, 0.43)]), GLASS)
        c.ellipse(f.box(0.94, 0.5, 1.0, 0.58), HEADLIGHT)
        _wheels_side(c, f, (0.2, 0.8), 0.8, 0.17)
    elif vtype == "SUV":
        c.polygon(
            f.pts([(0.0, 0.08), (0.74, 0.06), (0.9, 0.36), (1.0, 0.4), (1.0, 0.8), (0.0, 0.8)]),
            body,
            "body",
        )
        c.polygon(f.pts([(0.05, 0.14), (0.3, 0.14), (0.3, 0.36), (0.05, 0.36)]), GLASS)
        c.polygon(f.pts([(0.34, 0.14), (0.55, 0.14), (0.55, 0.36), (0.34, 0.36)]), GLASS)
        c.polygon(f.pts([(0.59, 0.14), (0.72, 0.13), (0.84, 0.36), (0.59, 0.36)]), GLASS)
        c.ellipse(f.box(0.94, 0.44, 1.0, 0.54), HEADLIGHT)
        _wheels_side(c, f, (0.18, 0.8), 0.8, 0.17)
    elif vtype == "truck":
        c.rectangle(f.box(0.0, 0.0, 0.68, 0.74), body, "body")
        c.polygon(
            f.pts([(0.71, 0.18), (0.92, 0.18), (1.0, 0.45), (1.0, 0.84), (0.71, 0.84)]),
            body,
            "body",
        )
        c.rectangle(f.box(0.0, 0.74, 0.71, 0.8), GRILLE)
        c.polygon(f.pts([(0.76, 0.23), (0.9, 0.23), (0.96, 0.44), (0.76, 0.44)]), GLASS)
        c.ellipse(f.box(0.95, 0.58, 1.0, 0.68), HEADLIGHT)
        _wheels_side(c, f, (0.14, 0.32, 0.85), 0.84, 0.14)
    elif vtype == "bus":
        c.rectangle(f.box(0.0, 0.02, 1.0, 0.86), body, "body")
        for i in range(5):
            u0 = 0.04 + i * 0.17
            c.rectangle(f.box(u0, 0.14, u0 + 0.14, 0.44), GLASS)
        c.rectangle(f.box(0.89, 0.14, 0.97, 0.74), GLASS)
        c.ellipse(f.box(0.95, 0.72, 1.0, 0.8), HEADLIGHT)
        _wheels_side(c, f, (0.18, 0.8), 0.86, 0.13)
    elif vtype == "van":
        c.polygon(
            f.pts([(0.0, 0.04), (0.72, 0.04), (0.97, 0.42), (1.0, 0.5), (1.0, 0.82), (0.0, 0.82)]),
            body,
            "body",
        )
        c.polygon(f.pts([(0.75, 0.1), (0.92, 0.4), (0.75, 0.4)]), GLASS)
        c.rectangle(f.box(0.52, 0.1, 0.71, 0.4), GLASS)
        c.line(f.pts([(0.48, 0.1), (0.48, 0.78)]), GRILLE, width=f.h * 0.02)
        c.ellipse(f.box(0.95, 0.52, 1.0, 0.62), HEADLIGHT)
        _wheels_side(c, f, (0.18, 0.82), 0.82, 0.15)
    else:
        raise ValueError(f"unknown vehicle type {vtype!r}")


def _vehicle_end(c: Canvas, f: Frame, vtype: str, body, front: bool) -> None:
    """Front or back view: silhouette per type, windscreen or rear window, lights, plate."""
    for u0 in (0.06, 0.79):
        c.rectangle(f.box(u0, 0.84, u0 + 0.15, 1.0), TYRE)
    lamp = HEADLIGHT if front else TAILLIGHT
    if vtype == "sedan":
        c.polygon(f.pts([(0.16, 0.5), (0.26, 0.06), (0.74, 0.06), (0.84, 0.5)]), body, "body")
        c.rectangle(f.box(0.0, 0.48, 1.0, 0.9), body, "body")
        win = [(0.22, 0.46), (0.3, 0.13), (0.7, 0.13), (0.78, 0.46)]
        lamp_v = (0.56, 0.68)
    elif vtype == "SUV":
        c.polygon(f.pts([(0.04, 0.06), (0.96, 0.06), (1.0, 0.9), (0.0, 0.9)]), body, "body")
        win = [(0.1, 0.45), (0.13, 0.13), (0.87, 0.13), (0.9, 0.45)]
        lamp_v = (0.55, 0.65)
    elif vtype == "truck":
        c.rectangle(f.box(0.0, 0.0, 1.0, 0.3), body, "body")
        c.rectangle(f.box(0.1, 0.26, 0.9, 0.9), body, "body")
        win = [(0.16, 0.56), (0.16, 0.33), (0.84, 0.33), (0.84, 0.56)]
        lamp_v = (0.68, 0.76)
    elif vtype == "bus":
        c.rectangle(f.box(0.0, 0.0, 1.0, 0.92), body, "body")
        c.rectangle(f.box(0.1, 0.04, 0.9, 0.11), GRILLE)
        win = [(0.06, 0.6), (0.06, 0.15), (0.94, 0.15), (0.94, 0.6)]
        if not front:
            win = [(0.15, 0.4), (0.15, 0.18), (0.85, 0.18), (0.85, 0.4)]
        lamp_v = (0.74, 0.82)
    elif vtype == "van":
        c.polygon(f.pts([(0.06, 0.0), (0.94, 0.0), (1.0, 0.9), (0.0, 0.9)]), body, "body")
        win = [(0.09, 0.5), (0.12, 0.08), (0.88, 0.08), (0.91, 0.5)]
        lamp_v = (0.6, 0.7)
    else:
        raise ValueError(f"unknown vehicle type {vtype!r}")
    if not front and vtype != "bus":
        # A rear window is smaller than a windscreen: shrink it towards its centre.
        cu = sum(u for u, _ in win) / 4
        cv = sum(v for _, v in win) / 4
        win = [(cu + (u - cu) * 0.8, cv + (v - cv) * 0.7) for u, v in win]
    c.polygon(f.pts(win), GLASS)
    c.ellipse(f.box(0.04, lamp_v[0], 0.2, lamp_v[1]), lamp)
    c.ellipse(f.box(0.8, lamp_v[0], 0.96, lamp_v[1]), lamp)
    if front:
        c.rectangle(f.box(0.32, lamp_v[0], 0.68, lamp_v[1] + 0.04), GRILLE)
    c.rectangle(f.box(0.4, lamp_v[1] + 0.06, 0.6, lamp_v[1] + 0.12), PLATE)


def draw_vehicle(c: Canvas, look: VehicleLook, size: int, rng: np.random.Generator) -> None:
    body = jitter(PALETTE[look.colour], rng)
    view = VEHICLE_VIEWS[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    if view == "side":
        w = size * rng.uniform(0.8, 0.95)
        h = w * _SIDE_ASPECT[look.vtype]
    else:
        width_frac, aspect = _FRONT_SHAPE[look.vtype]
        w = size * width_frac * rng.uniform(0.85, 1.0)
        h = w * aspect
        if h > size * 0.88:
            w, h = w * size * 0.88 / h, size * 0.88
    x0 = rng.uniform(0.02 * size, max(0.02 * size, size * 0.98 - w))
    bottom = rng.uniform(0.82, 0.97) * size
    y0 = max(0.02 * size, bottom - h)
    f = Frame(x0, y0, w, h, mirror=bool(rng.random() < 0.5))
    if view == "side":
        _vehicle_side(c, f, look.vtype, body)
    else:
        _vehicle_end(c, f, look.vtype, body, front=view == "front")


# --- pedestrians -----------------------------------------------------------------------------


class _PersonFrame(Frame):
    """u is measured from the body's centre line in units of ``w`` (mirrored for side views)."""

    def pt(self, u: float, v: float) -> tuple[float, float]:
        if self.mirror:
            u = -u
        return (self.x0 + u * self.w, self.y0 + v * self.h)


def _arm(c: Canvas, f: Frame, top, bottom, width: float, upper, skin, short: bool) -> None:
    """An arm from shoulder to wrist: sleeve in the upper colour, then skin."""
    (u0, v0), (u1, v1) = top, bottom
    cut = 0.3 if short else 0.88
    um, vm = u0 + (u1 - u0) * cut, v0 + (v1 - v0) * cut
    hw = width / 2
    c.polygon(f.pts([(u0 - hw, v0), (u0 + hw, v0), (um + hw, vm), (um - hw, vm)]), upper, "upper")
    c.polygon(f.pts([(um - hw, vm), (um + hw, vm), (u1 + hw, v1), (u1 - hw, v1)]), skin)


def draw_pedestrian(c: Canvas, look: PedestrianLook, size: int, rng: np.random.Generator) -> None:
    upper = jitter(PALETTE[look.upper], rng)
    lower = jitter(PALETTE[look.lower], rng)
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    hair = HAIR_TONES[int(rng.integers(len(HAIR_TONES)))]
    h = size * rng.uniform(0.78, 0.94)
    cx = size * 0.5 + rng.uniform(-0.16, 0.16) * size
    y0 = rng.uniform(0.02, 0.98 - h / size) * size if h < size * 0.96 else 0.02 * size
    # Drawn a little wider than life so the clothing blocks span more than one ViT patch.
    f = _PersonFrame(cx, y0, h * 1.2, h, mirror=bool(rng.random() < 0.5))
    side, back = look.orientation == "side", look.orientation == "back"
    long_hair = look.female

    if long_hair and not back:  # hair hanging behind the head and shoulders
        box = (-0.09, 0.03, -0.005, 0.3) if side else (-0.09, 0.03, 0.09, 0.28)
        c.rectangle(f.box(*box), hair)
    if look.carry == "backpack" and not back:
        pack = (-0.17, 0.21, -0.06, 0.46) if side else (-0.16, 0.21, 0.16, 0.3)
        c.rectangle(f.box(*pack), BAG)

    # Legs and hips in the lower colour, shoes below.
    if side:
        for foot in (-0.1, 0.1):
            c.polygon(
                f.pts([(-0.05, 0.5), (0.05, 0.5), (foot + 0.035, 0.93), (foot - 0.035, 0.93)]),
                lower,
                "lower",
            )
            c.ellipse(f.box(foot - 0.04, 0.91, foot + 0.06, 0.97), SHOE)
        c.rectangle(f.box(-0.075, 0.48, 0.075, 0.6), lower, "lower")
    else:
        for sgn in (-1, 1):
            c.polygon(
                f.pts(
                    [(sgn * 0.005, 0.5), (sgn * 0.115, 0.5), (sgn * 0.1, 0.93), (sgn * 0.015, 0.93)]
                ),
                lower,
                "lower",
            )
            c.ellipse(f.box(sgn * 0.01, 0.91, sgn * 0.11, 0.97), SHOE)
        c.rectangle(f.box(-0.12, 0.48, 0.12, 0.6), lower, "lower")

    # Torso and arms in the upper colour.
    if side:
        c.polygon(f.pts([(-0.08, 0.2), (0.08, 0.2), (0.075, 0.52), (-0.075, 0.52)]), upper, "upper")
        _arm(c, f, (0.0, 0.22), (0.04, 0.5), 0.06, upper, skin, look.short_sleeve)
    else:
        c.polygon(f.pts([(-0.15, 0.2), (0.15, 0.2), (0.13, 0.52), (-0.13, 0.52)]), upper, "upper")
        for sgn in (-1, 1):
            _arm(c, f, (sgn * 0.175, 0.21), (sgn * 0.19, 0.5), 0.06, upper, skin, look.short_sleeve)

    # Carried things.
    if look.carry == "backpack":
        if back:
            c.rectangle(f.box(-0.11, 0.23, 0.11, 0.46), BAG)
        elif not side:
            for sgn in (-1, 1):
                c.line(f.pts([(sgn * 0.09, 0.2), (sgn * 0.085, 0.42)]), STRAP, width=h * 0.025)
    elif look.carry == "handbag":
        c.line(f.pts([(0.1, 0.21), (0.2, 0.44)]), STRAP, width=h * 0.015)
        c.rectangle(f.box(0.14, 0.42, 0.27, 0.55), BAG)

    # Neck, head, hair, face, hat.
    c.rectangle(f.box(-0.03, 0.14, 0.03, 0.21), skin)
    head = f.box(-0.065, 0.02, 0.065, 0.18)
    if back:
        c.ellipse(head, hair)
        if long_hair:
            c.rectangle(f.box(-0.09, 0.08, 0.09, 0.31), hair)
    else:
        c.ellipse(head, skin)
        c.chord(f.box(-0.068, 0.015, 0.068, 0.14), 180, 360, hair)
        if side:
            c.ellipse(f.box(0.055, 0.09, 0.08, 0.12), skin)  # nose
            c.ellipse(f.box(0.025, 0.08, 0.04, 0.095), (30, 25, 25))
        else:
            for sgn in (-1, 1):
                c.ellipse(f.box(sgn * 0.02 - 0.008, 0.08, sgn * 0.02 + 0.008, 0.095), (30, 25, 25))
    if look.hat:
        c.chord(f.box(-0.07, -0.01, 0.07, 0.1), 180, 360, HAT)
        brim = (-0.03, 0.12) if side else (-0.1, 0.1)
        c.rectangle(f.box(brim[0], 0.04, brim[1], 0.06), HAT)


# --- whole scenes ----------------------------------------------------------------------------


def render(
    look: VehicleLook | PedestrianLook,
    image_size: int,
    rng: np.random.Generator,
    *,
    with_masks: bool = False,
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Draw one object on a random background; return the RGB image (``image_size`` square) and,
    with ``with_masks``, boolean masks of the pixels that lie fully inside each attribute region
    (``body`` for vehicles, ``upper``/``lower`` for pedestrians)."""
    size = image_size * SUPERSAMPLE
    regions: tuple[str, ...] = ()
    if with_masks:
        regions = ("body",) if isinstance(look, VehicleLook) else ("upper", "lower")
    canvas = Canvas(background(size, rng), regions)
    _clutter(canvas, size, ground=rng.uniform(0.45, 0.8) * size, rng=rng)
    if isinstance(look, VehicleLook):
        draw_vehicle(canvas, look, size, rng)
    else:
        draw_pedestrian(canvas, look, size, rng)
    return finish_scene(canvas.image, canvas.masks, image_size, rng)


def finish_scene(
    image: Image.Image, masks: dict[str, Image.Image], image_size: int, rng: np.random.Generator
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Box-filter a supersampled scene down to ``image_size`` and add sensor noise; masks become
    boolean arrays of the output pixels that lie fully inside their region. Shared by every
    synthetic layout, so all of them look alike at the pixel level."""
    out = image.resize((image_size, image_size), Image.Resampling.BOX)
    noise = rng.standard_normal((image_size, image_size, 3), dtype=np.float32)
    noise *= rng.uniform(1.5, 6.0)
    noise += np.asarray(out, dtype=np.float32) + 0.5
    final = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "RGB")
    boolean = {
        name: np.asarray(m.resize((image_size, image_size), Image.Resampling.BOX)) == 255
        for name, m in masks.items()
    }
    return final, boolean
