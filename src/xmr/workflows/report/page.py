"""The report's HTML: plain string building with every untrusted text (query texts, captions,
ids, paths, command lines) through :func:`html.escape`. The page makes no request: styles are
inline, plots are inline SVG, thumbnails are ``data:`` URLs, and a CSP says so to the browser."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#111827;
background:#f9fafb}
header{background:#1e293b;color:#f8fafc;padding:18px 28px}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}
main{padding:12px 28px 40px;max-width:1400px;margin:0 auto}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:14px 18px;
margin:16px 0}
h2{font-size:17px;margin:0 0 10px}h3{font-size:15px;margin:14px 0 6px}
table.metrics{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:13px}
table.metrics th,table.metrics td{padding:4px 10px;border-bottom:1px solid #e5e7eb;
text-align:right}table.metrics th:first-child,table.metrics td:first-child{text-align:left}
table.metrics thead th{background:#f3f4f6}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{flex:0 1 400px;margin:0}
.plot svg{width:100%;height:auto}.scroll{overflow-x:auto}
.query{border-top:1px solid #e5e7eb;padding:10px 0}
.qhead{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
.qtext{font-weight:600}.meta{color:#6b7280;font-size:12px}
.strip{display:flex;gap:6px;margin-top:6px;overflow-x:auto;padding-bottom:4px}
.cell{flex:0 0 92px;font-size:11px;color:#374151;text-align:center;word-break:break-all}
.cell img{width:84px;height:84px;object-fit:cover;border:3px solid #e5e7eb;border-radius:4px}
.cell.rel img{border-color:#16a34a}.cell.rel .r{color:#16a34a;font-weight:700}
.cell.missed img{border-color:#dc2626;opacity:.85}.cell.missed .r{color:#dc2626}
.cell .txt{display:block;height:84px;overflow:hidden;border:3px solid #e5e7eb;
border-radius:4px;padding:3px;text-align:left}.cell.rel .txt{border-color:#16a34a}
.sep{align-self:center;color:#9ca3af;font-size:12px;padding:0 4px}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0}
dl.prov dt{color:#6b7280}dl.prov dd{margin:0;font-family:ui-monospace,monospace;
word-break:break-all}
.legend span{display:inline-block;margin-right:14px}
.up{color:#16a34a}.down{color:#dc2626}
"""


def esc(value: object) -> str:
    """Escape ``value`` for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def document(title: str, subtitle: str, sections: Iterable[str]) -> str:
    """A whole page: head with CSP and styles, a header, the sections."""
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>{body}</main>"
        "</body></html>\n"
    )


def section(title: str, inner: str, *, ident: str = "") -> str:
    idattr = f' id="{esc(ident)}"' if ident else ""
    return f"<section{idattr}><h2>{esc(title)}</h2>{inner}</section>"


def provenance_list(prov: Mapping[str, object]) -> str:
    rows = "".join(
        f"<dt>{esc(key)}</dt><dd>{esc(value)}</dd>" for key, value in prov.items() if value
    )
    return f'<dl class="prov">{rows}</dl>'


def plot(svg: str, name: str) -> str:
    """An SVG made by :mod:`.plots` (our own markup, not escaped) in a labelled box."""
    return f'<figure class="plot" data-plot="{esc(name)}">{svg}</figure>'
