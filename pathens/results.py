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
    """Mixin for frozen dataclasses. Subclasses define `table()` -> list of row dicts, and may
    list in `_heavy` the fields (e.g. gradient tensors) left out of JSON."""

    _heavy: tuple = ()

    def table(self) -> list[dict]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)
                if f.name not in self._heavy}

    def to_json(self, path: Optional[str | Path] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text(path, text)  # atomic; a full disk names the file
        return text

    def to_csv(self, path: Optional[str | Path] = None) -> str:
        rows = [{k: plain(v) for k, v in row.items()} for row in self.table()]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        if path is not None:
            write_text(path, buf.getvalue())
        return buf.getvalue()
