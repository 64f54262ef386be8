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

Validation refuses every file that the official scorer (the Track2 baseline's
``cal_map_json.py``, Chinese-CLIP's ``evaluation.py`` / ``evaluation_tr.py``, MUGE's
``evaluation.py``, trec_eval) would refuse or score otherwise than xmr does, and says why:

- ids and names match exactly, as the scorers compare them: a Track2 image name is the ground
  truth's spelling of it (:meth:`~xmr.data.dataset.Split.item_name`: ``090000`` where the label
  file writes ``090000``, ``000240.jpg`` where ``test_gt.txt`` does); a name that only resolves
  to an image with another spelling (without its extension, the file name for an id) is a
  problem naming its line, since the official scorer counts it as a miss;
- a Track2 ``text`` is the test text exactly (the scorer refuses a trailing space with "The order
  of texts is wrong"), every text of the split is there, in order;
- MUGE / Chinese-CLIP ids are JSON integers (their scorers refuse ``"1278"``); a string id that
  is not a number is accepted with a warning (xmr's own data sets may have such ids, the
  official scorers would refuse them); a blank line is refused (the scorers cannot parse it);
- every judged query is present, once; each list holds exactly K unique ids (TREC runs: any
  length, unique docids); every id exists in the split (the scorers would count an unknown id
  as a miss, a repeated Track2 name as a second hit).

All problems are collected and raised together as one :class:`PredictionError` that names the
file and the line of each; warnings are kept in ``PredictionFile.warnings``.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xmr.data.dataset import Split
from xmr.errors import DataError, XmrError
from xmr.io.atomic import atomic_write

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
    key_field, ids_field = _JSONL_FIELDS[kind]
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
    numeric = [v for v in strings if isinstance(_json_id(v.strip()), int)]
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


# --------------------------------------------------------------------------------- validation


def item_aliases(split: Split) -> dict[str, str]:
    """Name -> item id for every spelling a person might use: the id itself, the ground truth's
    name, the image file's name and stem where unambiguous. Only for explaining a mismatch:
    validation matches exact names (:func:`exact_names`)."""
    aliases: dict[str, str] = {}
    taken: dict[str, str | None] = {}
    for iid, item in split.items.items():
        path = item.image.path if item.image is not None else None
        names = {split.item_name(iid)}
        if path:
            name = os.path.basename(path)
            names |= {name, os.path.splitext(name)[0]}
        for alias in names - {iid}:
            taken[alias] = iid if alias not in taken else None
    aliases.update({a: i for a, i in taken.items() if i is not None and a not in split.items})
    aliases.update({iid: iid for iid in split.items})
    return aliases


def exact_names(split: Split, kind: str) -> dict[str, str]:
    """Name -> item id as the official scorer of ``kind`` matches them: the ground truth's
    spelling for Track2 (:meth:`~xmr.data.dataset.Split.item_name`), the id otherwise."""
    if kind == "track2":
        return {split.item_name(iid): iid for iid in split.items}
    return {iid: iid for iid in split.items}


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


_UNKNOWN = {
    "track2": "the official scorer counts them as misses",
    "trec": "trec_eval counts them as non-relevant",
}
_REPEATED = {
    "track2": "the official scorer would count a repeated relevant name as a second hit",
    "trec": "trec_eval refuses duplicate docids",
}


def _respelled(names: Sequence[str], exact: Mapping[str, str], aliases, split, kind) -> list:
    """``(name, exact name)`` for names that are not exact but resolve to an item."""
    out = []
    for name in names:
        if name not in exact and name in aliases:
            iid = aliases[name]
            out.append((name, split.item_name(iid) if kind == "track2" else iid))
    return out


def _respelling_problem(what: str, pairs: list, kind: str) -> str:
    name, want = pairs[0]
    more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
    scorer = "the official scorer" if kind != "trec" else "trec_eval"
    return (
        f"{what}: {name!r} is not how the ground truth names {want!r}{more}; {scorer} compares "
        f"names as exact strings and counts {name!r} as a miss (write {want!r})"
    )


def validate_predictions(
    pf: PredictionFile, split: Split, *, k: int = 10
) -> tuple[str, dict[str, list[str]]]:
    """Check ``pf`` against ``split``; return ``(direction, query id -> ranked ids)``.

    Ids are returned as the split's own ids (Track2 texts become query ids, image names item
    ids). Raises :class:`PredictionError` listing every problem found (see the module
    docstring); warnings are added to ``pf.warnings``.
    """
    direction = _direction(pf, split)
    problems = list(pf.problems)
    aliases = item_aliases(split)
    if direction == "t2i":
        expected = [q for q in split.queries if q in split.relevance]
        targets = exact_names(split, pf.kind)
        query_key = {q: q for q in split.queries}
    else:
        inverse = split.item_relevance()
        expected = [i for i in split.items if inverse.get(i)]
        targets = {q: q for q in split.queries}
        query_key = {i: i for i in split.items}
    by_text: dict[str, list[str]] = {}
    if pf.kind == "track2":
        expected = list(split.queries)
        for qid, query in split.queries.items():
            by_text.setdefault(query.text, []).append(qid)

    rankings: dict[str, list[str]] = {}
    seen_line: dict[str, int | None] = {}
    order: list[str] = []
    for entry in pf.entries:
        what = f"text {entry.key!r}" if pf.kind == "track2" else f"query {entry.key}"
        if pf.kind == "track2":
            candidates = by_text.get(entry.key)
            if candidates is None and entry.key.strip() in by_text:
                problems.append(
                    (
                        entry.line,
                        f"{what} has surrounding whitespace that test text "
                        f"{entry.key.strip()!r} has not; the official scorer compares texts "
                        "exactly and refuses the whole file ('The order of texts is wrong')",
                    )
                )
                candidates = by_text[entry.key.strip()]
            unused = [q for q in candidates or () if q not in seen_line]
            qid = unused[0] if unused else (candidates or [None])[0]
        else:
            qid = query_key.get(entry.key)
            if qid is None and entry.key in aliases and direction == "i2t":
                problems.append(
                    (entry.line, _respelling_problem(what, [(entry.key, aliases[entry.key])],
                                                     pf.kind))
                )  # fmt: skip
                qid = aliases[entry.key]
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
            why = _REPEATED.get(pf.kind, "the official scorer refuses them")
            problems.append((entry.line, f"{what}: repeated ids {_preview(duplicated)} ({why})"))
        respelled = _respelled(entry.ids, targets, aliases, split, pf.kind)
        if respelled and direction == "t2i":
            problems.append((entry.line, _respelling_problem(what, respelled, pf.kind)))
        unknown = [i for i in entry.ids if i not in targets and i not in aliases]
        if direction == "i2t":
            unknown = [i for i in entry.ids if i not in targets]
        if unknown:
            why = _UNKNOWN.get(pf.kind, "the official scorer counts them as misses")
            problems.append(
                (entry.line, f"{what}: ids not in the data set: {_preview(unknown)} ({why})")
            )
        rankings[qid] = [targets.get(i, aliases.get(i, i)) for i in entry.ids]

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


def trec_scores(ids: Sequence[str], scores: Sequence[float]) -> list[float]:
    """Scores for a TREC run from which trec_eval's order (score descending, then docid
    descending) gives back ``ids``' order exactly.

    Each score is written in full (``repr``: the shortest text that reads back as the same
    float64, so a float32 score survives unchanged). Where the order would not survive, a tie
    whose docids trec_eval would swap, or a score above the one ranked before it, the score
    becomes the next float64 below its predecessor's: a change of one unit in the last place,
    far below any float32 difference, that keeps the ranking the file was written from."""
    out: list[float] = []
    for n, (iid, value) in enumerate(zip(ids, scores, strict=True)):
        value = float(value)
        if not n and math.isnan(value):  # nothing encoded: any number keeps the order
            value = 0.0
        if n:
            prev = out[-1]
            if value > prev or (value == prev and iid > ids[n - 1]) or math.isnan(value):
                value = math.nextafter(prev, -math.inf)
        out.append(value)
    return out


def _atomic_write(path: Path, text: str) -> None:
    # The shared writer: fsynced, no temporary left by a failure, a full disk named in one line.
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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

    Track2 needs ``split`` (texts, their order, and each image's name as the ground truth spells
    it, :meth:`~xmr.data.dataset.Split.item_name`: the label or ground-truth file's spelling,
    else the ``test_images/`` file name, which is the item id there). TREC runs use ``scores``
    when given, else a score that falls with the rank, written so that trec_eval's order is the
    ranking's order (:func:`trec_scores`). The file is replaced atomically.
    """
    from xmr.io.atomic import atomic_write

    path = Path(path)
    if kind not in PREDICTION_KINDS:
        raise XmrError(f"unknown prediction kind '{kind}' (known: {', '.join(PREDICTION_KINDS)})")
    if kind == "track2":
        if split is None:
            raise XmrError("writing a Track2 submission needs the split (texts and their order)")
        results = [
            {"text": split.queries[q].text, "image_names": [split.item_name(i) for i in ids]}
            for q in split.queries
            if (ids := rankings.get(q)) is not None
        ]
        text = json.dumps({"results": results}, ensure_ascii=False, indent=1) + "\n"
    elif kind == "trec":
        rows = []
        for qid, ids in rankings.items():
            values = scores[qid] if scores is not None else [len(ids) - r for r in range(len(ids))]
            rows += [
                f"{qid} Q0 {iid} {r} {s!r} {tag}"
                for r, (iid, s) in enumerate(zip(ids, trec_scores(ids, values), strict=True), 1)
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
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
