"""A generated e-commerce data set in the tianchi layout (seed 001), for offline recipes and tests.

``generate_tianchi`` writes rendered products (see :mod:`xmr.data.synth_products`) with keyword
queries and captions in exactly the files :class:`~xmr.data.readers.tianchi.TianchiReader` reads.
Each product has four attributes: a *type* (its silhouette), a *colour* and a *pattern* (both in
the pixels) and a *theme* (Christmas, summer, ...: in the texts only, as a product title or a
caption says what a photo cannot show). So an image alone cannot answer a query that names a
theme, and an item's caption can: text -> image+caption retrieval has something to gain.

- Queries are short keywords, the seed's ``"Christmas pillow"``: the type and one to three of
  colour, pattern and theme (``"red striped mug"``, ``"cushion Christmas"``). A query is relevant
  to exactly the items of its split that have every attribute it names (the ground truth is
  complete); in valid and test a query has at most ``max_relevant`` relevant items (unless
  more items share all four attributes: that query must exist to cover them).
- Train images have THREE captions (different phrasings, synonyms and attribute subsets, as the
  seed's VLM captions); valid and test items have ONE. Every item is relevant to at least one
  query, so every item has its caption(s).
- Image and query ids are distinct numbers across the splits.

The layout of a data set written to ``OUT``::

    OUT/synth_tianchi.json                                  parameters, vocabulary, and per split
                                                            each item's and query's attributes
    OUT/MR_train_queries_with_captions.json                 JSON array, one record per
        {"query_id", "query_text", "image_id", "text_input": [3 captions]}  query-image pair
    OUT/MR_valid_queries_with_captions_standard_simple.jsonl  one line per query:
    OUT/MR_test_queries_with_captions_standard_simple.jsonl   {"query_id", "query_text",
                                                               "item_ids": {image_id: caption}}
    OUT/{train,valid,test}_images/{image_id}.jpg
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from xmr.data.synth_products import (
    BLACK_INK,
    PATTERNS,
    PRODUCT_TYPES,
    ProductLook,
    ink_for,
    render_product,
)
from xmr.data.synth_render import COLOUR_NAMES
from xmr.errors import XmrError
from xmr.io.atomic import atomic_write, atomic_write_json
from xmr.io.failures import writing
from xmr.io.outdirs import prepare_output_dir

TIANCHI_MANIFEST = "synth_tianchi.json"
SPLITS = ("train", "valid", "test")
QUERY_FILES = {
    "train": "MR_train_queries_with_captions.json",
    "valid": "MR_valid_queries_with_captions_standard_simple.jsonl",
    "test": "MR_test_queries_with_captions_standard_simple.jsonl",
}
THEMES: tuple[str, ...] = ("Christmas", "summer", "vintage", "kids", "wedding", "sports")
CAPTIONS_PER_TRAIN_IMAGE = 3
JPEG_QUALITY = 92
GENERATOR_VERSION = 1

# Caption words: synonyms, as a captioning model varies them; query keywords are the first.
_TYPE_WORDS = {
    "t-shirt": ("t-shirt", "tee", "cotton top"),
    "mug": ("mug", "coffee cup", "ceramic mug"),
    "cushion": ("cushion", "pillow", "throw pillow"),
    "phone case": ("phone case", "phone cover", "smartphone case"),
    "bottle": ("bottle", "water bottle", "flask"),
    "handbag": ("handbag", "tote bag", "purse"),
    "cap": ("cap", "baseball cap", "sun hat"),
    "vase": ("vase", "flower vase", "ceramic vase"),
}
_PATTERN_KEYWORD = {
    "plain": "plain",
    "striped": "striped",
    "dotted": "polka dot",
    "checked": "plaid",
    "star": "star print",
}
_PATTERN_PHRASES = {  # (adjective before the noun, phrase after it)
    "plain": ("plain", "in a solid colour"),
    "striped": ("striped", "with {ink} stripes"),
    "dotted": ("polka-dot", "with {ink} polka dots"),
    "checked": ("checked", "with a {ink} check pattern"),
    "star": ("star-print", "covered in {ink} stars"),
}
_THEME_PHRASES = {
    "Christmas": ("Christmas", "for the festive season"),
    "summer": ("summer", "for sunny summer days"),
    "vintage": ("vintage", "in a retro vintage style"),
    "kids": ("kids'", "made for children"),
    "wedding": ("wedding", "as a wedding gift"),
    "sports": ("sports", "for the gym and sports"),
}
# Caption templates: {c} colour, {pa}/{pp} pattern adjective/phrase, {ta}/{tp} theme
# adjective/phrase, {t} the type word. Each names a different attribute subset.
_CAPTIONS = (
    "{C} {pa} {t} {tp}.",
    "{Ta} {t} in {c}, {pp}.",
    "A {c} {t} {pp}, {tp}.",
    "{Ta} {c} {t}.",
    "{Pa} {t} {tp}.",
    "{C} {t} {pp}.",
    "A {ta} {pa} {t} in {c}.",
)
_ATTRS = ("colour", "pattern", "theme")


@dataclass(frozen=True)
class Product:
    """One item: what its image shows and its text-only theme."""

    look: ProductLook
    theme: str

    def value(self, attr: str) -> str:
        return self.theme if attr == "theme" else getattr(self.look, attr)


def _ink_word(colour: str) -> str:
    return "black" if ink_for(colour) == BLACK_INK else "white"


def caption(product: Product, template: str, rng: np.random.Generator) -> str:
    """One caption of ``product`` from ``template`` (the type word drawn from its synonyms)."""
    look = product.look
    pa, pp = _PATTERN_PHRASES[look.pattern]
    ta, tp = _THEME_PHRASES[product.theme]
    words = {
        "c": look.colour,
        "pa": pa,
        "pp": pp.format(ink=_ink_word(look.colour)),
        "ta": ta,
        "tp": tp,
        "t": _TYPE_WORDS[look.ptype][int(rng.integers(3))],
    }
    words |= {k.capitalize(): v[:1].upper() + v[1:] for k, v in words.items()}
    return " ".join(template.format(**words).split())


def query_text(key: tuple[tuple[str, str], ...], rng: np.random.Generator) -> str:
    """Keywords for the attribute subset ``key`` (``(("ptype", "mug"), ("colour", "red"))``):
    the modifiers before or after the type word, as shoppers type them."""
    named = dict(key)
    mods = [
        named[a] if a != "pattern" else _PATTERN_KEYWORD[named[a]] for a in _ATTRS if a in named
    ]
    noun = named["ptype"]
    return " ".join([noun, *mods] if rng.random() < 0.3 else [*mods, noun])


def _products(n: int, n_colours: int, rng: np.random.Generator) -> list[Product]:
    colours = COLOUR_NAMES[:n_colours]
    return [
        Product(
            ProductLook(
                PRODUCT_TYPES[int(rng.integers(len(PRODUCT_TYPES)))],
                colours[int(rng.integers(len(colours)))],
                PATTERNS[int(rng.integers(len(PATTERNS)))],
            ),
            THEMES[int(rng.integers(len(THEMES)))],
        )
        for _ in range(n)
    ]


_SUBSETS = [s for r in (1, 2, 3) for s in combinations(_ATTRS, r)]


def _queries(
    products: Sequence[Product], max_relevant: int | None, rng: np.random.Generator
) -> list[tuple[tuple[tuple[str, str], ...], list[int]]]:
    """Queries covering every product: ``(key, relevant product indices)``, one per key.

    Each uncovered product in turn anchors a query: the first attribute subset (in random order)
    whose key is new and matches at most ``max_relevant`` products; the full key (type, colour,
    pattern, theme) always remains, and matches the anchor."""
    by_key: dict[tuple, list[int]] = {}
    for i, p in enumerate(products):
        for subset in _SUBSETS:
            key = (("ptype", p.look.ptype), *((a, p.value(a)) for a in subset))
            by_key.setdefault(key, []).append(i)
    covered = np.zeros(len(products), dtype=bool)
    out = []
    used: set[tuple] = set()
    for anchor in rng.permutation(len(products)):
        if covered[anchor]:
            continue
        p = products[int(anchor)]
        for s in rng.permutation(len(_SUBSETS)):
            subset = _SUBSETS[int(s)]
            key = (("ptype", p.look.ptype), *((a, p.value(a)) for a in subset))
            fits = max_relevant is None or len(by_key[key]) <= max_relevant
            if key not in used and (fits or len(subset) == len(_ATTRS)):
                break
        used.add(key)
        out.append((key, by_key[key]))
        covered[by_key[key]] = True
    return out


def _write_images(root: Path, split: str, ids, products, image_size: int, seed: int) -> None:
    folder = root / f"{split}_images"
    folder.mkdir(parents=True)
    for i, (iid, p) in enumerate(zip(ids, products, strict=True)):
        image, _ = render_product(
            p.look, image_size, np.random.default_rng([seed, SPLITS.index(split) + 1, i])
        )
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
        # Plain writes (as the traffic generator's): thousands of fsyncs would cost minutes, and
        # the manifest, written first, lets a re-run replace a folder a killed run left.
        with writing(folder / f"{iid}.jpg"):  # a full disk names the file
            (folder / f"{iid}.jpg").write_bytes(buf.getvalue())


def _write_split(root: Path, split: str, n: int, cfg: dict, ids: dict[str, list[int]]) -> dict:
    seed = cfg["seed"]
    rng = np.random.default_rng([seed, 100 + SPLITS.index(split)])
    products = _products(n, cfg["n_colours"], rng)
    image_ids = ids["image"][:n]
    del ids["image"][:n]
    max_rel = None if split == "train" else cfg["max_relevant"]
    queries = _queries(products, max_rel, rng)
    query_ids = ids["query"][: len(queries)]
    del ids["query"][: len(queries)]
    n_caps = CAPTIONS_PER_TRAIN_IMAGE if split == "train" else 1
    captions = []
    for p in products:
        chosen = rng.choice(len(_CAPTIONS), n_caps, replace=False)
        captions.append([caption(p, _CAPTIONS[int(t)], rng) for t in chosen])
    texts = [query_text(key, rng) for key, _ in queries]
    if split == "train":
        records = [
            {"query_id": qid, "query_text": text, "image_id": image_ids[i], "text_input": captions[i]}
            for qid, text, (_, rel) in zip(query_ids, texts, queries, strict=True)
            for i in rel
        ]  # fmt: skip
        atomic_write_json(root / QUERY_FILES[split], records)
    else:
        lines = [
            json.dumps(
                {
                    "query_id": qid,
                    "query_text": text,
                    "item_ids": {str(image_ids[i]): captions[i][0] for i in rel},
                },
                ensure_ascii=False,
            )  # fmt: skip
            for qid, text, (_, rel) in zip(query_ids, texts, queries, strict=True)
        ]
        body = "".join(f"{line}\n" for line in lines)
        atomic_write(root / QUERY_FILES[split], lambda t: t.write_text(body, encoding="utf-8"))
    _write_images(root, split, image_ids, products, cfg["image_size"], seed)
    return {
        "n_images": n,
        "n_queries": len(queries),
        "n_pairs": sum(len(r) for _, r in queries),
        # The ground truth the files imply, for checks: each item's attributes, each query's.
        "items": {
            str(iid): {
                "ptype": p.look.ptype,
                "colour": p.look.colour,
                "pattern": p.look.pattern,
                "theme": p.theme,
            }
            for iid, p in zip(image_ids, products, strict=True)
        },  # fmt: skip
        "queries": {str(qid): dict(key) for qid, (key, _) in zip(query_ids, queries, strict=True)},
    }


def generate_tianchi(
    out_dir: str | Path,
    n_train: int = 2000,
    n_test: int = 500,
    image_size: int = 64,
    seed: int = 0,
    n_valid: int | None = None,
    *,
    n_colours: int = 8,
    max_relevant: int = 10,
) -> Path:
    """Write a synthetic e-commerce data set in the tianchi layout and return its root.

    Args:
        out_dir: where to write; must be empty, missing, or an earlier output of this function
            (whose files are then replaced).
        n_train, n_test: images per split; ``n_valid`` defaults to ``n_test``. A split of 0
            images is not written.
        image_size: side of the square JPEG images in pixels (at least 16).
        seed: everything (products, queries, captions, images, file bytes) follows from it.
        n_colours: palette size, 2..10 (the first colours of ``PALETTE``).
        max_relevant: the most relevant items a valid or test query has (a query naming all
            four attributes may have more, when that many items share them all).
    """
    n_valid = n_test if n_valid is None else n_valid
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for name, value in sizes.items():
        if int(value) != value or value < 0:
            raise XmrError(f"n_{name} must be a non-negative integer, got {value!r}")
    if image_size < 16:
        raise XmrError(f"image_size must be at least 16 pixels, got {image_size}")
    if not 2 <= n_colours <= len(COLOUR_NAMES):
        raise XmrError(f"n_colours must be between 2 and {len(COLOUR_NAMES)}, got {n_colours}")
    if max_relevant < 1:
        raise XmrError(f"max_relevant must be at least 1, got {max_relevant}")
    root = prepare_output_dir(
        out_dir,
        is_ours=lambda p: (p / TIANCHI_MANIFEST).is_file(),
        what="an `xmr data synth --layout tianchi` output",
    )
    if (root / TIANCHI_MANIFEST).is_file():  # an earlier output: start afresh
        for split in SPLITS:
            shutil.rmtree(root / f"{split}_images", ignore_errors=True)
            (root / QUERY_FILES[split]).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    params = {"n_train": n_train, "n_valid": n_valid, "n_test": n_test, "image_size": image_size,
              "seed": seed, "n_colours": n_colours, "max_relevant": max_relevant}  # fmt: skip
    total = sum(sizes.values())
    id_rng = np.random.default_rng([seed, 0])
    # Numeric ids like the seed's (six or seven digits), distinct over all splits.
    ids = {
        "image": [int(i) for i in id_rng.choice(np.arange(100_000, 2_000_000), total, False)],
        "query": [int(i) for i in id_rng.choice(np.arange(1, 500_000), total, False)],
    }
    manifest = {
        "generator": "xmr.data.synth_tianchi",
        "version": GENERATOR_VERSION,
        "params": params,
        "product_types": list(PRODUCT_TYPES),
        "colours": list(COLOUR_NAMES[:n_colours]),
        "patterns": list(PATTERNS),
        "themes": list(THEMES),
        "visible_in_pixels": ["ptype", "colour", "pattern"],
        "text_only": ["theme"],
    }
    # Written first: a run cut short leaves a directory that a re-run may replace.
    atomic_write_json(root / TIANCHI_MANIFEST, manifest)
    counts = {}
    for split in SPLITS:
        if sizes[split]:
            counts[split] = _write_split(root, split, int(sizes[split]), params, ids)
    atomic_write_json(root / TIANCHI_MANIFEST, {**manifest, "splits": counts})
    return root
