"""How results and views show themselves as HTML and Markdown (Jupyter's _repr_html_ and
_repr_markdown_), and the Markdown -> HTML converter the report's report.html is made with.

Pure string building (html.escape, no dependency), below every layer, so that a Result or a
ResidualView can display itself without reaching up into the report; report/html.py builds the
self-contained report page on it.
"""
from __future__ import annotations

import html
import math
import re
from typing import Callable, Optional


MAX_ROWS = 12  # rows of a result's table shown in a notebook (the frame has them all)


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


def _python(v):
    """numpy / torch values (scalars, arrays, inside lists) as Python ones, as results.plain
    gives them, NaN and inf as None (display needs nothing from the rest of pathens)."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_python(e) for e in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _text(v, digits: int = 4) -> str:
    """A table cell for reading: as the CSV writes it (NaN / inf -> empty), but floats to
    `digits` significant digits (the frame and the CSV have them exactly)."""
    v = _python(v)
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
