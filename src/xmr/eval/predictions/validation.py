"""Validating a prediction file against a split, as the official scorers would.

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

import os
from collections.abc import Mapping, Sequence

from xmr.data.dataset import Split
from xmr.eval.predictions.reader import (
    PREDICTION_KINDS,
    PredictionError,
    PredictionFile,
)


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
