"""A real small index for the service's tests, built with the real pipeline.

tiny random CLIP (``create_tiny_clip``) -> ``encode_split`` over generated images (files and one
base64 TSV line) -> ``build_index`` -> ``Index.save``. Built once per session by the
``serve_index`` fixture (conftest.py) for test_serve_*.py and test_browser.py.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square")
TSV_ITEM = "tsv-red-square"
BMP_ITEM = "bmp-blue-circle"


def _draw(colour: tuple[int, int, int], shape: str, size: int = 96, variant: int = 0):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size + 32 * variant, size), (245, 245, 240))
    d = ImageDraw.Draw(img)
    m = 14 + 4 * variant
    box = (m, m, size - m + 32 * variant, size - m)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    else:
        d.rectangle(box, fill=colour)
    return img


def build_index_dir(root: Path) -> dict:
    """Write images, a tiny CLIP and an index under ``root``; return what the tests need."""
    from builders import tiny_model
    from xmr.data.dataset import Item, Split
    from xmr.data.images import ImageRef
    from xmr.encode import encode_split, load_embeddings, load_metadata
    from xmr.index import build_index
    from xmr.models import create_encoder

    images = root / "images"
    images.mkdir(parents=True)
    split = Split(name="test")
    texts = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            for variant in (0, 1):
                item_id = f"{colour}-{shape}-{variant}"
                path = images / f"{item_id}.jpg"
                _draw(rgb, shape, variant=variant).save(path, quality=90)
                caption = f"a {colour} {shape}"
                texts.append(caption)
                split.items[item_id] = Item(
                    item_id, ImageRef(path=str(path)), captions=[caption], category=shape
                )
    # One image served from a line of a base64 TSV, one from a BMP file (re-encoded to PNG).
    buf = io.BytesIO()
    _draw((200, 50, 40), "square", size=80, variant=1).save(buf, format="JPEG", quality=90)
    tsv = root / "images.tsv"
    line0 = "other\t" + base64.b64encode(b"not used").decode() + "\n"
    tsv.write_text(line0 + f"{TSV_ITEM}\t{base64.b64encode(buf.getvalue()).decode()}\n")
    split.items[TSV_ITEM] = Item(
        TSV_ITEM,
        ImageRef(tsv=str(tsv), offset=len(line0.encode()), line=2),
        attribute="red square from a TSV",
        category="square",
    )
    bmp = images / f"{BMP_ITEM}.bmp"
    _draw(COLOURS["blue"], "circle").save(bmp, format="BMP")
    split.items[BMP_ITEM] = Item(
        BMP_ITEM, ImageRef(path=str(bmp)), captions=["a blue circle (bmp)"], category="circle"
    )

    model_dir = tiny_model(root / "model", texts=texts)
    encoder = create_encoder(f"hf:{model_dir}", device="cpu")
    emb_dir = root / "emb"
    encode_split(encoder, split, emb_dir, kinds=("images",), batch_size=16, progress=False)
    emb = load_embeddings(emb_dir, "images")
    meta = load_metadata(emb_dir, "images")
    index = build_index(
        emb.vectors, emb.ids, "Flat", items=[meta[i] for i in emb.ids], model=emb.model
    )
    index_dir = root / "index"
    index.save(index_dir)
    return {
        "index_dir": index_dir,
        "model_dir": model_dir,
        "ids": list(emb.ids),
        "images": images,
        "n": len(emb.ids),
    }
