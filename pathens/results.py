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
    tables()        file key -> rows: the tables a report writes as `<model>_<key>.csv` ("": the
                    result's own name in Analysis.results; e.g. delete_random,
                    delete_random_summary)
    to_dict/to_json every field but the heavy ones, as JSON-ready values
    to_csv          table() as CSV text
    frames/to_frame the tables as pandas DataFrames, the same cells as the CSV, the result's
                    `config` in DataFrame.attrs (pandas is optional: pathens[pandas])
    _repr_html_, _repr_markdown_: how Jupyter shows it (display.py): its key numbers and
                    the first rows of its table
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
        """tables() as pandas DataFrames (suffix -> frame): the columns and cells of the CSV
        (data_frame), the result's config in attrs. Needs pandas (pathens[pandas])."""
        config = plain(getattr(self, "config", {}) or {})
        return {suffix: data_frame(rows, result=type(self).__name__, table=suffix,
                                   config=config)
                for suffix, rows in self.tables().items()}

    def to_frame(self):
        """table() as a pandas DataFrame, the result's config in attrs."""
        return data_frame(self.table(), result=type(self).__name__, table="",
                          config=plain(getattr(self, "config", {}) or {}))

    # Notebooks (Jupyter calls these): display.py builds the HTML and Markdown,
    # imported only when asked.
    def _repr_html_(self) -> str:
        from .display import result_html
        return result_html(self)

    def _repr_markdown_(self) -> str:
        from .display import result_markdown
        return result_markdown(self)

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


PANDAS_MISSING = ("DataFrames need pandas, an optional dependency of pathens: pip install "
                  "'pathens[pandas]' (or pip install pandas)")


def data_frame(rows: list[dict], **attrs):
    """rows as a pandas DataFrame holding the cells csv_text(rows) writes, attrs in .attrs.

    Each column takes the dtype of its values as plain() gives them: all bool -> bool, all int
    -> int64, all float -> float64, with a missing value (None: NaN or inf in the result)
    "boolean" / "Int64" (pd.NA) / NaN; anything else (strings, lists such as the deleted
    blocks, ints mixed with floats) stays object, each cell the Python value the CSV writes.
    So a cell is never converted (an int never becomes 1.0), and `str(cell)`, a missing one
    "", is the CSV's text."""
    try:
        import pandas as pd
    except ImportError:
        raise PathensError(PANDAS_MISSING) from None
    rows = [{k: plain(v) for k, v in row.items()} for row in rows]
    names = list(dict.fromkeys(k for row in rows for k in row))
    frame = pd.DataFrame({k: _column(pd, [row.get(k) for row in rows]) for k in names},
                         index=pd.RangeIndex(len(rows)))
    frame.attrs = dict(attrs)
    return frame


def _column(pd, values: list):
    """One column of data_frame: a Series of the narrowest dtype that keeps every cell."""
    given = [v for v in values if v is not None]
    missing = len(given) < len(values)
    if given and all(isinstance(v, bool) for v in given):
        return pd.Series(values, dtype="boolean" if missing else bool)
    if given and all(isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63
                     for v in given):
        return pd.Series(values, dtype="Int64" if missing else "int64")
    if given and all(isinstance(v, float) for v in given):
        return pd.Series([np.nan if v is None else v for v in values], dtype="float64")
    return pd.Series(values, dtype=object)


def fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)
