"""Small files for the reader tests: tiny images, base64 lines, assertions on DataError."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from xmr.errors import DataError

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (90, 90, 90), (10, 10, 10)]


def image_bytes(k: int = 0, fmt: str = "JPEG", size: int = 8) -> bytes:
    """A distinct tiny image per ``k`` (a colour and a marker pixel)."""
    img = Image.new("RGB", (size, size), COLOURS[k % len(COLOURS)])
    img.putpixel((k % size, (k // size) % size), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, k: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    path.write_bytes(image_bytes(k, fmt))
    return path


def b64(k: int = 0, *, urlsafe: bool = False) -> str:
    data = image_bytes(k)
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()


def digest(item) -> str:
    return hashlib.sha1(item.image.read_bytes()).hexdigest()


def relevance_by_text(split) -> dict[str, set[str]]:
    """query text -> ids of relevant items (union over queries with the same text)."""
    out: dict[str, set[str]] = {}
    for qid, ids in split.relevance.items():
        out.setdefault(split.queries[qid].text, set()).update(ids)
    return out


def relevance_by_content(split) -> dict[str, set[str]]:
    """query text -> digests of relevant images: comparable across formats whose ids differ."""
    return {
        text: {digest(split.items[i]) for i in ids}
        for text, ids in relevance_by_text(split).items()
    }


def assert_data_error(call, *, file, line, field=None, match=None) -> DataError:
    """``call()`` raises a DataError that names ``file``, ``line`` and ``field``."""
    with pytest.raises(DataError) as info:
        call()
    err = info.value
    message = str(err)
    assert Path(err.file).name == Path(file).name, message
    assert err.line == line, message
    assert f"{Path(file).name}:{line}" in message if line else Path(file).name in message
    if field is not None:
        assert err.field == field, message
        assert f"field '{field}'" in message
    if match is not None:
        assert match in message, message
    return err
