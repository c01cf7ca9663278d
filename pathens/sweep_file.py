"""The output file of a lesion sweep: one row per finished condition, appended as it finishes,
with the sweep's configuration on the first line so that a resumed run continues only the same
sweep (lesion_sweep.py runs the conditions)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from .errors import PathensError
from .results import _plain

# The columns of a condition's row, in order (also the CSV header of an output file).
COLUMNS = ("condition", "kind", "k", "trial", "deleted", "order", "downsampling", "tau",
           "error", "error_lo", "error_hi", "loss", "errors", "n", "nonfinite", "seed")
_INT = ("condition", "k", "trial", "errors", "n", "nonfinite")
_FLOAT = ("tau", "error", "error_lo", "error_hi", "loss")

_CSV_TAG = "# pathens lesion sweep "
_JSON_TAG = "pathens_lesion_sweep"


class SweepFile:
    """A CSV (.csv) or JSON-lines (other suffixes, e.g. .jsonl) file of finished conditions.

    CSV: line 1 `# pathens lesion sweep {config as JSON}`, line 2 the column names, then one
    row per condition. JSONL: line 1 `{"pathens_lesion_sweep": {config}}`, then one object per
    condition (NaN written as null).
    """

    def __init__(self, path, config: dict):
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        self.config = json.loads(json.dumps(_plain(config)))  # as it reads back from disk

    def _refuse(self, why: str):
        raise PathensError(f"{self.path} {why}; to start fresh, write to another file or delete "
                           f"this one (CLI: another --out, or --force instead of --resume)")

    def load(self, conds: list) -> list:
        """Rows already on disk, by condition index (None where missing); refuses a file from
        another sweep, and drops a line torn by a crash in the middle of writing it."""
        rows = [None] * len(conds)
        if self.path.is_dir():
            raise PathensError(f"out={self.path} is a folder: pass a file path (.csv or .jsonl)")
        if not self.path.exists() or self.path.stat().st_size == 0:
            return rows
        text = self.path.read_text()
        lines = text.splitlines()
        stored = self._read_config(lines[0] if "\n" in text else "")
        if stored != self.config:
            keys = list(self.config) + [k for k in stored if k not in self.config]
            key = next(k for k in keys if stored.get(k) != self.config.get(k))
            what = " (other examples or preprocessing)" if key == "data" else ""
            self._refuse(f"holds a different lesion sweep ({key}: {stored.get(key)!r} there, "
                         f"{self.config.get(key)!r} now{what})")
        if not text.endswith("\n"):  # a line torn by a crash: drop it (its condition reruns)
            text = text[:text.rfind("\n") + 1]
            with open(self.path, "r+") as f:
                f.truncate(len(text.encode()))
            lines = text.splitlines()
        body = lines[1:]
        if self.csv:
            if not body:
                return rows
            if body[0].split(",") != list(COLUMNS):
                self._refuse("has an unexpected CSV header")
            records = [_from_csv(r) for r in csv.DictReader(io.StringIO("\n".join(body) + "\n"))]
        else:
            records = [_from_json(json.loads(line)) for line in body if line.strip()]
        for r in records:
            i = r["condition"]
            c = conds[i] if isinstance(i, int) and 0 <= i < len(conds) else None
            if c is None or (r["kind"], r["k"], r["trial"], tuple(r["deleted"])) != (
                    c.kind, c.k, c.trial, c.deleted) or (r["order"] and tuple(r["order"])) != (
                    c.order and tuple(c.order)):
                self._refuse(f"has a row (condition {i}) that is not part of this sweep")
            rows[i] = r
        return rows

    def _read_config(self, first: str) -> dict:
        try:
            if self.csv:
                if not first.startswith(_CSV_TAG):
                    raise ValueError
                return json.loads(first[len(_CSV_TAG):])
            return json.loads(first)[_JSON_TAG]
        except (ValueError, KeyError, TypeError):
            self._refuse("is not a pathens lesion sweep file (its first line lacks the "
                         "configuration header)")

    def append(self, rows: list):
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        buf = io.StringIO()
        if self.csv:
            writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
            if fresh:
                buf.write(_CSV_TAG + json.dumps(self.config) + "\n")
                writer.writeheader()
            writer.writerows({k: _plain(v) for k, v in r.items()} for r in rows)
        else:
            if fresh:
                buf.write(json.dumps({_JSON_TAG: self.config}) + "\n")
            for r in rows:
                buf.write(json.dumps(_plain(r)) + "\n")
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())


def _from_csv(r: dict) -> dict:
    out = {}
    for k in COLUMNS:
        v = r.get(k, "")
        if k in _INT:
            out[k] = int(v)
        elif k in _FLOAT:
            out[k] = float(v) if v != "" else math.nan
        elif k in ("deleted", "order"):
            out[k] = json.loads(v) if v != "" else None
        elif k == "downsampling":
            out[k] = v == "True"
        elif k == "seed":
            out[k] = int(v) if v not in ("", "None") else None
        else:
            out[k] = v
    out["deleted"] = out["deleted"] or []
    return out


def _from_json(r: dict) -> dict:
    out = {k: r.get(k) for k in COLUMNS}
    for k in _FLOAT:
        out[k] = math.nan if out[k] is None else float(out[k])
    out["deleted"] = out["deleted"] or []
    return out
