"""The generated traffic data set: layout, label format, relevance, determinism, and that the
labelled attributes are really drawn."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmr.data.images import resolve_image_file
from xmr.data.synth import (
    MANIFEST,
    PEDESTRIAN_VECTOR,
    generate_synthetic,
    make_attribute_sets,
)
from xmr.data.synth_render import (
    CARRY,
    COLOUR_NAMES,
    ORIENTATIONS,
    PALETTE,
    VEHICLE_TYPES,
    PedestrianLook,
    VehicleLook,
    render,
)
from xmr.errors import XmrError

SMALL = {"n_train": 40, "n_test": 20, "n_valid": 10, "image_size": 32}
SYNONYMS = {"purple": ("violet",), "cyan": ("turquoise",)}
VEHICLE_ATTRIBUTE = re.compile(r"^An? (\w+) (sedan|SUV|truck|bus|van)\.$")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_label(path: Path) -> list[list[str]]:
    return [line.split("$") for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data")


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = tree_digest(generate_synthetic(tmp_path / "a", seed=3, **SMALL))
    b = tree_digest(generate_synthetic(tmp_path / "b", seed=3, **SMALL))
    c = tree_digest(generate_synthetic(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    # 3 label files, test_text, test_gt, the manifest, and the images
    assert len(a) == 6 + sum(SMALL[k] for k in ("n_train", "n_test", "n_valid"))
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k]]
    assert "train/train_label.txt" in differing
    assert sum(k.endswith(".jpg") for k in differing) > 0.9 * (len(a) - 6)


def test_layout_and_label_lines(default_set):
    root = default_set
    names_seen: set[str] = set()
    stem_only = 0
    for split, n in (("train", 2000), ("valid", 500), ("test", 500)):
        image_dir = root / split / f"{split}_images"
        rows = read_label(root / split / f"{split}_label.txt")
        assert all(len(r) == 3 and all(r) for r in rows)
        files = {f.name for f in image_dir.iterdir()}
        assert len(files) == n and not files & names_seen
        names_seen |= files
        referenced = set()
        for field, attribute, text in rows:
            if field.startswith("vehicle_"):
                assert re.fullmatch(r"vehicle_\d{7}\.jpg", field)
                assert VEHICLE_ATTRIBUTE.match(attribute), attribute
            else:
                assert re.fullmatch(r"\d{6}(\.jpg)?", field)
                bits = attribute.split(",")
                assert len(bits) == len(PEDESTRIAN_VECTOR) and set(bits) <= {"0", "1"}
                stem_only += not field.endswith(".jpg")
            resolved = resolve_image_file(image_dir, field)
            assert resolved is not None and resolved.is_file(), field
            referenced.add(resolved.name)
            assert text.endswith(".") and "$" not in text
        assert referenced == files
    assert stem_only > 100  # pedestrian fields without the extension exercise the reader

    with Image.open(next((root / "test" / "test_images").iterdir())) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"


def decode_vector(attribute: str) -> dict[str, bool]:
    return dict(zip(PEDESTRIAN_VECTOR, (b == "1" for b in attribute.split(",")), strict=True))


def test_attribute_strings_are_consistent_with_texts(default_set):
    manifest = json.loads((default_set / MANIFEST).read_text())
    sets = manifest["attribute_sets"]
    assert len(sets) == 40 and len({s["attribute"] for s in sets}) == 40
    assert Counter(s["category"] for s in sets) == {"vehicle": 20, "pedestrian": 20}
    for s in sets:
        assert 2 <= len(s["phrasings"]) <= 4
        look = s["look"]
        if s["category"] == "vehicle":
            colour, vtype = VEHICLE_ATTRIBUTE.match(s["attribute"]).groups()
            assert (colour, vtype) == (look["colour"], look["vtype"])
            named = [colour]
        else:
            v = decode_vector(s["attribute"])
            for group in (
                ["short_sleeve", "long_sleeve"],
                ["facing_front", "facing_side", "facing_back"],
                [f"upper_{c}" for c in COLOUR_NAMES],
                [f"lower_{c}" for c in COLOUR_NAMES],
            ):
                assert sum(v[k] for k in group) == 1, (group, s["attribute"])
            assert v[f"upper_{look['upper']}"] and v[f"lower_{look['lower']}"]
            assert v["female"] == look["female"] and v["hat"] == look["hat"]
            assert v[f"facing_{look['orientation']}"]
            assert not (v["backpack"] and v["handbag"])
            named = [look["upper"], look["lower"]]
        for text in s["phrasings"]:
            # every phrasing names the colours that tell its set apart (or their synonyms)
            words = set(re.findall(r"[a-z]+", text.lower()))
            for colour in named:
                assert words & {colour, *SYNONYMS.get(colour, ())}, (colour, text)
            if s["category"] == "pedestrian":
                assert bool(words & {"woman", "lady", "female"}) == look["female"], text


def test_gt_matches_relevance_from_label_lines(default_set):
    test_dir = default_set / "test"
    rows = read_label(test_dir / "test_label.txt")
    image_dir = test_dir / "test_images"
    attrs_of_text: dict[str, set[str]] = {}
    images_of_attr: dict[str, set[str]] = {}
    for field, attribute, text in rows:
        attrs_of_text.setdefault(text, set()).add(attribute)
        images_of_attr.setdefault(attribute, set()).add(resolve_image_file(image_dir, field).name)
    expected = {
        t: set().union(*(images_of_attr[a] for a in attrs)) for t, attrs in attrs_of_text.items()
    }

    first_seen = list(dict.fromkeys(text for _, _, text in rows))
    assert (test_dir / "test_text.txt").read_text(encoding="utf-8").splitlines() == first_seen

    gt_lines = (test_dir / "test_gt.txt").read_text(encoding="utf-8").splitlines()
    gt = {line.split("$")[0]: line.split("$")[1:] for line in gt_lines}
    assert [line.split("$")[0] for line in gt_lines] == first_seen
    assert {t: set(imgs) for t, imgs in gt.items()} == expected
    assert all(len(imgs) == len(set(imgs)) for imgs in gt.values())

    # Track2-style: many images per text, every test text has at least 10 relevant images,
    # and test texts also occur in train.
    assert min(len(imgs) for imgs in gt.values()) >= 10
    train_texts = {t for _, _, t in read_label(default_set / "train" / "train_label.txt")}
    assert set(gt) <= train_texts
    # some train images carry two texts
    train_fields = Counter(f for f, _, _ in read_label(default_set / "train" / "train_label.txt"))
    assert max(train_fields.values()) == 2


def nearest_colour(rgb: np.ndarray, n_colours: int) -> str:
    names = COLOUR_NAMES[:n_colours]
    dists = [np.linalg.norm(rgb - np.asarray(PALETTE[c], dtype=float)) for c in names]
    return names[int(np.argmin(dists))]


def jpeg_roundtrip(image: Image.Image) -> np.ndarray:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92, subsampling=0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=float)


def test_pixels_carry_the_labelled_colours():
    rng = np.random.default_rng(0)
    n_colours = len(COLOUR_NAMES)
    checked = 0
    for i in range(60):
        colours = rng.choice(n_colours, 2, replace=False)
        a, b = (COLOUR_NAMES[int(c)] for c in colours)
        if i % 2:
            look = VehicleLook(colour=a, vtype=VEHICLE_TYPES[i % len(VEHICLE_TYPES)])
            expected = {"body": a}
        else:
            look = PedestrianLook(
                female=bool(i % 4),
                hat=bool(i % 3 == 0),
                carry=CARRY[i % 3],
                short_sleeve=bool(i % 5 < 2),
                orientation=ORIENTATIONS[i % 3],
                upper=a,
                lower=b,
            )
            expected = {"upper": a, "lower": b}
        image, masks = render(look, 64, rng, with_masks=True)
        pixels = jpeg_roundtrip(image)
        for region, colour in expected.items():
            mask = masks[region]
            assert mask.sum() >= 40, (look, region, mask.sum())  # a big, visible region
            assert nearest_colour(pixels[mask].mean(axis=0), n_colours) == colour, (look, region)
            checked += 1
    assert checked == 30 + 60


def test_masks_do_not_change_the_image():
    look = VehicleLook("red", "bus")
    plain, _ = render(look, 48, np.random.default_rng(5))
    masked, _ = render(look, 48, np.random.default_rng(5), with_masks=True)
    assert plain.tobytes() == masked.tobytes()


def test_attribute_set_space_is_configurable():
    sets = make_attribute_sets(12, 4, np.random.default_rng(0), vehicle_fraction=0.25)
    assert Counter(s.category for s in sets) == {"vehicle": 3, "pedestrian": 9}
    assert {s.look.upper for s in sets if s.category == "pedestrian"} <= set(COLOUR_NAMES[:4])
    with pytest.raises(XmrError, match="do not fit"):
        make_attribute_sets(30, 3, np.random.default_rng(0))  # only 6 pedestrian colour pairs


def test_output_directory_rules(tmp_path):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(XmrError, match="not empty"):
        generate_synthetic(stranger, **SMALL)
    assert (stranger / "notes.txt").read_text() == "mine"

    out = generate_synthetic(tmp_path / "out", **{**SMALL, "n_train": 60})
    generate_synthetic(out, **SMALL)  # a re-run replaces its own earlier output, no stale images
    assert len(list((out / "train" / "train_images").iterdir())) == SMALL["n_train"]

    with pytest.raises(XmrError, match="image_size"):
        generate_synthetic(tmp_path / "tiny", image_size=8)
