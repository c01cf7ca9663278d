"""An analysis in a notebook (Analysis._repr_html_ / _repr_markdown_): its report section with
the effective-depth table and its figures, drawn by the functions the report's writer uses.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..display import markdown_html
from .html import data_uri
from .markdown import depth_table, section
from .writer import result_figure, model_figures, file_slug


def analysis_markdown(a, figures: Optional[dict] = None, extras: Optional[dict] = None) -> str:
    """An analysis as the report says it: its section (report/markdown.py) with the
    effective-depth table under its heading; figures: caption -> file name, as writer's
    model_figures returns them, extras: result name -> its figure's file (None: no
    figures)."""
    extras = extras or {key: None for key in a.results}
    text = section(a, file_slug(a.name), dict(figures or {}), extras)
    body = text.split("\n", 1)[1] if text.startswith(f"## {a.name}\n") else text
    return "\n".join([f"## {a.name}", "", depth_table([a]), body])


def analysis_html(a) -> str:
    """An analysis in a notebook: analysis_markdown with its figures, drawn by the functions
    the report's writer uses, embedded as base64 PNG (drawn into a temporary folder, closed)."""
    with tempfile.TemporaryDirectory() as tmp:
        slug = file_slug(a.name)
        figures = model_figures(Path(tmp), slug, a)
        extras = {key: result_figure(Path(tmp), slug, a, key) for key in a.results}
        return "<div>" + markdown_html(analysis_markdown(a, figures, extras),
                                       images=lambda src: data_uri(Path(tmp) / src)) + "</div>"
