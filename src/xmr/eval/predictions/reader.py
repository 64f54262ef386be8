"""Reading prediction and submission files: their kinds, detecting a kind, parsing a file into
its entries (the problems of single lines are collected for validation to raise together).

Kinds (``PREDICTION_KINDS``):

- ``track2``: one JSON object ``{"results": [{"text": ..., "image_names": [K names]}, ...]}``
  with the results in the order of ``test/test_text.txt`` (the split's query order). Strict JSON:
  the seed's sample (single quotes, a doubled outer brace) is an illustration, not a valid file.
- ``muge``: JSON lines ``{"query_id": ..., "item_ids": [top-K]}`` (extra fields are ignored).
- ``cnclip``: JSON lines ``{"text_id": ..., "image_ids": [top-K]}`` (Chinese-CLIP, text->image).
- ``cnclip-i2t``: JSON lines ``{"image_id": ..., "text_ids": [top-K]}`` (Chinese-CLIP, image->text).
- ``trec``: a TREC run, ``qid Q0 docid rank score tag`` per line. As trec_eval does, the ranking
  is by score (descending), ties by docid (descending); the rank column is not used. Its queries
  are texts (t2i) or, when they are all item ids, images (i2t).
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from xmr.errors import DataError, XmrError

# kind -> direction (None: decided from the ids, for TREC runs).
PREDICTION_KINDS: dict[str, str | None] = {
    "track2": "t2i",
    "muge": "t2i",
    "cnclip": "t2i",
    "cnclip-i2t": "i2t",
    "trec": None,
}
# JSON-lines kind -> (its query field, its ranked-ids field), for reading and writing.
JSONL_FIELDS = {
    "muge": ("query_id", "item_ids"),
    "cnclip": ("text_id", "image_ids"),
    "cnclip-i2t": ("image_id", "text_ids"),
}
MAX_PROBLEMS_SHOWN = 20


class PredictionError(DataError):
    """A prediction file that the scorers would reject; ``problems`` lists ``(line, message)``."""

    def __init__(self, path: str | Path, problems: list[tuple[int | None, str]]) -> None:
        self.problems = problems
        shown = [f"  line {ln}: {msg}" if ln else f"  {msg}" for ln, msg in problems]
        more = len(problems) - MAX_PROBLEMS_SHOWN
        text = "\n".join(shown[:MAX_PROBLEMS_SHOWN])
        if more > 0:
            text += f"\n  ... and {more} more"
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{len(problems)} {noun} in the prediction file:\n{text}", file=str(path))


class UnknownKindError(DataError):
    """A prediction file whose kind cannot be told from its content (name it: ``kind=``)."""


@dataclass
class PredictionEntry:
    """One query's ranked ids as written in the file. ``key`` is the query id (Track2: text)."""

    key: str
    ids: list[str]
    line: int | None


@dataclass
class PredictionFile:
    path: Path
    kind: str
    entries: list[PredictionEntry]
    problems: list[tuple[int | None, str]] = field(default_factory=list)
    warnings: list[tuple[int | None, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------- detection


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise XmrError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the prediction file ({exc})", file=str(path)) from None


def _first_line(text: str) -> str:
    return next((ln for ln in text.splitlines() if ln.strip()), "")


def detect_kind(path: str | Path, text: str | None = None) -> str:
    """The kind of a prediction file, from its content."""
    path = Path(path)
    text = _read_text(path) if text is None else text
    first = _first_line(text)
    if not first:
        raise DataError("the prediction file is empty", file=str(path))
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        if "results" in obj:
            return "track2"
        for kind, (key, ids) in JSONL_FIELDS.items():
            if key in obj or ids in obj:
                return kind
    stripped = text.lstrip()
    if stripped.startswith("{") and '"results"' in stripped[:4096].replace("'", '"'):
        return "track2"
    if len(first.split()) == 6:
        return "trec"
    raise UnknownKindError(
        "cannot tell the kind of this prediction file (Track2 JSON, MUGE/Chinese-CLIP JSON lines "
        f"or a TREC run); name it ({', '.join(PREDICTION_KINDS)})",
        file=str(path),
        line=1,
    )


# ------------------------------------------------------------------------------------ reading


def _as_id(value: object) -> str | None:
    """Ids may be JSON strings or integers (MUGE and Chinese-CLIP write integers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _id_list(value: object, what: str, where: str, line, problems) -> list[str] | None:
    if not isinstance(value, list):
        problems.append((line, f"{where}: '{what}' must be a list of ids"))
        return None
    ids = [_as_id(v) for v in value]
    bad = [v for v, i in zip(value, ids, strict=True) if i is None]
    if bad:
        problems.append((line, f"{where}: '{what}' holds {len(bad)} invalid ids, e.g. {bad[0]!r}"))
        return None
    return ids


def _result_lines(text: str) -> list[int]:
    """Line of each element of the top-level ``results`` array of a valid Track2 JSON text."""
    decoder = json.JSONDecoder()
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0) + 1  # past '{'
    while True:
        pos = skip(pos)
        if text[pos] == "}":
            return []
        key, pos = decoder.raw_decode(text, pos)
        pos = skip(skip(pos) + 1)  # past ':'
        if key == "results" and text[pos] == "[":
            lines, pos = [], skip(pos + 1)
            while text[pos] != "]":
                lines.append(line_of(pos))
                _, pos = decoder.raw_decode(text, pos)
                pos = skip(pos)
                pos = skip(pos + 1) if text[pos] == "," else pos
            return lines
        _, pos = decoder.raw_decode(text, pos)
        pos = skip(pos)
        pos += 1 if text[pos] == "," else 0


def _read_track2(path: Path, text: str) -> PredictionFile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"not valid JSON ({exc.msg}, column {exc.colno}); a Track2 submission is strict JSON "
            'such as {"results": [{"text": "...", "image_names": ["a.jpg", ...]}]} '
            "(double quotes, one pair of outer braces)",
            file=str(path),
            line=exc.lineno,
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise DataError('expected an object with a "results" list', file=str(path), line=1)
    lines = _result_lines(text)
    problems: list[tuple[int | None, str]] = []
    entries = []
    for i, result in enumerate(data["results"]):
        line = lines[i] if i < len(lines) else None
        where = f"results[{i}]"
        if not isinstance(result, dict) or not isinstance(result.get("text"), str):
            problems.append((line, f'{where}: expected {{"text": str, "image_names": [...]}}'))
            continue
        raw = result.get("image_names")
        ids = _id_list(raw, "image_names", where, line, problems)
        if ids is not None:
            spaced = [v for v in raw if isinstance(v, str) and v != v.strip()]
            if spaced:
                problems.append(
                    (
                        line,
                        f"{where}: image name {spaced[0]!r} has surrounding whitespace; the "
                        "official scorer compares names exactly and counts it as a miss",
                    )
                )
            # Exactly as written: the official scorer compares texts without stripping them.
            entries.append(PredictionEntry(result["text"], ids, line))
    return PredictionFile(path, "track2", entries, problems)


def _read_jsonl(path: Path, text: str, kind: str) -> PredictionFile:
    key_field, ids_field = JSONL_FIELDS[kind]
    problems: list[tuple[int | None, str]] = []
    warnings: list[tuple[int | None, str]] = []
    string_ids: list[tuple[int, str]] = []
    entries = []
    lines = text.splitlines()
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            if any(rest.strip() for rest in lines[n:]):  # trailing blank lines are harmless
                problems.append(
                    (n, "blank line: the official scorer cannot parse it and refuses the file")
                )
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append((n, f"not a JSON object ({exc.msg})"))
            continue
        if not isinstance(obj, dict):
            problems.append((n, "not a JSON object"))
            continue
        key = _as_id(obj.get(key_field))
        if key is None:
            problems.append((n, f"missing or invalid '{key_field}'"))
            continue
        ids = _id_list(obj.get(ids_field), ids_field, f"{key_field} {key}", n, problems)
        if ids is not None:
            entries.append(PredictionEntry(key, ids, n))
            _check_integer_ids(obj.get(key_field), obj.get(ids_field), n, problems, string_ids)
    if string_ids:
        more = f" and {len(string_ids) - 1} more lines" if len(string_ids) > 1 else ""
        line, example = string_ids[0]
        warnings.append(
            (
                line,
                f"string ids such as {example!r} (this line{more}); xmr accepts them, the official "
                "MUGE / Chinese-CLIP scorers refuse any id that is not a JSON integer",
            )
        )
    return PredictionFile(path, kind, entries, problems, warnings)


def _check_integer_ids(key, ids, line: int, problems, string_ids) -> None:
    """MUGE's and Chinese-CLIP's scorers accept JSON integers only: a number written as a
    string is refused (it would be refused there); another string is warned about."""
    strings = [v for v in [key, *ids] if isinstance(v, str)]
    numeric = [v for v in strings if isinstance(json_id(v.strip()), int)]
    if numeric:
        problems.append(
            (
                line,
                f"id {numeric[0]!r} is a JSON string; the official MUGE / Chinese-CLIP scorers "
                f"need integers and refuse the file (write {numeric[0].strip()} without quotes)",
            )
        )
    elif strings:
        string_ids.append((line, strings[0]))


def _read_trec(path: Path, text: str) -> PredictionFile:
    problems: list[tuple[int | None, str]] = []
    runs: dict[str, list[tuple[float, str]]] = {}
    first_line: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        parts = raw.split()
        if len(parts) != 6:
            problems.append((n, f"expected 'qid Q0 docid rank score tag', got {len(parts)} fields"))
            continue
        qid, _, docid, _, score, _ = parts
        try:
            value = float(score)
        except ValueError:
            problems.append((n, f"score {score!r} is not a number"))
            continue
        runs.setdefault(qid, []).append((value, docid))
        first_line.setdefault(qid, n)
    entries = []
    for qid, docs in runs.items():
        # trec_eval's order: score descending, then docid descending.
        docs.sort(reverse=True)
        entries.append(PredictionEntry(qid, [d for _, d in docs], first_line[qid]))
    return PredictionFile(path, "trec", entries, problems)


def read_predictions(path: str | Path, kind: str | None = None) -> PredictionFile:
    """Read a prediction file of ``kind`` (detected from the content when None).

    Problems in single lines are collected in ``problems`` (validation raises them); a file that
    cannot be read at all raises :class:`~xmr.errors.DataError` at once.
    """
    path = Path(path)
    text = _read_text(path)
    kind = kind or detect_kind(path, text)
    if kind not in PREDICTION_KINDS:
        raise XmrError(f"unknown prediction kind '{kind}' (known: {', '.join(PREDICTION_KINDS)})")
    if kind == "track2":
        return _read_track2(path, text)
    if kind == "trec":
        return _read_trec(path, text)
    return _read_jsonl(path, text, kind)


def json_id(value: str) -> int | str:
    """Write decimal ids as JSON integers, as MUGE and Chinese-CLIP expect."""
    return int(value) if value.isdigit() and (value == "0" or value[0] != "0") else value
