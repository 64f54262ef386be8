"""The rankings a report is drawn from, taken from what the evaluation had: a prediction file's
own rankings (as deep as the file goes), or an embedded split ranked once, exactly, 100 deep
(the curves' K range) instead of K deep."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmr.eval.predictions import read_predictions, validate_predictions
from xmr.eval.ranking import topk_from_embeddings
from xmr.io.provenance import now, xmr_version
from xmr.workflows.report.ranks import CURVE_DEPTH


def predictions_rankings(
    pred_path: str | Path, split, *, k: int = 10, kind: str | None = None
) -> dict[str, dict[str, list[str]]]:
    """``direction -> query id -> ranked ids`` of a prediction file, as the scorer read it."""
    direction, rankings = validate_predictions(read_predictions(pred_path, kind), split, k=k)
    return {direction: rankings}


def embedded_rankings(
    emb, directions: Sequence[str], *, depth: int = CURVE_DEPTH, device: Any = None
) -> dict[str, dict[str, list[str]]]:
    """``direction -> query id -> ranked ids`` of a :class:`~xmr.eval.embedded.SplitEmbeddings`,
    ``depth`` deep (at most the other side's size); items that failed to encode rank last."""
    out: dict[str, dict[str, list[str]]] = {}
    for direction in directions:
        if direction == "t2i":
            queries, items, qids, iids = emb.text, emb.items, emb.query_ids, emb.item_ids
        else:
            queries, items, qids, iids = emb.items, emb.text, emb.item_ids, emb.query_ids
        # A failed item is a NaN row: as a query it ranks nothing, as a result it ranks last.
        queries = np.nan_to_num(np.asarray(queries), nan=0.0)
        items = np.nan_to_num(np.asarray(items), nan=-1.0)
        n = min(depth, len(iids))
        index, _ = topk_from_embeddings(queries, items, n, device=device)
        out[direction] = {q: [iids[j] for j in index[r]] for r, q in enumerate(qids)}
    return out


def run_provenance(
    *,
    model: Any = None,
    fingerprint: Any = None,
    data: Any = None,
    split: Any = None,
    argv: Sequence[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What the report's provenance section lists; ``argv`` defaults to this process's."""
    command = shlex.join(["xmr", *(sys.argv[1:] if argv is None else argv)])
    out = {
        "model": model,
        "fingerprint": fingerprint,
        "data": data,
        "split": split,
        "xmr version": xmr_version(),
        "command": command,
        "time": now(),
    }
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def model_fingerprint(model_record: Mapping[str, Any] | None) -> str | None:
    """The fingerprint an embeddings manifest recorded for its model, when it did."""
    if not model_record:
        return None
    return model_record.get("fingerprint") or model_record.get("spec")
