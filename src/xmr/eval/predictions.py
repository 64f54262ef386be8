"""Prediction and submission files: detect, read, validate against a split, write.

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

Validation follows the official scorers (MUGE/Chinese-CLIP ``evaluation.py``) and is a little
stricter: every query with relevance must be present (for Track2, every query of the split, in
order); each list holds exactly K unique ids (TREC runs: any length, unique docids); every id
exists in the split (Track2 image names may be item ids or image file names, with or without the
extension); a query appears once and is known. All problems are collected and raised together as
one :class:`PredictionError` that names the file and the line of each.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xmr.data.dataset import Split
from xmr.errors import DataError, XmrError

# kind -> direction (None: decided from the ids, for TREC runs).
PREDICTION_KINDS: dict[str, str | None] = {
    "track2": "t2i",
    "muge": "t2i",
    "cnclip": "t2i",
    "cnclip-i2t": "i2t",
    "trec": None,
}
_JSONL_FIELDS = {
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
        for kind, (key, ids) in _JSONL_FIELDS.items():
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
        ids = _id_list(result.get("image_names"), "image_names", where, line, problems)
        if ids is not None:
            entries.append(PredictionEntry(result["text"].strip(), ids, line))
    return PredictionFile(path, "track2", entries, problems)


def _read_jsonl(path: Path, text: str, kind: str) -> PredictionFile:
    key_field, ids_field = _JSONL_FIELDS[kind]
    problems: list[tuple[int | None, str]] = []
    entries = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
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
    return PredictionFile(path, kind, entries, problems)


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


# --------------------------------------------------------------------------------- validation


def item_aliases(split: Split) -> dict[str, str]:
    """Name -> item id: the id itself, and the image file's name and stem where unambiguous."""
    aliases: dict[str, str] = {}
    taken: dict[str, str | None] = {}
    for iid, item in split.items.items():
        path = item.image.path if item.image is not None else None
        if path:
            name = os.path.basename(path)
            for alias in {name, os.path.splitext(name)[0]} - {iid}:
                taken[alias] = iid if alias not in taken else None
    aliases.update({a: i for a, i in taken.items() if i is not None and a not in split.items})
    aliases.update({iid: iid for iid in split.items})
    return aliases


def _direction(pf: PredictionFile, split: Split) -> str:
    direction = PREDICTION_KINDS[pf.kind]
    if direction is not None:
        return direction
    keys = {e.key for e in pf.entries}
    if keys and not keys & split.queries.keys() and keys <= split.items.keys():
        return "i2t"
    return "t2i"


def _preview(ids: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" (+{len(ids) - n} more)" if len(ids) > n else "")


def validate_predictions(
    pf: PredictionFile, split: Split, *, k: int = 10
) -> tuple[str, dict[str, list[str]]]:
    """Check ``pf`` against ``split``; return ``(direction, query id -> ranked ids)``.

    Ids are returned as the split's own ids (Track2 texts become query ids, image names item
    ids). Raises :class:`PredictionError` listing every problem found.
    """
    direction = _direction(pf, split)
    problems = list(pf.problems)
    if direction == "t2i":
        expected = [q for q in split.queries if split.relevance.get(q)]
        targets = item_aliases(split)
        query_key = {q: q for q in split.queries}
    else:
        inverse = split.item_relevance()
        expected = [i for i in split.items if inverse.get(i)]
        targets = {q: q for q in split.queries}
        query_key = item_aliases(split)
    by_text: dict[str, list[str]] = {}
    if pf.kind == "track2":
        expected = list(split.queries)
        for qid, query in split.queries.items():
            by_text.setdefault(query.text.strip(), []).append(qid)

    rankings: dict[str, list[str]] = {}
    seen_line: dict[str, int | None] = {}
    order: list[str] = []
    for entry in pf.entries:
        what = f"text {entry.key!r}" if pf.kind == "track2" else f"query {entry.key}"
        if pf.kind == "track2":
            unused = [q for q in by_text.get(entry.key, ()) if q not in seen_line]
            qid = unused[0] if unused else (by_text.get(entry.key) or [None])[0]
        else:
            qid = query_key.get(entry.key)
        if qid is None:
            problems.append((entry.line, f"{what} is not in split '{split.name}'"))
            continue
        if qid in seen_line:
            problems.append((entry.line, f"{what} appears again (first at line {seen_line[qid]})"))
            continue
        seen_line[qid] = entry.line
        order.append(qid)
        if pf.kind != "trec" and len(entry.ids) != k:
            problems.append((entry.line, f"{what}: {len(entry.ids)} ids, expected exactly {k}"))
        duplicated = sorted({i for i in entry.ids if entry.ids.count(i) > 1})
        if duplicated:
            problems.append((entry.line, f"{what}: repeated ids {_preview(duplicated)}"))
        unknown = [i for i in entry.ids if i not in targets]
        if unknown:
            problems.append((entry.line, f"{what}: ids not in the data set: {_preview(unknown)}"))
        rankings[qid] = [targets.get(i, i) for i in entry.ids]

    missing = [q for q in expected if q not in rankings]
    for qid in missing:
        label = split.queries[qid].text if pf.kind == "track2" else qid
        problems.append((None, f"no prediction for query {label!r}"))
    if pf.kind == "track2" and not missing and len(order) == len(expected):
        for pos, (got, want) in enumerate(zip(order, expected, strict=True)):
            if got != want:
                problems.append(
                    (
                        seen_line[got],
                        f"results[{pos}] is {split.queries[got].text!r} but test text #{pos + 1} "
                        f"is {split.queries[want].text!r} (results must follow test_text.txt)",
                    )
                )
    if problems:
        raise PredictionError(pf.path, problems)
    return direction, rankings


# ------------------------------------------------------------------------------------ writing


def _json_id(value: str) -> int | str:
    """Write decimal ids as JSON integers, as MUGE and Chinese-CLIP expect."""
    return int(value) if value.isdigit() and (value == "0" or value[0] != "0") else value


def _item_name(split: Split, iid: str) -> str:
    item = split.items.get(iid)
    if item is not None and item.image is not None and item.image.path:
        return os.path.basename(item.image.path)
    return iid


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_predictions(
    path: str | Path,
    rankings: Mapping[str, Sequence[str]],
    *,
    kind: str,
    split: Split | None = None,
    scores: Mapping[str, Sequence[float]] | None = None,
    tag: str = "xmr",
) -> Path:
    """Write ``rankings`` (query id -> ranked ids, best first) as a prediction file of ``kind``.

    Track2 needs ``split`` (texts, their order, image file names); TREC runs use ``scores`` when
    given, else a score that falls with the rank. The file is replaced atomically.
    """
    path = Path(path)
    if kind not in PREDICTION_KINDS:
        raise XmrError(f"unknown prediction kind '{kind}' (known: {', '.join(PREDICTION_KINDS)})")
    if kind == "track2":
        if split is None:
            raise XmrError("writing a Track2 submission needs the split (texts and their order)")
        results = [
            {"text": split.queries[q].text, "image_names": [_item_name(split, i) for i in ids]}
            for q in split.queries
            if (ids := rankings.get(q)) is not None
        ]
        text = json.dumps({"results": results}, ensure_ascii=False, indent=1) + "\n"
    elif kind == "trec":
        rows = []
        for qid, ids in rankings.items():
            values = scores[qid] if scores is not None else [len(ids) - r for r in range(len(ids))]
            rows += [
                f"{qid} Q0 {iid} {r} {float(s):.6f} {tag}"
                for r, (iid, s) in enumerate(zip(ids, values, strict=True), 1)
            ]
        text = "".join(row + "\n" for row in rows)
    else:
        key, ids_field = _JSONL_FIELDS[kind]
        text = "".join(
            json.dumps(
                {key: _json_id(q), ids_field: [_json_id(i) for i in ids]}, ensure_ascii=False
            )
            + "\n"
            for q, ids in rankings.items()
        )
    _atomic_write(path, text)
    return path
