"""Submission files from rankings: pick the format a data set's scorer expects, write it, and
check it the way the official scorer would before anyone uploads it.

The writing and the checking are :func:`xmr.eval.predictions.write_predictions` and
:func:`~xmr.eval.predictions.validate_predictions`; this module decides the format and the cut.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from xmr.errors import XmrError
from xmr.io.atomic import check_output_file, ensure_parent
from xmr.io.failures import WriteError, write_error

# The text->item submission kinds (cnclip-i2t is a scoring format, not a submission one).
SUBMISSION_FORMATS = ("track2", "muge", "cnclip", "trec")


def default_submission_format(dataset, split) -> str:
    """Track2 JSON for track2 data; for MUGE data the naming its query file uses
    (``MR_{split}_queries.jsonl`` -> muge, Chinese-CLIP's ``{split}_texts.jsonl`` -> cnclip);
    a TREC run for text corpora (beir); MUGE JSON lines otherwise."""
    fmt = dataset.format
    if fmt == "track2":
        return "track2"
    if fmt == "beir":
        return "trec"
    if fmt == "muge":
        root = Path(dataset.root)
        folder = root.parent if root.is_file() else root
        if (folder / f"{split.name}_texts.jsonl").exists() and not (
            folder / f"MR_{split.name}_queries.jsonl"
        ).exists():
            return "cnclip"
    return "muge"


def write_submission(
    path: str | Path,
    ranked: Mapping[str, Sequence[tuple[str, float]]],
    split,
    *,
    kind: str,
    k: int = 10,
    tag: str = "xmr",
    on_warning: Callable[[str], None] | None = None,
) -> Path:
    """Write each query's first ``k`` (id, score) pairs as a ``kind`` file and validate it
    against ``split`` (every query present, in order for Track2; exactly ``k`` unique known
    ids). A file that would fail validation is an error, not a file on disk; what the official
    scorer may refuse although xmr accepts it (string ids that are not numbers in a MUGE /
    Chinese-CLIP file) goes to ``on_warning`` (default :func:`warnings.warn`)."""
    from xmr.eval.predictions import read_predictions, validate_predictions, write_predictions

    if kind not in SUBMISSION_FORMATS:
        raise XmrError(
            f"unknown submission format '{kind}' (choose from {', '.join(SUBMISSION_FORMATS)})"
        )
    short = [q for q, row in ranked.items() if len(row) < k]
    if short and kind != "trec":
        raise XmrError(
            f"query {short[0]} has {len(ranked[short[0]])} results but a {kind} submission "
            f"needs exactly {k} (the split has {len(split.items)} items)"
        )
    rankings = {q: [i for i, _ in row[:k]] for q, row in ranked.items()}
    scores = {q: [s for _, s in row[:k]] for q, row in ranked.items()}

    path = check_output_file(path)
    ensure_parent(path)
    tmp = path.with_name(f".{path.name}.unchecked")
    try:
        write_predictions(tmp, rankings, kind=kind, split=split, scores=scores, tag=tag)
        checked = read_predictions(tmp, kind)
        validate_predictions(checked, split, k=k)
        tmp.replace(path)
        for _, message in checked.warnings:
            if on_warning is None:
                import warnings

                warnings.warn(f"{path}: {message}", stacklevel=2)
            else:
                on_warning(f"{path}: {message}")
    except WriteError as exc:  # name the file the user asked for, not the unchecked one
        raise WriteError(str(path), exc.reason, exc.errno) from exc
    except OSError as exc:
        raise write_error(exc, path, tmp) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path
