"""report.html: one self-contained page (figures inlined as base64 PNG) drawn from report.md's text.

The page adds nothing report.md lacks but the figures: its headings, paragraphs, lists and tables are report.md's
lines turned into HTML (every cell escaped, then ``**bold**`` and `` `code` `` marked up), so the two never
disagree. Nothing is loaded from elsewhere.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
         "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f3f7}"
         "td:first-child,th:first-child{text-align:left}code{background:#f4f4f4;padding:0 3px}"
         "figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}"
         "figcaption{font-weight:600;margin-bottom:.4em}")


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _table(lines: list[str]) -> str:
    """A markdown table (its separator row dropped) as an HTML table, the first row as the header."""
    rows = [r for r in lines if not set(r.replace("|", "").strip()) <= {"-"}]
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells[0]) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:]]
    return "\n".join(out + ["</table>"])


def _body(md: str) -> list[str]:
    """report.md's lines as HTML elements: consecutive table lines become one table."""
    body, table = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            body.append(_table(table))
            table.clear()
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if table:
        body.append(_table(table))
    return body


def render_html(report: dict, md: str, figs: dict[str, Path]) -> str:
    """The page for ``report`` (its model names the title) from its report.md text ``md`` and its figures
    (title -> PNG path, :func:`pipeline.report.figures.draw_report`)."""
    body = _body(md) + ["<h2>Figures</h2>"]
    for title, path in figs.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        body.append(f'<figure><figcaption>{html.escape(title)}</figcaption>'
                    f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}"></figure>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Report: {html.escape(report['model'])}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
