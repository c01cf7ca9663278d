"""The output file of a lesion sweep: one row per finished condition, appended as it finishes,
with the sweep's configuration on the first line so that a resumed run continues only the same
sweep (lesion_sweep.py runs the conditions)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from pathlib import Path

from ..errors import PathensError
from ..io import WriteError
from ..results import plain

# The columns of a condition's row, in order (also the CSV header of an output file).
COLUMNS = ("condition", "kind", "k", "trial", "deleted", "order", "downsampling", "tau",
           "error", "error_lo", "error_hi", "loss", "errors", "n", "nonfinite", "seed")
# Written after them for a classifier of at least 5 classes (top-5, as timm's validate.py):
# the misclassified fraction and count when the target is not among the 5 largest logits.
# A file written before they existed (no such columns) still loads and resumes, without them.
TOP5 = ("top5_error", "top5_errors")
_INT = ("condition", "k", "trial", "errors", "n", "nonfinite", "top5_errors")
_FLOAT = ("tau", "error", "error_lo", "error_hi", "loss", "top5_error")

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
        self.config = json.loads(json.dumps(plain(config)))  # as it reads back from disk
        self.columns = None  # a CSV file's columns: COLUMNS, or COLUMNS + TOP5 (its header)

    def _refuse(self, why: str):
        raise PathensError(f"{self.path} {why}; to start fresh, write to another file or delete "
                           f"this one (CLI: another --out, or --force instead of --resume)")

    def load(self, conds: list) -> list:
        """Rows already on disk, by condition index (None where missing); refuses a file from
        another sweep, or one we could not append to (before any condition runs), and drops a
        line torn by a crash in the middle of writing it."""
        rows = [None] * len(conds)
        if self.path.is_dir():
            raise PathensError(f"out={self.path} is a folder: pass a file path (.csv or .jsonl)")
        self._check_writable()
        if not self.path.exists() or self.path.stat().st_size == 0:
            return rows
        text = self.path.read_text()
        if "\n" not in text and self._first_line().startswith(text):
            self.path.write_text("")  # the first line, torn by a crash: start afresh
            return rows
        lines = text.split("\n")  # as the file's lines are numbered (splitlines cuts more)
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
            lines = text.split("\n")
        body = list(enumerate(lines[1:-1], start=2))  # (line number, line); "" after the last \n
        if self.csv and not body:  # the header line was torn: start the file afresh
            with open(self.path, "r+") as f:
                f.truncate(0)
            return rows
        if self.csv:
            header = tuple(body[0][1].split(","))
            if header not in (COLUMNS, COLUMNS + TOP5):
                self._refuse("has an unexpected CSV header (line 2)")
            self.columns, body = header, body[1:]
        for number, line in body:
            if not line.strip():
                continue
            try:
                r = _from_csv(line, self.columns) if self.csv else _from_json(line)
            except (ValueError, TypeError, KeyError) as err:
                self._refuse(f"has a line that is not a row of a lesion sweep (line {number}: "
                             f"{err})")
            i = r["condition"]
            c = conds[i] if 0 <= i < len(conds) else None
            if c is None or (r["kind"], r["k"], r["trial"], tuple(r["deleted"])) != (
                    c.kind, c.k, c.trial, c.deleted) or (r["order"] and tuple(r["order"])) != (
                    c.order and tuple(c.order)):
                self._refuse(f"has a row that is not part of this sweep (line {number}, "
                             f"condition {i})")
            rows[i] = r
        return rows

    def _check_writable(self) -> None:
        """Refuse, before any condition runs, a file that could not be created or appended
        to (a missing or read-only folder, /proc, ...): found at the first append, the
        conditions before it would be lost."""
        existed = self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
            if not existed:  # leave no empty file behind (nothing was asked yet)
                self.path.unlink()
        except OSError as err:
            raise PathensError(f"out={self.path} cannot be written ({err.strerror or err}): "
                               f"choose a file in a folder you can write to") from None

    def _first_line(self) -> str:
        """The configuration line that starts the file (without its newline)."""
        if self.csv:
            return _CSV_TAG + json.dumps(self.config)
        return json.dumps({_JSON_TAG: self.config})

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
        """Append finished rows (with the header lines if the file is new), flushed to disk.
        If the write fails (a full disk), the file is cut back to its rows before it, so that
        every line on disk stays a whole row and --resume continues from them; the failure is
        a WriteError naming the file."""
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        buf = io.StringIO()
        if self.csv:
            if fresh:  # the top-5 columns where the rows have them; an old file keeps its own
                self.columns = COLUMNS + (TOP5 if rows and TOP5[0] in rows[0] else ())
            elif self.columns is None:
                with open(self.path) as f:
                    f.readline()
                    self.columns = tuple(f.readline().rstrip("\n").split(","))
            writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n",
                                    extrasaction="ignore")
            if fresh:
                buf.write(self._first_line() + "\n")
                writer.writeheader()
            writer.writerows({k: plain(v) for k, v in r.items()} for r in rows)
        else:
            if fresh:
                buf.write(self._first_line() + "\n")
            for r in rows:
                buf.write(json.dumps(plain(r)) + "\n")
        size = 0 if fresh else self.path.stat().st_size
        try:
            if fresh:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):  # cutting a file frees space: this works
                os.truncate(self.path, size)
            raise WriteError(self.path, err) from err


def _from_csv(line: str, columns: tuple = COLUMNS) -> dict:
    """A row from one CSV line of a file with these columns; ValueError / TypeError /
    KeyError if it is not one."""
    values = next(csv.reader([line]))
    if len(values) != len(columns):
        raise ValueError(f"{len(values)} fields, not the {len(columns)} columns of a row")
    r = dict(zip(columns, values))
    out = {}
    for k in columns:
        v = r[k]
        if k in TOP5 and v == "":
            continue
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
    return _checked(out)


def _from_json(line: str) -> dict:
    """A row from one JSON line; ValueError / TypeError / KeyError if it is not one."""
    r = json.loads(line)
    if not isinstance(r, dict):
        raise ValueError(f"a JSON {type(r).__name__}, not an object")
    missing = [k for k in COLUMNS if k not in r]
    if missing:
        raise ValueError(f"it has no {missing[0]!r} field")
    out = {k: r[k] for k in COLUMNS + TOP5 if k in r}
    for k in _FLOAT:
        if k in out:
            out[k] = math.nan if out[k] is None else float(out[k])
    out["deleted"] = out["deleted"] or []
    return _checked(out)


def _checked(r: dict) -> dict:
    """r if its identifying fields have the types of a row (compared with the sweep's
    conditions next), else a ValueError saying which does not."""
    def ints(v):
        return isinstance(v, list) and all(_is_int(i) for i in v)
    for key, ok in (("condition", _is_int), ("k", _is_int), ("trial", _is_int),
                    ("kind", lambda v: isinstance(v, str)), ("deleted", ints),
                    ("order", lambda v: v is None or ints(v))):
        if not ok(r[key]):
            raise ValueError(f"{key} is {r[key]!r}")
    return r


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
