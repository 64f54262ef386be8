"""The one check of an output directory: new, empty, or an earlier output of the same job.

A data set or a model directory given as ``--out`` by mistake must never get shards, logs or
weights written into it, so every job that writes a directory asks this before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xmr.errors import XmrError
from xmr.io.atomic import check_output_dir


def prepare_output_dir(
    out: str | Path,
    *,
    is_ours: Callable[[Path], bool],
    what: str,
) -> Path:
    """Return ``out`` when it may receive this job's output, else raise an XmrError naming it.

    Args:
        out: the directory to write.
        is_ours: true when an existing, non-empty ``out`` is an earlier output of this job (it
            holds the job's manifest, config or checkpoint).
        what: what the job writes, for the message (``"an xmr embeddings directory"``).

    Hidden entries (a killed writer's ``.tmp`` files) do not make a directory foreign. A file
    at ``out`` is refused as well (see :func:`~xmr.io.atomic.check_output_dir`).
    """
    out = check_output_dir(out)
    if not out.is_dir() or is_ours(out):
        return out
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise XmrError(
            f"{out}: exists, is not empty and is not {what}: it holds other files ({shown}); "
            "name a new or empty directory"
        )
    return out
