"""Where an item's image lives and how it is decoded, lazily and safely.

An image is referenced, never held: a file path, a line of a base64 TSV (by byte offset, so a
multi-GB TSV is never decoded into memory), or raw bytes. Decoding happens only when read.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xmr.errors import DataError

if TYPE_CHECKING:
    from PIL import Image as PILImage

# Decompression-bomb guard: PIL warns at ~89 Mpx and errors at twice that; we refuse earlier
# (a retrieval crop is never this big) and turn the warning into an error.
MAX_IMAGE_PIXELS = 64_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def decode_base64(text: str | bytes, *, file: str | None = None, line: int | None = None) -> bytes:
    """Decode base64 in the standard or the urlsafe alphabet, with or without padding."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    data = data.strip()
    if not data:
        raise DataError("empty base64 image", file=file, line=line, field="image")
    padded = data + b"=" * (-len(data) % 4)
    try:
        if b"-" in data or b"_" in data:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(
            f"bad base64 image data ({exc})", file=file, line=line, field="image"
        ) from None


@dataclass(frozen=True)
class ImageRef:
    """A lazy reference to one image.

    Exactly one of ``path`` (a file), ``tsv`` + ``offset`` (a line of an ``id\\tbase64`` TSV)
    or ``data`` (encoded bytes) is set. ``tsv_id`` is the id the TSV line held when it was
    indexed: reading checks it, so a TSV rewritten after an index was built is an error, not
    another item's image shown under this id.
    """

    path: str | None = None
    tsv: str | None = None
    offset: int = 0
    line: int | None = None
    data: bytes | None = None
    tsv_id: str | None = None

    @property
    def kind(self) -> str:
        if self.path is not None:
            return "path"
        if self.tsv is not None:
            return "tsv"
        return "bytes"

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        if self.tsv is not None:
            return f"{self.tsv}:{self.line}" if self.line else f"{self.tsv}@{self.offset}"
        return f"<{len(self.data or b'')} bytes>"

    def read_bytes(self) -> bytes:
        """The encoded image bytes (JPEG/PNG/...)."""
        if self.path is not None:
            try:
                return Path(self.path).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read image: {exc.strerror}", file=self.path) from None
        if self.tsv is not None:
            try:
                with open(self.tsv, "rb") as fh:
                    fh.seek(self.offset)
                    raw = fh.readline()
            except OSError as exc:
                raise DataError(
                    f"cannot read image: {exc.strerror}", file=self.tsv, line=self.line
                ) from None
            parts = raw.rstrip(b"\r\n").split(b"\t")
            if len(parts) < 2:
                raise DataError(
                    "expected 'id<TAB>base64'", file=self.tsv, line=self.line, field="image"
                )
            found = parts[0].decode("utf-8", "replace").strip()
            if self.tsv_id is not None and found != self.tsv_id:
                raise DataError(
                    f"the line at byte {self.offset} holds id '{found}', not '{self.tsv_id}': "
                    "the file changed after it was read (re-read the data set, rebuild the index)",
                    file=self.tsv,
                    line=self.line,
                    field="id",
                )
            return decode_base64(parts[-1], file=self.tsv, line=self.line)
        if self.data is None:
            raise DataError("image reference holds no data")
        return self.data

    def open(self, *, draft_size: tuple[int, int] | None = None) -> PILImage.Image:
        """Decode to an RGB PIL image; ``draft_size`` lets JPEG decode at reduced scale."""
        return decode_image(self.read_bytes(), source=self.describe(), draft_size=draft_size)


def decode_image(
    data: bytes, *, source: str = "<bytes>", draft_size: tuple[int, int] | None = None
) -> PILImage.Image:
    """Decode encoded bytes to RGB with decompression-bomb protection and a clear error."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"image is {w}x{h} pixels, over the limit of {MAX_IMAGE_PIXELS}", file=source
                )
            if draft_size is not None and img.format == "JPEG":
                # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale: far less work for big photos,
                # but not the reference processor's pixels (opt-in: ``--draft``).
                img.draft("RGB", draft_size)
            img.load()
            return to_rgb(img)
    except DataError:
        raise
    except UnidentifiedImageError:  # PIL's message names its BytesIO object, not the file
        what = "an empty file" if not data else f"{len(data)} bytes in no image format PIL reads"
        raise DataError(f"undecodable image ({what})", file=source) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"undecodable image ({exc})", file=source) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"refused as a decompression bomb ({exc})", file=source) from None


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """An RGB PIL image, converted as transformers' ``convert_to_rgb`` does: transparency is
    composited on white. One deliberate difference, friendlier than transformers: 16-bit
    greyscale (PIL modes ``I;16*`` and ``I``, from 16-bit PNG/TIFF) is scaled to 8 bits
    (``round(v * 255 / 65535)``); PIL's own conversion, which transformers uses, clips every
    value above 255 to white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):
        import numpy as np

        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resolve_image_file(directory: Path, name: str) -> Path | None:
    """Find ``name`` in ``directory``; a name without extension (seed 000's ``090000``) matches
    the one existing file with an image extension."""
    candidate = directory / name
    if candidate.is_file():
        return candidate
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        for ext in IMAGE_EXTENSIONS:
            for variant in (ext, ext.upper()):
                c = directory / f"{name}{variant}"
                if c.is_file():
                    return c
    return None
