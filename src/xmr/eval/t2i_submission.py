"""MUGE T2I submissions (``T2I_test.tsv`` filled in): ``image_id<TAB>base64`` per text, in order.

A valid submission has one line per line of the texts file (``T2I_*.txt.tsv``), with the same
ids in the same order, each with an image that decodes; nothing else (no unknown id, duplicate,
empty or extra line). The seed's scorer decodes with ``base64.urlsafe_b64decode``, which also
reads the standard alphabet that its own encoding snippet (``base64.b64encode``) writes; xmr
accepts both and writes the standard one.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmr.data.images import MAX_IMAGE_PIXELS, ImageRef, decode_base64
from xmr.data.readers._common import open_binary, require_path
from xmr.data.readers.muge_t2i import read_t2i_texts
from xmr.errors import DataError, XmrError

MAX_LISTED = 50


@dataclass
class Problem:
    line: int | None
    message: str
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


@dataclass
class SubmissionCheck:
    """What ``validate_t2i_submission`` found. ``images`` maps id -> its reference, in the
    texts' order, for the ids whose line is well-formed."""

    path: str
    texts: str
    expected: int
    lines: int = 0
    problems: list[Problem] = field(default_factory=list)
    images: dict[str, ImageRef] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "texts": self.texts,
            "valid": self.ok,
            "expected": self.expected,
            "lines": self.lines,
            "images_ok": len(self.images),
            "problems": [p.to_dict() for p in self.problems],
            "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common()},
            "modes": dict(self.modes.most_common()),
        }

    def describe(self, limit: int = 10) -> str:
        lines = [f"{self.path}:{p.line or '-'}: {p.message}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more problems")
        return "\n".join(lines)


def _probe_image(data: bytes) -> tuple[tuple[int, int], str]:
    """(size, mode) of encoded image bytes, decoding every pixel (a truncated file fails)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
            raise ValueError(f"{img.size[0]}x{img.size[1]} pixels, over {MAX_IMAGE_PIXELS}")
        size, mode = img.size, img.mode
        img.load()
    return size, mode


def validate_t2i_submission(
    path: str | Path, texts: str | Path, *, decode: bool = True
) -> SubmissionCheck:
    """Check a submission against its texts file; every problem listed with its line.

    Args:
        path: the submission (``image_id<TAB>base64`` lines).
        texts: the ``T2I_*.txt.tsv`` whose ids it must cover, in order.
        decode: decode every image (size and mode reported); False checks the lines only.
    """
    path, texts = Path(path), Path(texts)
    require_path(path)
    expected = read_t2i_texts(texts)
    order = {t.id: i for i, t in enumerate(expected)}
    check = SubmissionCheck(str(path), str(texts), len(expected))
    seen: dict[str, int] = {}
    sequence: list[tuple[int, str]] = []
    offset = 0
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            start, offset = offset, offset + len(raw)
            check.lines = lineno
            problem = _check_line(raw, lineno, order, seen)
            if isinstance(problem, Problem):
                check.problems.append(problem)
                continue
            iid, payload = problem
            seen[iid] = lineno
            ref = ImageRef(tsv=str(path), offset=start, line=lineno, tsv_id=iid)
            if decode:
                try:
                    size, mode = _probe_image(decode_base64(payload, file=str(path), line=lineno))
                except DataError as exc:
                    check.problems.append(Problem(lineno, exc.message, "image"))
                    continue
                except Exception as exc:  # PIL raises many types for a broken image
                    check.problems.append(Problem(lineno, f"undecodable image ({exc})", "image"))
                    continue
                check.sizes[size] += 1
                check.modes[mode] += 1
            check.images[iid] = ref
            sequence.append((lineno, iid))
    missing = [t for t in expected if t.id not in seen]
    for t in missing[:MAX_LISTED]:
        check.problems.append(Problem(None, f"missing id '{t.id}' ({texts.name}:{t.line})", "id"))
    if len(missing) > MAX_LISTED:
        check.problems.append(Problem(None, f"... {len(missing) - MAX_LISTED} more ids missing"))
    line_of = {t.id: t.line for t in expected}
    check.problems.extend(_order_problems(sequence, order, line_of, texts.name))
    check.problems.sort(key=lambda p: (p.line is None, p.line or 0))
    check.images = {t.id: check.images[t.id] for t in expected if t.id in check.images}
    return check


def _check_line(raw: bytes, lineno: int, order: dict[str, int], seen: dict[str, int]):
    line = raw.rstrip(b"\r\n")
    if not line.strip():
        return Problem(lineno, "empty line (extra line)")
    tab = line.find(b"\t")
    if tab < 0:
        return Problem(lineno, "expected 'image_id<TAB>base64', found no tab (no image)", "image")
    try:
        iid = line[:tab].decode("utf-8").strip()
    except UnicodeDecodeError:
        return Problem(lineno, "id is not valid UTF-8", "id")
    payload = line[tab + 1 :]
    if b"\t" in payload:
        return Problem(lineno, "more than 2 tab-separated fields")
    if not iid:
        return Problem(lineno, "empty image id", "id")
    if iid not in order:
        return Problem(lineno, f"unknown id '{iid}' (not in the texts file: extra line)", "id")
    if iid in seen:
        return Problem(lineno, f"duplicate id '{iid}' (first on line {seen[iid]})", "id")
    if not payload.strip():
        return Problem(lineno, "empty base64 image", "image")
    return iid, payload


def _order_problems(
    sequence: list[tuple[int, str]], order: dict[str, int], line_of: dict[str, int], name: str
) -> list[Problem]:
    """The first line whose id comes before the previous line's id in the texts file."""
    problems = []
    for (_, prev), (lineno, iid) in zip(sequence, sequence[1:], strict=False):
        if order[iid] < order[prev]:
            problems.append(
                Problem(
                    lineno,
                    f"id '{iid}' out of order: {name} lists it before '{prev}' (its line "
                    f"{line_of[iid]}, before line {line_of[prev]})",
                    "id",
                )
            )
            break
    return problems


def read_t2i_submission(path: str | Path, texts: str | Path) -> tuple[list[str], list[ImageRef]]:
    """The ids (in the texts' order) and image references of a valid submission.

    Raises:
        XmrError: the submission is not valid (the first problems listed).
    """
    check = validate_t2i_submission(path, texts, decode=False)
    if not check.ok:
        raise XmrError(
            f"{path}: not a valid submission for {texts} ({len(check.problems)} problems; "
            f"see `xmr t2i validate`):\n{check.describe()}"
        )
    return list(check.images), list(check.images.values())
