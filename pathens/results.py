"""Labelled result objects: frozen dataclasses that write themselves as JSON and CSV."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import PathensError
from .io import write_text


def plain(x):
    """numpy / torch / tuple values as JSON-ready Python values; NaN becomes None."""
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return plain(x.tolist())
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


class Result:
    """The protocol every measurement's result follows (a mixin for frozen dataclasses).

    Subclasses define `table()` -> list of row dicts, and may list in `_heavy` the fields (e.g.
    gradient tensors) left out of JSON. Everything else has a default built on them:
    tables()        file-name suffix -> rows: the CSV files of the result ("" : table() alone)
    to_dict/to_json every field but the heavy ones, as JSON-ready values
    to_csv          table() as CSV text
    frames/to_frame the tables as pandas DataFrames, the same cells as the CSV, the result's
                    `config` in DataFrame.attrs (pandas is optional: `pip install pandas`)
    notes, summary_lines, markdown: the result's text in a report (none by default): notes
                    explain the quantity once per report, summary_lines are key numbers in the
                    network's section, markdown(...) its own subsection. Its figure is drawn by
                    the function pathens.report.plots registers under the measurement's name.
    headline        {column: text}: its key numbers in a table of several networks side by side
                    (the diagnostics report's first table); none by default.
    """

    _heavy: tuple = ()

    def table(self) -> list[dict]:
        raise NotImplementedError

    def tables(self) -> dict[str, list[dict]]:
        return {"": self.table()}

    def to_dict(self) -> dict:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)
                if f.name not in self._heavy}

    def to_json(self, path: Optional[str | Path] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text(path, text)  # atomic; a full disk names the file
        return text

    def to_csv(self, path: Optional[str | Path] = None) -> str:
        text = csv_text(self.table())
        if path is not None:
            write_text(path, text)
        return text

    def frames(self) -> dict:
        """tables() as pandas DataFrames (suffix -> frame), the result's config in attrs."""
        try:
            import pandas as pd
        except ImportError:
            raise PathensError("DataFrames need pandas: pip install pandas (or "
                               "pip install 'pathens[pandas]')") from None
        config = plain(getattr(self, "config", {}) or {})
        out = {}
        for suffix, rows in self.tables().items():
            frame = pd.DataFrame([{k: plain(v) for k, v in r.items()} for r in rows])
            frame.attrs = dict(result=type(self).__name__, table=suffix, config=config)
            out[suffix] = frame
        return out

    def to_frame(self):
        """table() as a pandas DataFrame (frames()[""] for results with several tables)."""
        return next(iter(self.frames().values()))

    def notes(self) -> list[str]:
        return []

    def summary_lines(self) -> list[str]:
        return []

    def markdown(self, *, name: str, slug: str, figure: Optional[str]) -> list[str]:
        return []

    def headline(self) -> dict:
        return {}


def csv_text(rows: list[dict]) -> str:
    """Rows as CSV text (the columns of the first row), values as JSON would give them."""
    rows = [{k: plain(v) for k, v in row.items()} for row in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)
