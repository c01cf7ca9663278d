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
import re
from pathlib import Path
from typing import Optional

from ..display import markdown_html

__all__ = ["report", "data_uri"]


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



# ---- notebooks ---------------------------------------------------------------------------



