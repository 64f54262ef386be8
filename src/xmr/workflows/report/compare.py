"""``xmr report compare DIR_A DIR_B``: two evaluation reports of the same split side by side:
every metric of both with its delta, and per direction the queries that gained and lost the
most (AP@K, then first relevant rank) with both runs' top 10.

Written to ``OUT/index.html`` (self-contained, as the evaluation report) and
``OUT/compare.json`` (the deltas and the query lists).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from xmr.errors import DataError, XmrError
from xmr.eval.evaluate import _format_value
from xmr.io.atomic import atomic_replace_dir
from xmr.io.outdirs import prepare_output_dir
from xmr.workflows.report import page
from xmr.workflows.report.evaluation import Thumbs, direction_name
from xmr.workflows.report.ranks import base_direction, ranks_items
from xmr.workflows.report.sources import run_provenance


def _read_report(path: Path) -> dict[str, Any]:
    report = path / "report.json"
    if not report.is_file():
        raise XmrError(f"{path}: not an evaluation report (no report.json)")
    try:
        record = json.loads(report.read_text(encoding="utf-8"))
        tops = json.loads((path / "rankings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable report ({exc})", file=str(report)) from None
    rows: dict[tuple[str, str], dict[str, str]] = {}
    with open(path / "per_query.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows[(row["direction"], row["id"])] = row
    return {"path": path, **record, "tops": tops, "rows": rows}


def _split(a: dict[str, Any]):
    """The evaluated split, for thumbnails, when its data set can still be read."""
    prov = a.get("provenance", {})
    if not prov.get("data"):
        return None
    try:
        from xmr.data.readers import load_dataset

        return load_dataset(prov["data"], None, prov.get("split")).split(prov.get("split"))
    except (XmrError, OSError):
        return None  # moved or deleted since: the page shows ids instead


def _metric_table(ma: dict[str, Any], mb: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    body, deltas = [], {}
    for key in [k for k in ma if k in mb]:
        va, vb = ma[key], mb[key]
        if va is None or vb is None or isinstance(va, bool):
            continue
        name = key.rsplit("/", 1)[-1]
        if name.startswith("n_"):
            continue
        delta = vb - va
        deltas[key] = delta
        lower_better = name in ("MeanRank", "MedianRank", "NotFound")
        good = (delta < 0) if lower_better else (delta > 0)
        cls = "" if delta == 0 else ("up" if good else "down")
        shown = _format_value(name, delta) if not math.isnan(delta) else "-"
        body.append(
            f'<tr><td>{page.esc(key)}</td><td data-key="{page.esc(key)}" data-side="a">'
            f"{page.esc(_format_value(name, va))}</td><td>{page.esc(_format_value(name, vb))}</td>"
            f'<td class="{cls}" data-delta="{delta!r}">{"+" if delta > 0 else ""}{page.esc(shown)}'
            "</td></tr>"
        )
    html = (
        '<div class="scroll"><table class="metrics"><thead><tr><th>metric</th><th>A</th>'
        f"<th>B</th><th>B − A</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )
    return html, deltas


def _strip(label: str, top: dict[str, Any] | None, direction: str, thumbs, split) -> str:
    if not top:
        return f'<div class="meta">{page.esc(label)}: not ranked</div>'
    rel = set(top.get("relevant_at", []))
    cells = []
    for n, ident in enumerate(top["ranked"], start=1):
        url = thumbs.url(ident) if (thumbs and ranks_items(direction)) else None
        if url:
            inner = f'<img alt="{page.esc(ident)}" src="{url}">'
        else:
            query = (
                split.queries.get(ident) if (split and base_direction(direction) == "i2t") else None
            )
            inner = f'<span class="txt">{page.esc(query.text if query else ident)}</span>'
        cls = "rel" if n in rel else ""
        cells.append(
            f'<div class="cell {cls}"><span class="r">#{n}</span>{inner}'
            f"<div>{page.esc(ident)}</div></div>"
        )
    return f'<div class="strip"><span class="sep">{page.esc(label)}</span>{"".join(cells)}</div>'


def _changes(a, b, direction: str, top: int) -> list[dict[str, Any]]:
    changes = []
    for (d, qid), ra in a["rows"].items():
        rb = b["rows"].get((d, qid))
        if d != direction or rb is None:
            continue
        fa = int(ra["first_relevant_rank"] or 0) or None
        fb = int(rb["first_relevant_rank"] or 0) or None
        delta = float(rb["AP"]) - float(ra["AP"])
        changes.append(
            {
                "id": qid,
                "text": ra["text"],
                "AP_a": float(ra["AP"]),
                "AP_b": float(rb["AP"]),
                "delta_AP": delta,
                "first_rank_a": fa,
                "first_rank_b": fb,
            }  # fmt: skip
        )

    def rank_gain(c):  # a rank gained counts after AP: 'none' is below every rank
        return (c["first_rank_a"] or 10**6) - (c["first_rank_b"] or 10**6)

    gained = sorted(changes, key=lambda c: (-c["delta_AP"], -rank_gain(c), c["id"]))
    lost = sorted(changes, key=lambda c: (c["delta_AP"], rank_gain(c), c["id"]))
    gained = [c for c in gained if c["delta_AP"] > 0 or rank_gain(c) > 0][:top]
    lost = [c for c in lost if c["delta_AP"] < 0 or rank_gain(c) < 0][:top]
    return [dict(c, change="gained") for c in gained] + [dict(c, change="lost") for c in lost]


def _is_comparison(path: Path) -> bool:
    """Whether ``path`` is a comparison xmr wrote (which a new one may replace)."""
    return (path / "compare.json").is_file()


def compare_reports(
    dir_a: str | Path, dir_b: str | Path, *, out_dir: str | Path | None = None, top: int = 10
) -> Path:
    """Compare two evaluation reports of the same split; returns ``OUT/index.html``.

    Args:
        dir_a: the baseline report (``xmr evaluate --report``).
        dir_b: the other report; deltas are B − A.
        out_dir: where to write [``DIR_B/compare``].
        top: how many queries gained and lost the most to show per direction.
    Raises:
        XmrError: a directory is not a report, or the two did not score the same queries.
    """
    a, b = _read_report(Path(dir_a)), _read_report(Path(dir_b))
    shared = set(a["rows"]) & set(b["rows"])
    if not shared:
        raise XmrError(f"{dir_a} and {dir_b} share no scored query: not the same split")
    if set(a["rows"]) != set(b["rows"]):
        raise XmrError(
            f"{dir_a} scored {len(a['rows'])} queries, {dir_b} {len(b['rows'])} "
            f"({len(shared)} shared): compare runs on the same split"
        )
    out = Path(out_dir) if out_dir is not None else Path(dir_b) / "compare"
    prepare_output_dir(out, is_ours=_is_comparison, what="an xmr report comparison")
    table, deltas = _metric_table(a["metrics"], b["metrics"])
    split = _split(a)
    thumbs = Thumbs(split) if split is not None else None
    sections = [page.section("Metrics: A, B and B − A", table, ident="metrics")]
    record: dict[str, Any] = {"a": str(dir_a), "b": str(dir_b), "deltas": deltas, "queries": []}
    for direction in a["tops"]:
        changes = _changes(a, b, direction, top)
        record["queries"] += [dict(c, direction=direction) for c in changes]
        blocks = []
        for c in changes:
            ra = a["tops"][direction].get(c["id"])
            rb = b["tops"].get(direction, {}).get(c["id"])
            cls = "up" if c["change"] == "gained" else "down"
            blocks.append(
                f'<div class="query" data-change="{c["change"]}" data-query="{page.esc(c["id"])}">'
                f'<div class="qhead"><span class="qtext">{page.esc(c["text"])}</span>'
                f'<span class="meta {cls}">{c["change"]}: AP {c["AP_a"]:.3f} → {c["AP_b"]:.3f}'
                f" · first relevant rank {c['first_rank_a'] or 'none'} → "
                f"{c['first_rank_b'] or 'none'} · {page.esc(c['id'])}</span></div>"
                f"{_strip('A', ra, direction, thumbs, split)}"
                f"{_strip('B', rb, direction, thumbs, split)}</div>"
            )
        title = f"Queries that gained and lost the most · {direction_name(direction)}"
        sections.append(page.section(title, "".join(blocks) or "<p>No query changed.</p>"))
    prov = {
        "A": f"{dir_a} ({a['provenance'].get('model') or a['provenance'].get('predictions')})",
        "B": f"{dir_b} ({b['provenance'].get('model') or b['provenance'].get('predictions')})",
        **run_provenance(data=a["provenance"].get("data"), split=a["provenance"].get("split")),
    }
    sections.append(page.section("Provenance", page.provenance_list(prov), ident="provenance"))
    html_text = page.document("xmr report comparison", f"A = {dir_a} · B = {dir_b}", sections)

    def fill(tmp: Path) -> None:
        (tmp / "index.html").write_text(html_text, encoding="utf-8")
        (tmp / "compare.json").write_text(json.dumps(record, indent=1), encoding="utf-8")

    atomic_replace_dir(out, fill, may_replace=_is_comparison)
    return out / "index.html"
