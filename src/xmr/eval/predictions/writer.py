"""Writing rankings as a prediction file of any kind (see :mod:`xmr.eval.predictions.reader`),
atomically; TREC scores chosen so that trec_eval reads back the ranking's order."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from xmr.data.dataset import Split
from xmr.errors import XmrError
from xmr.eval.predictions.reader import JSONL_FIELDS, PREDICTION_KINDS, json_id
from xmr.io.atomic import atomic_write


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
        key, ids_field = JSONL_FIELDS[kind]
        text = "".join(
            json.dumps({key: json_id(q), ids_field: [json_id(i) for i in ids]}, ensure_ascii=False)
            + "\n"
            for q, ids in rankings.items()
        )
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
