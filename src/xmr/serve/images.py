"""Serving an item's image from where its metadata says it lives: a file or a base64 TSV line.

Item ids are looked up in the index's metadata and never joined into a file path, so no request
can name a file the operator did not index. Browsers get the original bytes when they are a
format every browser shows (JPEG, PNG, WebP, GIF), identified by their content, not by a file
name; anything else (TIFF, BMP, ...) is re-encoded. Thumbnails are decoded with the
decompression-bomb guard, JPEG draft mode for big photos, and kept in a small LRU cache.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

from xmr.data.images import ImageRef, decode_image
from xmr.errors import DataError
from xmr.serve.limits import ApiError

# Formats every browser renders, by the magic bytes that open them.
_WEB_FORMATS = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_web_type(data: bytes) -> str | None:
    """The MIME type of ``data`` when it is a browser-safe image format, else None."""
    for magic, mime in _WEB_FORMATS:
        if data.startswith(magic):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class ImageBody:
    data: bytes
    media_type: str
    etag: str


def _etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'


class ImageStore:
    """Reads items' images by reference and makes thumbnails, with a byte-bounded LRU cache."""

    def __init__(self, *, thumb_size: int = 256, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.thumb_size = int(thumb_size)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[tuple[str, str], ImageBody] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def original(self, key: str, ref: ImageRef) -> ImageBody:
        """The image as stored when browsers show that format, else re-encoded to PNG."""
        data = ref.read_bytes()
        mime = sniff_web_type(data)
        if mime is not None:
            return ImageBody(data, mime, _etag(data))
        img = decode_image(data, source=f"item {key}")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out = buf.getvalue()
        return ImageBody(out, "image/png", _etag(out))

    def thumbnail(self, key: str, ref: ImageRef) -> ImageBody:
        """A JPEG no larger than ``thumb_size`` on its longest side (cached)."""
        cache_key = (key, "thumb")
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None:
                self._cache.move_to_end(cache_key)
                return hit
        side = self.thumb_size
        img = decode_image(ref.read_bytes(), source=f"item {key}", draft_size=(side, side))
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85, optimize=True)
        data = buf.getvalue()
        body = ImageBody(data, "image/jpeg", _etag(data))
        self._remember(cache_key, body)
        return body

    def _remember(self, key: tuple[str, str], body: ImageBody) -> None:
        size = len(body.data)
        if size > self.cache_bytes:
            return
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._cached_bytes -= len(old.data)
            self._cache[key] = body
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= len(dropped.data)


def decode_upload(data: bytes, max_pixels: int, draft_size: tuple[int, int] | None = None):
    """Decode an uploaded image, refusing decompression bombs before any pixel is decoded;
    ``draft_size``: JPEG draft decoding, for an index whose images were draft-decoded."""
    import warnings

    from PIL import Image

    try:
        # Only the header is read here; the size is checked before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
    except Exception:  # noqa: BLE001 - reported below by decode_image's clear message
        w = h = 0
    if w * h > max_pixels:
        raise ApiError(
            400,
            "bad_upload",
            f"the image is {w}x{h} pixels, over the limit of {max_pixels}",
            field="image",
        )
    try:
        return decode_image(data, source="upload", draft_size=draft_size)
    except DataError as exc:
        raise ApiError(400, "bad_upload", exc.message, field="image") from None
