"""Small helpers for self-contained HTML reports (images inlined as base64 PNG)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 2em 3em; color: #222; }
h1 { border-bottom: 2px solid #446; padding-bottom: .2em; }
h2 { margin-top: 1.6em; color: #334; border-bottom: 1px solid #ccd; }
h3 { margin-top: 1.2em; color: #445; }
img { max-width: 100%; display: block; margin: .4em 0 1em; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0 1em; }
th, td { border: 1px solid #ccd; padding: 2px 6px; text-align: right; }
th { background: #eef; }
td.t, th.t { text-align: left; }
pre { background: #f6f6f8; border: 1px solid #ddd; padding: .6em; font-size: 11px; overflow-x: auto; }
.err { color: #a00; font-weight: bold; }
.ok { color: #070; }
.caption { color: #555; font-size: 13px; }
nav a { margin-right: 1em; }
.warn { color: #9a5b00; font-weight: bold; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 4px; font-weight: bold; font-size: 13px;
         color: #fff; vertical-align: middle; }
.badge.pass { background: #2e7d32; } .badge.warn { background: #e69500; color: #222; }
.badge.fail { background: #c62828; } .badge.na { background: #888; }
td.pass { background: #e3f3e4; color: #1b5e20; } td.warn { background: #fff0cc; color: #7a4a00; font-weight: bold; }
td.fail { background: #fbdcdc; color: #a00; font-weight: bold; } td.na { color: #777; }
tr.pass td { background: #f1f9f1; } tr.warn td { background: #fff6dd; } tr.fail td { background: #fde7e7; }
ul.warnings li { margin: .2em 0; }
section.qc { border: 1px solid #ccd; border-radius: 6px; padding: .2em 1em .6em; margin: 1em 0 1.5em; }
"""


#: QC statuses from best to worst, and the CSS class of each
QC_STATUSES = ("pass", "warn", "fail")


def status_class(status):
    """CSS class of a QC status (``pass``/``warn``/``fail``; anything else is ``na``)."""
    return status if status in QC_STATUSES else "na"


def badge(status, text=None):
    """A coloured status badge: green pass, amber warn, red fail, grey otherwise."""
    cls = status_class(status)
    label = text or {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}.get(cls, "N/A")
    return f"<span class=\"badge {cls}\">{esc(label)}</span>"


def esc(text, quote=True):
    """HTML-escaped text (``quote=False`` for element content such as ``<pre>``)."""
    return html.escape(str(text), quote=quote)


def page(title, body):
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n")


def img(path, alt, caption=None):
    """An ``<img>`` with the PNG inlined (the report opens offline, from anywhere)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = f"<div class=\"caption\">{esc(caption)}</div>" if caption else ""
    return f"{cap}<img alt=\"{esc(alt)}\" src=\"data:image/png;base64,{data}\">"


def _cell(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}g}"
    return esc(value)


def table(df, columns=None, digits=4, max_rows=400):
    """A pandas DataFrame as an HTML table (text columns left-aligned)."""
    if df is None or len(df) == 0:
        return "<p>(empty)</p>"
    columns = [c for c in (columns or list(df.columns)) if c in df.columns]
    head = "".join(f"<th class=\"t\">{esc(c)}</th>" if df[c].dtype == object else f"<th>{esc(c)}</th>"
                   for c in columns)
    rows = []
    for _, row in df.head(max_rows).iterrows():
        cells = []
        for c in columns:
            v = row[c]
            cls = " class=\"t\"" if df[c].dtype == object else ""
            cells.append(f"<td{cls}>{_cell(v, digits)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>({len(df) - max_rows} more rows in the TSV)</p>" if len(df) > max_rows else ""
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{more}"
