"""Writing results to an output folder without ever losing a finished one."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import PathensError


def prepare_out(out, *, force: bool = False) -> Path:
    """Create the output folder; refuse one that already holds files unless force=True."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PathensError(f"--out {out} is a file, not a folder: choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PathensError(f"--out {out} already holds results: choose another folder, or pass "
                           f"--force to overwrite them")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_text(path, text: str) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)
    return path
