"""The training report, ``OUT/report.html``: loss, learning rates, logit scale, samples/s and
every validation metric against the step, the best step marked, the resolved configuration.

Read from the files a training run already writes (``train_log.jsonl``, ``metrics.jsonl``,
``train_config.json``, ``metrics.json`` when finished), so ``xmr report train OUT`` rebuilds it
for any run, finished, interrupted or still going."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xmr.errors import XmrError
from xmr.io.atomic import atomic_write
from xmr.workflows.report import page, plots
from xmr.workflows.report.sources import run_provenance

REPORT_FILE = "report.html"
# Validation metrics where lower is better (the rest: higher is better).
LOWER_BETTER = ("MeanRank", "MedianRank", "NotFound", "loss")
RANKS = ("MeanRank", "MedianRank")


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line of a killed run: the rows before it stand
    return out


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _xy(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def best_step(metric_rows: list[dict[str, Any]], metric: str | None, summary: dict) -> int | None:
    """The finished run's recorded best step, else the best validation row of ``metric``."""
    if summary.get("best_step") is not None:
        return int(summary["best_step"])
    xs, ys = _xy(metric_rows, metric) if metric else ([], [])
    if not xs:
        return None
    lower = _leaf(metric) in LOWER_BETTER
    pick = min if lower else max
    value = pick(ys)
    return int(xs[ys.index(value)])  # the first step reaching it, as the trainer keeps it


def build_training_report(out: str | Path) -> Path:
    """Write ``OUT/report.html`` (atomically) from the logs of the training run in ``out``."""
    out = Path(out)
    train_rows = _rows(out / "train_log.jsonl")
    metric_rows = _rows(out / "metrics.jsonl")
    config = _json(out / "train_config.json")
    summary = _json(out / "metrics.json")
    if not train_rows and not metric_rows:
        raise XmrError(f"{out}: no training log (train_log.jsonl, metrics.jsonl) to report on")
    metric = summary.get("best_metric") or config.get("best_metric")
    best = best_step(metric_rows, metric, summary)
    figs = []
    if train_rows:
        figs.append(page.plot(plots.series_svg({"loss": _xy(train_rows, "loss")}, "training loss",
                                               "loss", mark_x=best), "loss"))  # fmt: skip
        lrs = {k: _xy(train_rows, k) for k in train_rows[-1] if k.startswith("lr/")}
        if lrs:
            figs.append(page.plot(plots.series_svg(lrs, "learning rates", "lr"), "lr"))
        for key, title in (("logit_scale", "logit scale (1/temperature)"),
                           ("samples_per_s", "samples/s")):  # fmt: skip
            if any(key in r for r in train_rows):
                figs.append(page.plot(plots.series_svg({key: _xy(train_rows, key)}, title, key),
                                      key))  # fmt: skip
    names = []
    for r in metric_rows:
        names += [k for k in r if k not in ("step", "epoch") and k not in names]
    names = [n for n in names if _xy(metric_rows, n)[0] and not _leaf(n).startswith("n_")]
    overall = [n for n in names if n.count("/") == 1]
    vfigs = []
    if metric and metric in names:
        vfigs.append(page.plot(plots.series_svg({metric: _xy(metric_rows, metric)},
                     f"{metric} (best-model metric)", "value", mark_x=best), "valid"))  # fmt: skip
    # One plot of the fractions and one of the ranks per direction, not one per metric.
    for direction in dict.fromkeys(n.split("/")[0] for n in overall):
        mine = [n for n in overall if n.startswith(direction + "/")]
        for kind, members in (
            ("fractions", [n for n in mine if _leaf(n) not in RANKS]),
            ("ranks", [n for n in mine if _leaf(n) in RANKS]),
        ):
            if members:
                series = {_leaf(n): _xy(metric_rows, n) for n in members}
                vfigs.append(page.plot(plots.series_svg(series, f"{direction}: {kind}", kind,
                                                        mark_x=best), "valid"))  # fmt: skip
    last = metric_rows[-1] if metric_rows else {}
    best_row = next((r for r in metric_rows if r.get("step") == best), {})

    def table_rows(keys):
        return "".join(
            f"<tr><td>{page.esc(n)}</td><td>{page.esc(_fmt(best_row.get(n)))}</td>"
            f"<td>{page.esc(_fmt(last.get(n)))}</td></tr>"
            for n in keys
        )

    head = (
        '<div class="scroll"><table class="metrics"><thead><tr><th>metric</th>'
        "<th>at the best step</th><th>last validation</th></tr></thead><tbody>"
    )
    per_category = [n for n in names if n.count("/") > 1]
    table = (
        f'<p>Best step <b id="best-step">{page.esc(best if best is not None else "-")}</b> by '
        f"{page.esc(metric or '-')}; last step logged "
        f"{page.esc(train_rows[-1]['step'] if train_rows else '-')}.</p>"
        f'<div class="plots">{"".join(vfigs)}</div>'
        f"{head}{table_rows(overall)}</tbody></table></div>"
    )
    if per_category:
        table += (
            f"<details><summary>per category ({len(per_category)} values)</summary>"
            f"{head}{table_rows(per_category)}</tbody></table></div></details>"
        )
    sections = [
        page.section("Training", f'<div class="plots">{"".join(figs)}</div>', ident="training"),
        page.section("Validation", table, ident="validation"),
        page.section(
            "Resolved configuration",
            f"<pre>{page.esc(json.dumps(config, indent=2, ensure_ascii=False))}</pre>",
            ident="config",
        ),
        page.section(
            "Provenance",
            page.provenance_list(
                run_provenance(
                    model=config.get("model"),
                    data=config.get("data"),
                    split=config.get("split"),
                    out=str(out),
                )  # fmt: skip
            ),
        ),
    ]
    html_text = page.document("xmr training report", f"{out} · {config.get('model', '')}",
                              sections)  # fmt: skip
    path = out / REPORT_FILE
    atomic_write(path, lambda tmp: tmp.write_text(html_text, encoding="utf-8"))
    return path


def _leaf(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)
