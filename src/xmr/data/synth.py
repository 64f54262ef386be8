"""A generated traffic data set in the Track2 layout, for offline demos and tests.

``generate_synthetic`` writes rendered vehicles and pedestrians (see ``synth_render``) with label
lines ``image$attribute$text`` exactly as Track2 (seed 000) writes them:

- vehicles: the attribute is a template sentence, ``A white SUV.``; the image is
  ``vehicle_0000123.jpg``;
- pedestrians: the attribute is a 0/1 vector of ``len(PEDESTRIAN_VECTOR)`` positions (meaning
  below); the image has a numeric stem, ``000123.jpg``, and about a third of the label fields
  leave the extension out (``000123``), as the seed's ``090000`` does.

The data set is a fixed number of *attribute sets* (a vehicle colour and type; a pedestrian's
gender, clothing colours, sleeves, bag, hat and orientation). Each set has one attribute string
and 2-4 phrasings; every image of a set is labelled with one of them, so one text goes with many
images and one image's set with several texts. Images of a set differ only in what is not an
attribute: background, clutter, noise, position, scale, mirror, skin and hair tone, and a
vehicle's viewpoint (side, front or back). Every split uses the same sets, so test texts also
occur in train, as Track2's query templates do.

Pedestrian attribute vector (1 = yes), for ``PALETTE`` colours white, black, red, blue, yellow,
green, orange, purple, pink, cyan in that order::

    0 female          1 hat           2 backpack       3 handbag
    4 short sleeve    5 long sleeve   6 facing front   7 facing side   8 facing back
    9-18  upper clothing colour (one-hot over the 10 palette colours)
    19-28 lower clothing colour (one-hot over the 10 palette colours)

The layout of a data set written to ``OUT``::

    OUT/synth.json                                   parameters and the attribute sets
    OUT/{train,valid,test}/{split}_label.txt         image$attribute$text
    OUT/{train,valid,test}/{split}_images/*.jpg
    OUT/test/test_text.txt                           distinct test texts, first-appearance order
    OUT/test/test_gt.txt                             text$img1$img2...  (image file names)

An image is relevant to a text when it carries an attribute string that the text appears with.

(One module, a little over 400 lines, on purpose: the attribute vocabulary, the sampling of
attribute sets and the Track2 writer are one generator; the drawing is in ``synth_render``.)
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xmr.data.synth_render import (
    CARRY,
    COLOUR_NAMES,
    ORIENTATIONS,
    VEHICLE_TYPES,
    PedestrianLook,
    VehicleLook,
    render,
)
from xmr.errors import XmrError
from xmr.io.failures import writing
from xmr.io.outdirs import prepare_output_dir

PEDESTRIAN_VECTOR: tuple[str, ...] = (
    "female",
    "hat",
    "backpack",
    "handbag",
    "short_sleeve",
    "long_sleeve",
    "facing_front",
    "facing_side",
    "facing_back",
    *(f"upper_{c}" for c in COLOUR_NAMES),
    *(f"lower_{c}" for c in COLOUR_NAMES),
)

SPLITS = ("train", "valid", "test")
MANIFEST = "synth.json"
JPEG_QUALITY = 92
GENERATOR_VERSION = 1

_TYPE_WORDS = {
    "sedan": ("sedan", "saloon car"),
    "SUV": ("SUV", "sport utility vehicle"),
    "truck": ("truck", "lorry"),
    "bus": ("bus", "city bus"),
    "van": ("van", "delivery van"),
}
_COLOUR_WORDS = {c: (c,) for c in COLOUR_NAMES} | {
    "purple": ("purple", "violet"),
    "cyan": ("cyan", "turquoise"),
}
_VEHICLE_TEMPLATES = (
    "This is {a_c} {t}.",
    "{A_c} {t}.",
    "{A_t} painted {c}.",
    "There is {a_c} {t} on the road.",
    "The vehicle is {a_c} {t}.",
    "{A_c} {t} driving down the street.",
)

_NOUNS = {
    True: ("woman", "female pedestrian", "lady"),
    False: ("man", "male pedestrian", "gentleman"),
}
_UPPER = {
    True: ("{c} short-sleeve shirt", "{c} T-shirt"),
    False: ("{c} long-sleeve shirt", "{c} jacket"),
}
_LOWER = ("{c} trousers", "{c} pants")
_CARRY_WORDS = {
    "none": ("carrying nothing", ""),
    "backpack": ("carrying a backpack", "with a backpack"),
    "handbag": ("carrying a handbag", "with a handbag"),
}
_FACING = {
    "front": ("facing the camera", "seen from the front"),
    "side": ("seen from the side", "shown in profile"),
    "back": ("with the back to the camera", "seen from behind"),
}
_PEDESTRIAN_TEMPLATES = (
    "{A_n} {facing}, wearing {a_up} and {low}{carry}{hat}.",
    "This {n} is in {a_up} and {low}{carry}.",
    "{A_n} wearing {low} and {a_up}, {facing}{hat}.",
    "{A_n} is someone who walks on foot, {facing}. {P} wears {a_up} and {low}{carry}{hat}.",
)


@dataclass(frozen=True)
class AttributeSet:
    """One combination of attributes: what its images show and how texts describe it."""

    category: str  # "vehicle" or "pedestrian"
    look: VehicleLook | PedestrianLook
    attribute: str
    phrasings: tuple[str, ...]


def _a(word: str) -> str:
    return "an" if word[0].lower() in "aeio" or word.startswith("SUV") else "a"


def _with_article(word: str, capital: bool = False) -> str:
    art = _a(word)
    return f"{art.capitalize() if capital else art} {word}"


def vehicle_attribute(look: VehicleLook) -> str:
    return _with_article(f"{look.colour} {look.vtype}", capital=True) + "."


def pedestrian_vector(look: PedestrianLook) -> list[int]:
    on = {
        "female": look.female,
        "hat": look.hat,
        "backpack": look.carry == "backpack",
        "handbag": look.carry == "handbag",
        "short_sleeve": look.short_sleeve,
        "long_sleeve": not look.short_sleeve,
        f"facing_{look.orientation}": True,
        f"upper_{look.upper}": True,
        f"lower_{look.lower}": True,
    }
    return [int(on.get(name, False)) for name in PEDESTRIAN_VECTOR]


def _vehicle_candidates(look: VehicleLook) -> list[str]:
    out = []
    for template in _VEHICLE_TEMPLATES:
        for t in _TYPE_WORDS[look.vtype]:
            for c in _COLOUR_WORDS[look.colour]:
                out.append(
                    template.format(
                        c=c,
                        t=t,
                        a_c=_with_article(c),
                        A_c=_with_article(c, capital=True),
                        A_t=_with_article(t, capital=True),
                    )
                )
    return out


def _pedestrian_candidates(look: PedestrianLook) -> list[str]:
    out = []
    pronoun = "She" if look.female else "He"
    for template in _PEDESTRIAN_TEMPLATES:
        for i, n in enumerate(_NOUNS[look.female]):
            # Walk the synonym lists together (offset by the noun) rather than taking their
            # product: enough variety, and a candidate list that stays small.
            up = _UPPER[look.short_sleeve][i % 2].format(
                c=_COLOUR_WORDS[look.upper][i % len(_COLOUR_WORDS[look.upper])]
            )
            low = _LOWER[(i + 1) % 2].format(c=_COLOUR_WORDS[look.lower][0])
            carry = _CARRY_WORDS[look.carry][i % 2]
            hat = (", in a hat" if i % 2 else ", wearing a hat") if look.hat else ""
            out.append(
                template.format(
                    n=n,
                    A_n=_with_article(n, capital=True),
                    P=pronoun,
                    facing=_FACING[look.orientation][i % 2],
                    a_up=_with_article(up),
                    low=low,
                    carry=f", {carry}" if carry else "",
                    hat=hat,
                )
            )
    return out


def make_attribute_sets(
    n_sets: int, n_colours: int, rng: np.random.Generator, *, vehicle_fraction: float = 0.5
) -> list[AttributeSet]:
    """Draw ``n_sets`` distinct attribute sets, vehicles first. Vehicle sets are distinct
    (colour, type) pairs; pedestrian sets have distinct (upper, lower) colour pairs, so every set
    is told apart by its large coloured regions."""
    colours = COLOUR_NAMES[:n_colours]
    n_vehicle = int(round(n_sets * vehicle_fraction))
    n_pedestrian = n_sets - n_vehicle
    vehicle_space = [(c, t) for t in VEHICLE_TYPES for c in colours]
    pedestrian_space = [(u, lo) for u in colours for lo in colours if u != lo]
    if n_vehicle > len(vehicle_space) or n_pedestrian > len(pedestrian_space):
        raise XmrError(
            f"{n_sets} attribute sets do not fit {n_colours} colours: at most "
            f"{len(vehicle_space)} vehicle and {len(pedestrian_space)} pedestrian sets"
        )
    sets: list[AttributeSet] = []
    for k in rng.choice(len(vehicle_space), n_vehicle, replace=False):
        colour, vtype = vehicle_space[int(k)]
        look = VehicleLook(colour=colour, vtype=vtype)
        sets.append(
            AttributeSet(
                "vehicle", look, vehicle_attribute(look), _pick(_vehicle_candidates(look), rng)
            )
        )
    for k in rng.choice(len(pedestrian_space), n_pedestrian, replace=False):
        upper, lower = pedestrian_space[int(k)]
        look = PedestrianLook(
            female=bool(rng.random() < 0.5),
            hat=bool(rng.random() < 0.3),
            carry=CARRY[int(rng.choice(3, p=[0.4, 0.3, 0.3]))],
            short_sleeve=bool(rng.random() < 0.5),
            orientation=ORIENTATIONS[int(rng.integers(3))],
            upper=upper,
            lower=lower,
        )
        attribute = ",".join(map(str, pedestrian_vector(look)))
        sets.append(
            AttributeSet("pedestrian", look, attribute, _pick(_pedestrian_candidates(look), rng))
        )
    owner: dict[str, int] = {}
    for i, s in enumerate(sets):
        for text in s.phrasings:
            if owner.setdefault(text, i) != i or "$" in text:
                raise AssertionError(f"phrasing {text!r} is not unique to one attribute set")
    return sets


def _pick(candidates: list[str], rng: np.random.Generator) -> tuple[str, ...]:
    n = int(rng.integers(2, 5))  # 2..4 phrasings per set
    return tuple(candidates[int(i)] for i in rng.choice(len(candidates), n, replace=False))


@dataclass
class _Line:
    field: str  # the image field as written: a file name, or a pedestrian stem without extension
    file: str
    attribute: str
    text: str


def _write_split(
    root: Path,
    split: str,
    n_images: int,
    sets: list[AttributeSet],
    image_size: int,
    seed: int,
    counters: dict[str, int],
    extra_text_fraction: float,
) -> list[_Line]:
    split_dir = root / split
    image_dir = split_dir / f"{split}_images"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng([seed, SPLITS.index(split) + 1])
    # Balanced: every set gets n_images // len(sets) or one more, in shuffled order.
    set_of = rng.permutation(np.arange(n_images) % len(sets))
    offsets = rng.integers(0, 4, len(sets))
    seen = np.zeros(len(sets), dtype=int)
    lines: list[_Line] = []
    for i, s_idx in enumerate(set_of):
        aset = sets[int(s_idx)]
        k = seen[s_idx] + offsets[s_idx]
        seen[s_idx] += 1
        if aset.category == "vehicle":
            stem = f"vehicle_{counters['vehicle']:07d}"
            field = f"{stem}.jpg"
        else:
            stem = f"{counters['pedestrian']:06d}"
            field = stem if rng.random() < 1 / 3 else f"{stem}.jpg"
        counters[aset.category] += 1
        image_rng = np.random.default_rng([seed, SPLITS.index(split) + 1, i])
        image, _ = render(aset.look, image_size, image_rng)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
        with writing(image_dir / f"{stem}.jpg"):  # a full disk names the file
            (image_dir / f"{stem}.jpg").write_bytes(buf.getvalue())
        n_texts = 2 if split == "train" and rng.random() < extra_text_fraction else 1
        for j in range(n_texts):
            text = aset.phrasings[(k + j) % len(aset.phrasings)]
            lines.append(_Line(field, f"{stem}.jpg", aset.attribute, text))
    label = "".join(f"{ln.field}${ln.attribute}${ln.text}\n" for ln in lines)
    with writing(split_dir / f"{split}_label.txt"):
        (split_dir / f"{split}_label.txt").write_text(label, encoding="utf-8")
    return lines


def _relevance_from_lines(lines) -> dict[str, list[str]]:
    """Track2 relevance: text -> images carrying an attribute string the text appears with.

    ``lines`` are ``(image, attribute, text)`` triples; texts and images keep first-appearance
    order (dicts serve as ordered sets)."""
    attrs_of_text: dict[str, dict[str, None]] = {}
    images_of_attr: dict[str, dict[str, None]] = {}
    for image, attribute, text in lines:
        attrs_of_text.setdefault(text, {})[attribute] = None
        images_of_attr.setdefault(attribute, {})[image] = None
    return {
        text: list(dict.fromkeys(img for a in attrs for img in images_of_attr[a]))
        for text, attrs in attrs_of_text.items()
    }


def generate_synthetic(
    out_dir: str | Path,
    n_train: int = 2000,
    n_test: int = 500,
    image_size: int = 64,
    seed: int = 0,
    n_valid: int | None = None,
    *,
    n_attribute_sets: int = 40,
    n_colours: int = 8,
    vehicle_fraction: float = 0.5,
    extra_text_fraction: float = 0.25,
) -> Path:
    """Write a synthetic traffic data set in the Track2 layout and return its root.

    Args:
        out_dir: where to write; must be empty, missing, or an earlier output of this function
            (whose splits are then replaced).
        n_train, n_test: images per split; ``n_valid`` defaults to ``n_test``. A split of 0
            images is not written. With ``n_test >= 10 * n_attribute_sets`` every test text has
            at least 10 relevant images.
        image_size: side of the square JPEG images in pixels (at least 16).
        seed: everything (attribute sets, phrasings, images, file bytes) follows from it.
        n_attribute_sets: distinct attribute sets shared by all splits.
        n_colours: palette size, 2..10 (the first colours of ``PALETTE``).
        vehicle_fraction: share of attribute sets (and so of images) that are vehicles.
        extra_text_fraction: share of train images that get a second label line with another
            phrasing (one image, several texts).
    """
    n_valid = n_test if n_valid is None else n_valid
    for name, value in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if int(value) != value or value < 0:
            raise XmrError(f"{name} must be a non-negative integer, got {value!r}")
    if image_size < 16:
        raise XmrError(f"image_size must be at least 16 pixels, got {image_size}")
    if not 2 <= n_colours <= len(COLOUR_NAMES):
        raise XmrError(f"n_colours must be between 2 and {len(COLOUR_NAMES)}, got {n_colours}")
    if n_attribute_sets < 1 or not 0.0 <= vehicle_fraction <= 1.0:
        raise XmrError("n_attribute_sets must be >= 1 and vehicle_fraction within 0..1")

    sets = make_attribute_sets(
        n_attribute_sets,
        n_colours,
        np.random.default_rng([seed, 0]),
        vehicle_fraction=vehicle_fraction,
    )
    root = prepare_output_dir(
        out_dir, is_ours=lambda p: (p / MANIFEST).is_file(), what="an `xmr data synth` output"
    )
    if (root / MANIFEST).is_file():
        for split in SPLITS:
            shutil.rmtree(root / split, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)

    manifest = {
        "generator": "xmr.data.synth",
        "version": GENERATOR_VERSION,
        "params": {
            "n_train": n_train,
            "n_valid": n_valid,
            "n_test": n_test,
            "image_size": image_size,
            "seed": seed,
            "n_attribute_sets": n_attribute_sets,
            "n_colours": n_colours,
            "vehicle_fraction": vehicle_fraction,
            "extra_text_fraction": extra_text_fraction,
        },
        "pedestrian_vector": list(PEDESTRIAN_VECTOR),
        "attribute_sets": [
            {
                "category": s.category,
                "attribute": s.attribute,
                "look": asdict(s.look),
                "phrasings": list(s.phrasings),
            }
            for s in sets
        ],
    }
    # Written first: a run cut short leaves a directory that a re-run may replace.
    with writing(root / MANIFEST):
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    counters = {"vehicle": 0, "pedestrian": 0}
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for split in SPLITS:
        if sizes[split] == 0:
            continue
        lines = _write_split(
            root, split, int(sizes[split]), sets, image_size, seed, counters, extra_text_fraction
        )
        if split == "test":
            relevance = _relevance_from_lines((ln.file, ln.attribute, ln.text) for ln in lines)
            with writing(root / "test" / "test_text.txt"):
                (root / "test" / "test_text.txt").write_text(
                    "".join(f"{t}\n" for t in relevance), encoding="utf-8"
                )
            with writing(root / "test" / "test_gt.txt"):
                (root / "test" / "test_gt.txt").write_text(
                    "".join("$".join([t, *imgs]) + "\n" for t, imgs in relevance.items()),
                    encoding="utf-8",
                )

    return root
