"""Report plots as inline SVG, drawn with matplotlib's Agg-free SVG backend (imported here
only, so ``import xmr`` stays light; extra ``report``)."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence

import numpy as np

# One palette for every plot: the colours stay readable on white and in grey print.
COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"]


def _figure(width: float = 5.2, height: float = 3.2):
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError as exc:  # the report extra is missing
        from xmr.errors import XmrError

        raise XmrError(
            "reports draw their plots with matplotlib: pip install 'xmr[report]'"
        ) from exc
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    # No date or random ids in the file: the same run gives the same page.
    with matplotlib.rc_context({"svg.hashsalt": "xmr", "svg.fonttype": "none"}):
        fig.tight_layout()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: it is inlined
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)


def recall_curve_svg(curves: Mapping[str, np.ndarray], title: str) -> str:
    """Hit rate (Recall@K as the report defines it) against K = 1..depth, one line a category."""
    fig, ax = _figure()
    for n, (name, curve) in enumerate(curves.items()):
        ks = np.arange(1, len(curve) + 1)
        ax.plot(
            ks,
            100 * curve,
            label=name,
            color=COLOURS[n % len(COLOURS)],
            linewidth=2.2 if name == "all" else 1.4,
        )
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("queries with a hit in top K (%)")
    ax.set_ylim(0, 101)
    ax.set_title(title, fontsize=10)
    if len(curves) > 1:
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _svg(fig)


def first_rank_svg(first_ranks: Sequence[int | None], depth: int, title: str) -> str:
    """Distribution of the first relevant item's rank; 'none' counts queries with no hit."""
    fig, ax = _figure()
    ranks = np.array([r for r in first_ranks if r], dtype=np.int64)
    missing = sum(1 for r in first_ranks if not r)
    edges = np.unique(np.round(np.geomspace(1, depth + 1, num=min(depth, 20) + 1)))
    counts, _ = np.histogram(ranks, bins=edges)
    labels = [
        f"{int(a)}" if b - a == 1 else f"{int(a)}-{int(b) - 1}"
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    ax.bar(range(len(counts)), counts, color=COLOURS[0])
    ax.bar([len(counts)], [missing], color=COLOURS[1])
    ax.set_xticks(range(len(counts) + 1), labels + [f">{depth}"], rotation=60, fontsize=7)
    ax.set_xlabel("rank of the first relevant item")
    ax.set_ylabel("queries")
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def ap_histogram_svg(aps: Sequence[float], k: int, title: str) -> str:
    """Histogram of per-query AP@K in ten bins over [0, 1]."""
    fig, ax = _figure()
    ax.hist(np.asarray(aps, dtype=float), bins=np.linspace(0, 1, 11), color=COLOURS[2])
    ax.set_xlabel(f"AP@{k}")
    ax.set_ylabel("queries")
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def rank_change_svg(before: Sequence[int], after: Sequence[int], depth: int, title: str) -> str:
    """First relevant rank before against after a second stage (below the diagonal: better)."""
    fig, ax = _figure(4.2, 3.6)
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    ax.scatter(b, a, s=14, alpha=0.6, color=COLOURS[3])
    ax.plot([1, depth + 1], [1, depth + 1], color="#9ca3af", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("first relevant rank before")
    ax.set_ylabel("after")
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def series_svg(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    ylabel: str,
    *,
    mark_x: float | None = None,
    log_y: bool = False,
) -> str:
    """Lines against the training step, one a name; ``mark_x`` draws the best step."""
    fig, ax = _figure(6.4 if len(series) > 4 else 5.2)
    for n, (name, (xs, ys)) in enumerate(series.items()):
        style = "-o" if len(xs) < 30 else "-"
        ax.plot(xs, ys, style, label=name, color=COLOURS[n % len(COLOURS)], linewidth=1.6,
                markersize=3)  # fmt: skip
    if mark_x is not None:
        ax.axvline(mark_x, color="#16a34a", linestyle="--", linewidth=1.2, label="best step")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 4:  # many lines: the legend beside the axes, not over the lines
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    elif len(series) > 1 or mark_x is not None:
        ax.legend(fontsize=8, frameon=False)
    return _svg(fig)
