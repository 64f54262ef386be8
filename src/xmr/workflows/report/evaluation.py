"""``xmr evaluate ... --report DIR``: the evaluation report, ``DIR/index.html`` (one
self-contained page) and ``DIR/per_query.csv`` (the rows the gallery links to).

Layout of ``DIR``::

    index.html      metric tables, Recall@K curves, rank and AP histograms, failure gallery,
                    provenance; plots inline SVG, thumbnails data: URLs, no request off the page
    per_query.csv   direction,id,text,category,first_relevant_rank,AP,hits (one row a query)
    report.json     the metrics exactly as ``--json`` prints them, and the provenance
    rankings.json   direction -> query id -> {"ranked": top 10, "relevant_at": [1-based ranks]}
                    (what ``xmr report compare`` shows of each query)
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xmr.eval.evaluate import _format_value
from xmr.io.atomic import atomic_replace_dir
from xmr.io.outdirs import prepare_output_dir
from xmr.workflows.report import page, plots
from xmr.workflows.report.ranks import (
    DirectionView,
    base_direction,
    direction_view,
    ranks_items,
    worst_and_best,
)

THUMB = 96
TOP = 10
NAMES = {"t2i": "text → image", "i2t": "image → text", "t2t": "text → text"}
# Metric-key prefixes naming a ranking stage: reranked runs keep first_stage/..., fused runs
# image/, caption/, fused/, gated/ (a learned fusion beside the weighted one) and, with a BLIP-2
# model, multimodal/ (xmr.rerank, xmr.eval.fused); a hybrid text run its two retrievers, dense/
# and bm25/ (xmr.workflows.text_eval).
STAGES = ("first_stage", "image", "caption", "fused", "gated", "multimodal", "dense", "bm25")


def direction_name(direction: str) -> str:
    """``text → image``, ``first_stage · text → image``."""
    *stage, base = direction.split("/")
    return " · ".join([*stage, NAMES.get(base, base)])


def json_metrics(metrics: Mapping[str, float]) -> dict[str, Any]:
    """The metrics as ``--json`` prints them (NaN as null)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


class Thumbs:
    """Small JPEG data: URLs of item images, made once per item (a gallery shows an item often)."""

    def __init__(self, split):
        self.split = split
        self.cache: dict[str, str | None] = {}

    def url(self, item_id: str) -> str | None:
        if item_id not in self.cache:
            self.cache[item_id] = self._make(item_id)
        return self.cache[item_id]

    def _make(self, item_id: str) -> str | None:
        item = self.split.items.get(item_id)
        if item is None or item.image is None:
            return None
        try:
            img = item.image.open(draft_size=(2 * THUMB, 2 * THUMB))
        except Exception:  # noqa: BLE001 - an unreadable image shows as its id, the page stays
            return None
        img.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=72)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _metric_tables(metrics: Mapping[str, float]) -> str:
    """One table a direction: rows all + categories, columns the metrics, values formatted as
    the terminal table formats them and the raw ``--json`` value in ``data-value``."""
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        stage = [parts.pop(0)] if parts[0] in STAGES and len(parts) > 2 else []
        direction = "/".join([*stage, parts[0]])
        group, name = (parts[1], parts[2]) if len(parts) == 3 else ("all", parts[-1])
        groups.setdefault(direction, {}).setdefault(group, {})[name] = value
    out = []
    for direction, rows in groups.items():
        columns: list[str] = []
        for row in rows.values():
            columns += [c for c in row if c not in columns]
        head = "".join(f"<th>{page.esc(c)}</th>" for c in columns)
        body = []
        for group, row in rows.items():
            cells = []
            for c in columns:
                if c not in row:
                    cells.append("<td></td>")
                    continue
                value = row[c]
                key = f"{direction}/{c}" if group == "all" else f"{direction}/{group}/{c}"
                raw = "null" if isinstance(value, float) and math.isnan(value) else repr(value)
                cells.append(
                    f'<td data-key="{page.esc(key)}" data-value="{page.esc(raw)}">'
                    f"{page.esc(_format_value(c, value))}</td>"
                )
            body.append(f"<tr><th>{page.esc(group)}</th>{''.join(cells)}</tr>")
        out.append(
            f"<h3>{page.esc(direction_name(direction))}</h3>"
            f'<div class="scroll"><table class="metrics"><thead><tr><th></th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
    note = (
        '<p class="meta">Percentages as the terminal table prints them; counts and ranks as '
        "numbers. The exact values are the <code>--json</code> output (report.json).</p>"
    )
    return "".join(out) + note


def _cell(view: DirectionView, thumbs: Thumbs, split, ident: str, rank: int, cls: str) -> str:
    label = f"#{rank}" if rank else "not ranked"
    if ranks_items(view.direction):
        url = thumbs.url(ident)
        item = split.items.get(ident)
        # A text corpus (BEIR) item shows its text; an image that cannot be read, its id.
        text = item.captions[0] if item is not None and item.captions else ident
        inner = (
            f'<img alt="{page.esc(ident)}" src="{url}">'
            if url
            else f'<span class="txt">{page.esc(text)}</span>'
        )
    else:
        query = split.queries.get(ident)
        inner = f'<span class="txt">{page.esc(query.text if query else ident)}</span>'
    return (
        f'<div class="cell {cls}"><span class="r">{page.esc(label)}</span>{inner}'
        f"<div>{page.esc(ident)}</div></div>"
    )


def _query_block(view: DirectionView, row, thumbs: Thumbs, split, kind: str) -> str:
    cells = [
        _cell(view, thumbs, split, i, n, "rel" if i in row.relevant else "")
        for n, i in enumerate(row.ranked[:TOP], start=1)
    ]
    position = {i: n for n, i in enumerate(row.ranked, start=1)}
    missed = sorted(
        (i for i in row.relevant if position.get(i, 0) == 0 or position[i] > TOP),
        key=lambda i: (position.get(i) or 10**9, i),
    )[:5]
    if missed:
        cells.append('<span class="sep">missed:</span>')
        cells += [_cell(view, thumbs, split, i, position.get(i, 0), "missed") for i in missed]
    if base_direction(view.direction) == "i2t":
        url = thumbs.url(row.id)
        head = f'<img alt="" src="{url}" width="64" height="64">' if url else ""
    else:
        head = ""
    first = row.first_rank if row.first_rank else f"none in top {len(row.ranked)}"
    return (
        f'<div class="query" data-kind="{kind}" data-query="{page.esc(row.id)}">'
        f'<div class="qhead">{head}<span class="qtext">{page.esc(row.text)}</span>'
        f'<span class="meta">{page.esc(row.id)} · category {page.esc(row.category or "-")} · '
        f"AP {row.ap:.3f} · first relevant rank {page.esc(first)} · "
        f"{len(row.relevant)} relevant · "
        f'<a href="per_query.csv#row={row.csv_row}">CSV row {row.csv_row}</a></span></div>'
        f'<div class="strip">{"".join(cells)}</div></div>'
    )


def _gallery(view: DirectionView, thumbs, split, n_worst: int, n_best: int, seed: int) -> str:
    groups: dict[str, list] = {}
    for row in view.rows:
        groups.setdefault(row.category or "all", []).append(row)
    out = [
        '<p class="legend meta"><span class="up">■ relevant</span>'
        '<span class="down">■ relevant, missed (rank shown)</span></p>'
    ]
    for name, rows in groups.items():
        worst, best = worst_and_best(rows, n_worst, n_best, seed)
        title = f"{direction_name(view.direction)} · {name}"
        out.append(f"<h3>{page.esc(title)}: worst {len(worst)} of {len(rows)}</h3>")
        out += [_query_block(view, r, thumbs, split, "failure") for r in worst]
        if best:
            out.append(f"<h3>{page.esc(title)}: a sample of successes</h3>")
            out += [_query_block(view, r, thumbs, split, "success") for r in best]
    return "".join(out)


def _per_query_csv(views: Sequence[DirectionView]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["direction", "id", "text", "category", "first_relevant_rank", "AP", "hits"])
    n = 0
    for view in views:
        for row in view.rows:
            n += 1
            row.csv_row = n
            w.writerow(
                [
                    view.direction,
                    row.id,
                    row.text,
                    row.category or "",
                    row.first_rank or "",
                    f"{row.ap:.6f}",
                    row.hits,
                ]
            )
    return buf.getvalue().encode("utf-8")


def _stage_changes(views: Sequence[DirectionView]) -> list[str]:
    """For a reranked run: each query's first relevant rank before (first stage) and after."""
    by_key = {v.direction: v for v in views}
    out = []
    for view in views:
        before = by_key.get(f"first_stage/{view.direction}")
        if before is None:
            continue
        first = {r.id: r.first_rank for r in before.rows}
        depth = max(view.depth, before.depth)
        pairs = [(first[r.id], r.first_rank) for r in view.rows if r.id in first]
        b = [x or depth + 1 for x, _ in pairs]
        a = [y or depth + 1 for _, y in pairs]
        up = sum(y < x for x, y in zip(b, a, strict=True))
        down = sum(y > x for x, y in zip(b, a, strict=True))
        svg = plots.rank_change_svg(b, a, depth, f"{direction_name(view.direction)}: rank change")
        text = (
            f'<p><span class="up">{up} queries moved their first relevant item up</span>, '
            f'<span class="down">{down} down</span>, {len(pairs) - up - down} unchanged '
            f"(not ranked = {depth + 1}).</p>"
        )
        out.append(page.section("What reranking changed", text + page.plot(svg, "rank-change")))
    return out


def is_report_dir(path: Path) -> bool:
    """Whether ``path`` may be replaced by a report: empty, or a report xmr wrote."""
    return (path / "report.json").is_file() or not any(path.iterdir())


def check_report_dir(path: str | Path) -> Path:
    """Refuse, before any work, an output that is a file or a directory that is not a report
    (a report replaces its directory whole)."""
    return prepare_output_dir(path, is_ours=is_report_dir, what="an xmr report")


def build_evaluation_report(
    out_dir: str | Path,
    metrics: Mapping[str, float],
    rankings: Mapping[str, Mapping[str, Sequence[str]]],
    split,
    *,
    k: int = 10,
    skip_empty: bool = False,
    provenance: Mapping[str, Any] | None = None,
    n_worst: int = 8,
    n_best: int = 3,
    seed: int = 0,
    title: str = "xmr evaluation report",
) -> Path:
    """Write the evaluation report of one run to ``out_dir`` (replaced atomically).

    Args:
        out_dir: the report directory (``index.html``, ``per_query.csv``, ``report.json``).
        metrics: the metric dict the evaluation returned (the ``--json`` numbers).
        rankings: direction ("t2i"/"i2t"/"t2t") -> query id -> ranked ids, best first. Rank deeper
            than ``k`` (up to 100) for full Recall@K curves; curves stop at the ranked depth.
        split: the evaluated :class:`~xmr.data.dataset.Split` (texts, thumbnails, categories).
        k: the evaluation's cut-off (AP@K, hits).
        skip_empty: as the evaluation's ``skip_empty``.
        provenance: model spec, fingerprint, data set, split, command line... shown as given.
        n_worst, n_best: gallery size per category: the worst queries, a seeded success sample.
        seed: the success sample's seed.
    Returns:
        The path of ``index.html``.
    """
    check_report_dir(out_dir)
    views = [direction_view(d, r, split, k, skip_empty=skip_empty) for d, r in rankings.items()]
    csv_bytes = _per_query_csv(views)
    thumbs = Thumbs(split)
    sections = [page.section("Metrics", _metric_tables(metrics), ident="metrics")]
    for view in views:
        name = direction_name(view.direction)
        figs = [
            page.plot(
                plots.recall_curve_svg(view.curves, f"{name}: Recall@K, K=1..{view.depth}"),
                "recall",
            ),
            page.plot(
                plots.first_rank_svg(
                    [r.first_rank for r in view.rows], view.depth, f"{name}: first relevant rank"
                ),
                "first-rank",
            ),
            page.plot(
                plots.ap_histogram_svg([r.ap for r in view.rows], k, f"{name}: AP@{k}"), "ap"
            ),
        ]
        sections.append(
            page.section(f"Curves · {name}", f'<div class="plots">{"".join(figs)}</div>')
        )
    sections += _stage_changes(views)
    for view in views:
        name = direction_name(view.direction)
        sections.append(
            page.section(
                f"Failure gallery · {name}",
                _gallery(view, thumbs, split, n_worst, n_best, seed),
                ident=f"gallery-{view.direction.replace('/', '-')}",
            )
        )
    prov = dict(provenance or {})
    sections.append(page.section("Provenance", page.provenance_list(prov), ident="provenance"))
    subtitle = " · ".join(str(prov[x]) for x in ("model", "data", "split") if prov.get(x))
    html_text = page.document(title, subtitle, sections)
    record = {"metrics": json_metrics(metrics), "provenance": prov, "k": k}
    tops = {
        view.direction: {
            row.id: {
                "ranked": row.ranked[:TOP],
                "relevant_at": [n for n, i in enumerate(row.ranked[:TOP], 1) if i in row.relevant],
            }
            for row in view.rows
        }
        for view in views
    }

    def fill(tmp: Path) -> None:
        (tmp / "index.html").write_text(html_text, encoding="utf-8")
        (tmp / "per_query.csv").write_bytes(csv_bytes)
        (tmp / "rankings.json").write_text(json.dumps(tops, ensure_ascii=False), encoding="utf-8")
        (tmp / "report.json").write_text(
            json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8"
        )

    atomic_replace_dir(out_dir, fill, may_replace=is_report_dir)
    return Path(out_dir) / "index.html"
