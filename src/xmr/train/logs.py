"""Training logs: JSONL and CSV files side by side, and TensorBoard when it is installed.

Files are appended to, so a resumed run continues its predecessor's logs; rows logged after the
checkpoint the run resumed from are dropped first (they will be logged again).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from xmr.io.atomic import atomic_write
from xmr.io.failures import writing

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricLog:
    """``NAME.jsonl`` and ``NAME.csv`` in ``out_dir``; one row per ``write`` call."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self.jsonl = out_dir / f"{name}.jsonl"
        self.csv = out_dir / f"{name}.csv"
        self._columns: list[str] | None = None

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.is_file():
            return []
        out = []
        # A torn or damaged line ends the log (what follows it is logged again on resume).
        for line in self.jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a killed run
        return out

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep the rows with ``step <= step`` (both files rewritten); returns them."""
        rows = [r for r in self.rows() if int(r.get("step", 0)) <= step]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        # Rewritten atomically: a full disk here must not cost the log of the finished steps.
        atomic_write(self.jsonl, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self._rewrite_csv(rows)
        return rows

    def _rewrite_csv(self, rows: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        self._columns = columns or None
        if not rows:
            self.csv.unlink(missing_ok=True)
            return

        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                writer = csv.DictWriter(fh, columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.csv, write)

    def reset(self) -> None:
        for path in (self.jsonl, self.csv):
            path.unlink(missing_ok=True)
        self._columns = None

    def write(self, row: dict[str, Any]) -> None:
        row = {k: _jsonable(v) for k, v in row.items()}
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with writing(self.jsonl), self.jsonl.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self._write_csv(row)

    def _write_csv(self, row: dict[str, Any]) -> None:
        if self._columns is None and self.csv.is_file():
            with self.csv.open(encoding="utf-8", newline="") as fh:
                self._columns = next(csv.reader(fh), None)
        new_file = not self.csv.is_file() or self._columns is None
        if new_file:
            self._columns = list(row)
        extra = [k for k in row if k not in self._columns]
        if extra:
            # A column appeared (a metric logged only sometimes): rewrite with the wider header
            # (the JSONL file already holds this row).
            self._rewrite_csv(self.rows())
            return
        with writing(self.csv), self.csv.open("a", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, self._columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)


class TensorBoard:
    """A SummaryWriter when ``tensorboard`` is installed, else nothing."""

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("tensorboard is not installed; logging to CSV/JSONL only")
            return
        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, int | float) and math.isfinite(float(value)):
                self.writer.add_scalar(f"{prefix}{key}", float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
