"""Writing results to an output folder without ever losing a finished one.

Every output folder records the run that writes it in config.json, before any result: the
command and its settings. `--resume` continues a folder only when they are the same, so one
command never resumes (and overwrites) another one's results.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import PathensError

SWEEPS = "sweeps"  # subfolder of resumable sweep files (one row per finished condition)
CONFIG = "config.json"  # the run's command and settings (commands add what they learn later)


def prepare_out(out, *, run: dict, force: bool = False, resume=None) -> Path:
    """Create the output folder for `run` (dict(command=name, settings={...}), plain values)
    and record it in config.json. A folder that already holds files is refused unless
    force=True (then its earlier sweep files are removed, so the run starts fresh) or
    resume=True and its config.json records the same run (its sweep files are continued).
    resume=None: the command has no --resume (the refusal does not suggest it)."""
    out = Path(out)
    _check_folder(out, out)
    holds = out.is_dir() and any(out.iterdir())
    if holds and resume:
        _check_same_run(out, run)
    elif holds and not force:
        can_resume = resume is not None and (out / SWEEPS).is_dir()
        raise PathensError(f"--out {out} already holds results: choose another folder, pass "
                           f"--force to overwrite them" + (" or --resume to continue its sweeps"
                                                          if can_resume else ""))
    if force and not resume and (out / SWEEPS).is_dir():
        shutil.rmtree(out / SWEEPS)
    if not (holds and resume):  # a resumed folder keeps the fuller config.json of its run
        write_text(out / CONFIG, json.dumps(run, indent=2, default=str))
    return out


def prepare_file(path, *, force: bool = False) -> Path:
    """Check an output file's path before any long computation: not a folder, not an existing
    file unless force=True, in a writable folder (created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise PathensError(f"--out {path} is a folder: pass a file name, e.g. {path / 'out'}")
    if path.exists() and not force:
        raise PathensError(f"{path} exists: choose another --out, or pass --force to overwrite it")
    _check_folder(path.parent, path)
    return path


def _check_folder(folder: Path, given: Path) -> None:
    """Create `folder` (and its parents) for `--out given`, or say in one line why it cannot
    be written to."""
    above = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if above is not None and not above.is_dir():  # mkdir would say only "Not a directory"
        where = "is a file" if above == given else f"is under {above}, which is a file"
        raise PathensError(f"--out {given} {where}, not a folder: choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathensError(f"cannot create the folder {folder} for --out {given} "
                           f"({err.strerror or err}): choose a folder you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PathensError(f"cannot write into {folder} (permission denied): choose another --out")


def _check_same_run(out: Path, run: dict) -> None:
    """Refuse to resume a folder that another command, or other settings, wrote."""
    try:
        stored = json.loads((out / CONFIG).read_text())
    except (OSError, ValueError):
        stored = None
    fix = "choose another folder, or drop --resume and pass --force to overwrite it"
    if not isinstance(stored, dict) or not isinstance(stored.get("settings"), dict):
        raise PathensError(f"--out {out} cannot be resumed: it holds files but no {CONFIG} "
                           f"recording the pathens command that wrote them; {fix}")
    if stored.get("command") != run["command"]:
        raise PathensError(f"--out {out} holds the results of `pathens {stored.get('command')}`, "
                           f"not of `pathens {run['command']}`: it cannot be resumed; {fix}")
    now = json.loads(json.dumps(run["settings"], default=str))  # as it reads back from disk
    then = stored["settings"]
    for key in [*now, *(k for k in then if k not in now)]:
        if then.get(key) != now.get(key):
            flag = key if key in ("checkpoint", "checkpoints") else "--" + key.replace("_", "-")
            raise PathensError(f"--out {out} holds a `pathens {run['command']}` run with other "
                               f"settings ({flag}: {then.get(key)!r} there, {now.get(key)!r} "
                               f"now): resume with the same settings, or {fix}")


def write_text(path, text: str) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)
    return path
