"""Writing results to an output folder without ever losing a finished one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import PathensError

SWEEPS = "sweeps"  # subfolder of resumable sweep files (one row per finished condition)


def prepare_out(out, *, force: bool = False, resume: bool = False) -> Path:
    """Create the output folder. One that already holds files is refused unless force=True
    (then its earlier sweep files are removed, so the run starts fresh) or resume=True (the
    sweep files there are continued; a sweep with other settings is refused)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PathensError(f"--out {out} is a file, not a folder: choose another path")
    if out.is_dir() and any(out.iterdir()) and not (force or resume):
        raise PathensError(f"--out {out} already holds results: choose another folder, pass "
                           f"--force to overwrite them" + (" or --resume to continue its sweeps"
                                                          if (out / SWEEPS).is_dir() else ""))
    if force and not resume and (out / SWEEPS).is_dir():
        shutil.rmtree(out / SWEEPS)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_text(path, text: str) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)
    return path
