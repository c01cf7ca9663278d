"""HTML for people: the report as one self-contained page, and results, analyses and views as
Jupyter shows them. Pure string building (html.escape), no dependency.

    report(md_text, folder)      # report.html: report.md's content, figures as data URIs
    markdown_html(md_text, ...)  # the Markdown the report uses, as an HTML fragment
    result_html(r) / result_markdown(r)      # Result._repr_html_ / _repr_markdown_
    analysis_html(a) / analysis_markdown(a)  # Analysis._repr_html_ / _repr_markdown_
    view_html(view)                          # ResidualView._repr_html_

The converter reads exactly the Markdown that report/markdown.py and writer.py write:
headings, paragraphs (a line ending in two spaces breaks), bullet lists, pipe tables, images
alone on their line, indented and fenced code blocks, and inline code, **bold**, *emphasis*
and [links](url). Images are read from the report's folder and embedded as base64 data URIs,
so report.html opens offline, alone. Tables sort by a click on a header (a few lines of
inline script: numbers by their first number, text otherwise; missing values last).
"""
from __future__ import annotations

import base64
import html
import math
import re
import tempfile
from pathlib import Path
from typing import Callable, Optional

__all__ = ["report", "markdown_html", "result_html", "result_markdown", "analysis_html",
           "analysis_markdown", "view_html", "table_html"]

MAX_ROWS = 12  # rows of a result's table shown in a notebook (the frame has them all)

_STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;line-height:1.45;
color:#1f2328;margin:0 auto;max-width:1280px;padding:1em 2em}
h1,h2,h3{line-height:1.2}h2{border-bottom:1px solid #d8dee4;padding-bottom:.2em;margin-top:1.6em}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:90%;background:#f3f4f6;
padding:.1em .3em;border-radius:4px}pre{background:#f6f8fa;padding:.8em;overflow:auto;
border-radius:6px}pre code{background:none;padding:0}
table{border-collapse:collapse;margin:.8em 0;font-size:90%;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fafbfc}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[data-order=asc]::after{content:" \\25B2"}
table.sortable th[data-order=desc]::after{content:" \\25BC"}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:90%;color:#57606a}
"""

# Click a header to sort its table's rows by that column, again to reverse. A column whose
# cells all start with a number (or are missing: empty, -, n/a, not run) sorts numerically,
# missing values last; other columns as text.
_SORT = r"""
(function(){
  function key(td){var t=td.textContent.trim();
    var m=t.match(/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?/i);
    return {t:t,n:m?parseFloat(m[0]):NaN};}
  function missing(t){return t===""||t==="-"||/^(n\/a|not run|none)/.test(t);}
  document.querySelectorAll("table.sortable").forEach(function(table){
    var heads=table.querySelectorAll("thead th");
    heads.forEach(function(th,col){th.title="sort by this column";
      th.addEventListener("click",function(){
        var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
        var keys=rows.map(function(r){return key(r.cells[col]||r.cells[0]);});
        var num=keys.every(function(k){return !isNaN(k.n)||missing(k.t);});
        var dir=th.getAttribute("data-order")==="asc"?-1:1;
        heads.forEach(function(h){h.removeAttribute("data-order");});
        th.setAttribute("data-order",dir>0?"asc":"desc");
        var idx=rows.map(function(r,i){return i;});
        idx.sort(function(a,b){var x=keys[a],y=keys[b];
          if(num){if(isNaN(x.n)!==isNaN(y.n))return isNaN(x.n)?1:-1;
            if(!isNaN(x.n)&&x.n!==y.n)return dir*(x.n-y.n);}
          else{var c=x.t.localeCompare(y.t,undefined,{numeric:true});if(c)return dir*c;}
          return a-b;});
        idx.forEach(function(i){body.appendChild(rows[i]);});
      });});
  });
})();
"""


# ---- the report --------------------------------------------------------------------------

def report(md_text: str, folder) -> str:
    """report.html's text: the whole page for report.md's text `md_text`, its images read from
    `folder` (the report's folder) and embedded as data URIs, its tables sortable."""
    body = markdown_html(md_text, images=lambda src: data_uri(Path(folder) / src))
    first = re.search(r"^# (.+)$", md_text, re.M)
    title = html.escape(first.group(1) if first else "pathens report")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n"
            f"{body}</main>\n<script>{_SORT}</script>\n</body>\n</html>\n")


def data_uri(path: Path) -> Optional[str]:
    """The file as a data: URI (PNG, SVG, JPEG by its suffix), or None when it is absent."""
    kinds = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
             ".jpeg": "image/jpeg"}
    if not path.is_file() or path.suffix.lower() not in kinds:
        return None
    return f"data:{kinds[path.suffix.lower()]};base64," + \
        base64.b64encode(path.read_bytes()).decode("ascii")


_HEADING = re.compile(r"^(#{1,6}) +(.*?)\s*$")
_IMAGE_LINE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)\s*$")
_BULLET = re.compile(r"^[-*] +(.*)$")
_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def markdown_html(text: str, *, images: Optional[Callable[[str], Optional[str]]] = None,
                  sortable: bool = True) -> str:
    """The Markdown of a pathens report as an HTML fragment (see the module docstring for
    what it reads). images: src -> the URL to use (e.g. a data URI), None to keep src."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):
            lang = line[3:].strip()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            cls = f' class="language-{html.escape(lang)}"' if lang else ""
            out.append(f"<pre><code{cls}>{html.escape(chr(10).join(lines[i + 1:j]))}"
                       f"</code></pre>")
            i = j + 1
        elif line.startswith("    "):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            block = [ln[4:] for ln in lines[i:j]]
            while block and not block[-1].strip():
                block.pop()
            out.append(f"<pre><code>{html.escape(chr(10).join(block))}</code></pre>")
            i = j
        elif _HEADING.match(line):
            m = _HEADING.match(line)
            n = len(m.group(1))
            out.append(f'<h{n} id="{_anchor(m.group(2))}">{inline(m.group(2))}</h{n}>')
            i += 1
        elif _IMAGE_LINE.match(line):
            alt, src = _IMAGE_LINE.match(line).groups()
            url = (images(src) if images else None) or src
            out.append(f'<figure><img src="{html.escape(url)}" alt="{html.escape(alt)}">'
                       f"<figcaption>{html.escape(alt)}</figcaption></figure>")
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append(_table(_cells(line), [_cells(r) for r in lines[i + 2:j]], sortable))
            i = j
        elif _BULLET.match(line):
            items = []
            while i < len(lines) and lines[i].strip():
                m = _BULLET.match(lines[i])
                if m:
                    items.append(m.group(1))
                elif items:  # a continuation line of the item
                    items[-1] += " " + lines[i].strip()
                else:
                    break
                i += 1
            out.append("<ul>\n" + "\n".join(f"<li>{inline(t)}</li>" for t in items) + "\n</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not _starts_block(lines, i):
                para.append(lines[i])
                i += 1
            out.append("<p>" + "\n".join(
                inline(p.rstrip()) + ("<br>" if p.endswith("  ") and k < len(para) - 1 else "")
                for k, p in enumerate(para)) + "</p>")
    return "\n".join(out) + "\n"


def _starts_block(lines: list, i: int) -> bool:
    line = lines[i]
    return bool(line.startswith(("```", "    ")) or _HEADING.match(line) or
                _IMAGE_LINE.match(line) or _BULLET.match(line) or
                (line.startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1])))


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _cells(row: str) -> list:
    """A pipe-table row's cells: split on | outside code spans (\\| is a literal bar)."""
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    cells, cur, code = [], "", False
    k = 0
    while k < len(row):
        c = row[k]
        if c == "\\" and k + 1 < len(row) and row[k + 1] == "|":
            cur += "|"
            k += 2
            continue
        if c == "`":
            code = not code
        if c == "|" and not code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += c
        k += 1
    cells.append(cur.strip())
    return cells


def _table(head: list, rows: list, sortable: bool) -> str:
    cls = ' class="sortable"' if sortable else ""
    th = "".join(f"<th>{inline(c)}</th>" for c in head)
    body = "\n".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>"
                     for r in rows)
    return f"<table{cls}>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


_INLINE_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_EM = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")


def inline(text: str) -> str:
    """Inline Markdown as HTML: `code` first (nothing inside it is read), then images, links,
    **bold** and *emphasis* on the escaped text."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=True)
        s = _INLINE_IMAGE.sub(r'<img src="\2" alt="\1">', s)
        s = _LINK.sub(r'<a href="\2">\1</a>', s)
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        s = _EM.sub(r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


# ---- notebooks ---------------------------------------------------------------------------

def _text(v, digits: int = 4) -> str:
    """A table cell for reading: as the CSV writes it (results.plain: NaN / inf -> empty), but
    floats to `digits` significant digits (the frame and the CSV have them exactly)."""
    from ..results import plain
    v = plain(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return "" if v is None else str(v)


def table_html(rows: list, max_rows: int = MAX_ROWS) -> str:
    """The first `max_rows` rows (dicts) as an HTML table (floats to 4 significant digits), with
    a line saying how many more."""
    if not rows:
        return "<p><em>(no rows)</em></p>"
    cols = list(dict.fromkeys(k for r in rows[:max_rows] for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(_text(r.get(c)))}</td>" for c in cols)
                     + "</tr>" for r in rows[:max_rows])
    more = (f"<p><em>{len(rows) - max_rows} more rows of {len(rows)}: .to_frame() or .table() "
            f"has them all</em></p>" if len(rows) > max_rows else "")
    return (f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
            f"{more}")


def _markdown_rows(rows: list, max_rows: int = MAX_ROWS) -> list:
    if not rows:
        return ["(no rows)"]
    cols = list(dict.fromkeys(k for r in rows[:max_rows] for k in r))

    def cell(v):
        return _text(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows[:max_rows]]
    if len(rows) > max_rows:
        lines += ["", f"*{len(rows) - max_rows} more rows of {len(rows)}: .to_frame() or "
                      f".table() has them all*"]
    return lines


def result_html(result, max_rows: int = MAX_ROWS) -> str:
    """A result in a notebook: its repr, its summary lines, and the first rows of each table."""
    parts = [f"<div><p><strong>{html.escape(repr(result))}</strong></p>"]
    lines = result.summary_lines()
    if lines:
        parts.append(markdown_html("\n".join(lines), sortable=False))
    for suffix, rows in result.tables().items():
        if suffix:
            parts.append(f"<p><em>{html.escape(suffix)}</em></p>")
        parts.append(table_html(rows, max_rows))
    return "\n".join(parts) + "</div>"


def result_markdown(result, max_rows: int = MAX_ROWS) -> str:
    lines = [f"**{repr(result)}**", ""] + list(result.summary_lines())
    for suffix, rows in result.tables().items():
        lines += ([""] + ([f"*{suffix}*", ""] if suffix else []) + _markdown_rows(rows, max_rows))
    return "\n".join(lines) + "\n"


def analysis_markdown(a, figures: Optional[dict] = None) -> str:
    """An analysis as the report says it: its section (report/markdown.py) with the
    effective-depth table under its heading; figures: caption -> file name, as writer's
    _model_figures returns them (None: no figures)."""
    from .markdown import depth_table, section
    from .writer import file_slug
    text = section(a, file_slug(a.name), dict(figures or {}))
    body = text.split("\n", 1)[1] if text.startswith(f"## {a.name}\n") else text
    return "\n".join([f"## {a.name}", "", depth_table([a]), body])


def analysis_html(a) -> str:
    """An analysis in a notebook: analysis_markdown with its figures, drawn by the functions
    the report's writer uses, embedded as base64 PNG (drawn into a temporary folder, closed)."""
    from .writer import _model_figures, file_slug
    with tempfile.TemporaryDirectory() as tmp:
        figures = _model_figures(Path(tmp), file_slug(a.name), a)
        return "<div>" + markdown_html(analysis_markdown(a, figures),
                                       images=lambda src: data_uri(Path(tmp) / src)) + "</div>"


def _scale(parts) -> str:
    s = getattr(parts, "scale", None)
    if s is None:
        return "1"
    try:
        import torch
        if torch.is_tensor(s):
            s = s.detach()
            if s.numel() == 1:
                return f"{float(s):.4g}"
            return f"per channel {tuple(s.shape)}, mean {float(s.float().mean()):.4g}"
    except ImportError:  # pragma: no cover - the view needs torch
        pass
    return f"{float(s):.4g}" if isinstance(s, (int, float)) and math.isfinite(s) else str(s)


def view_html(view, max_rows: int = 64) -> str:
    """A view in a notebook: its repr and one row per block (index, name, sublayer, shapes,
    identity shortcut, downsampling, branch scale); beyond max_rows blocks, the first and last
    ones."""
    blocks = list(view.blocks)
    shown = blocks if len(blocks) <= max_rows else \
        blocks[:max_rows - 8] + [None] + blocks[-8:]
    head = "".join(f"<th>{h}</th>" for h in ("block", "name", "sublayer", "input", "output",
                                               "identity shortcut", "downsample", "scale"))
    rows = []
    for b in shown:
        if b is None:
            rows.append(f'<tr><td colspan="8"><em>... {len(blocks) - max_rows + 1} blocks '
                        f"...</em></td></tr>")
            continue
        shortcut = "none (plain layer)" if not b.residual else \
            "yes" if b.identity_shortcut else f"no ({b.identity_by})"
        cells = [str(b.index), f"<code>{html.escape(b.name)}</code>",
                 html.escape(b.sublayer or "-"), html.escape(str(tuple(b.in_shape))),
                 html.escape(str(tuple(b.out_shape))), html.escape(shortcut),
                 "yes" if b.downsample else "no", html.escape(_scale(b.parts))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<div><p><strong>{html.escape(repr(view))}</strong></p>\n<table>\n<thead><tr>"
            f"{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table></div>")
