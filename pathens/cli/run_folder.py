"""Writing results to an output folder without ever losing a finished one.

Every output folder records the run that writes it in config.json, before any result: the
command and its settings. `--resume` continues a folder only when they are the same, so one
command never resumes (and overwrites) another one's results.

Under torch.distributed (torchrun) rank 0 alone checks, creates, locks and writes the folder;
the other ranks write nothing (write_text and save_figure return at once there) and learn of
a refusal from rank 0, so that every rank stops with it.

A command checks its folder twice: `check_out` before it loads anything (a folder that holds
results is refused at once, touching nothing), and `open_out` once every input is checked: it
creates the folder, locks it for the whole run (locks.py) and checks it again under the lock,
since another run may have written it in between.

--force replaces a folder's results only when the new run finishes: open_out moves them aside
into `--out/.pathens-replaced/` (renames, on the same file system) and the run writes into the
emptied folder; at the end the set-aside results are deleted, and if the run fails (a bad file
found in a late batch, a full disk, an interrupt, an error) they are moved back in place of the
new run's files, so that the folder is the finished run it was and `--resume` still continues
it. A run killed outright (SIGKILL, power) leaves them in `.pathens-replaced/`: the folder
then holds the killed run (which `--resume` continues; its end deletes them) and, set aside,
the last results (a later --force puts those back if it fails). A run that created --out and
fails before writing any result removes the folder again.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from ..errors import PathensError
from ..io import distributed_run, temporary_path, write_text, writer
from .locks import LOCK, lock_folder

SWEEPS = "sweeps"  # subfolder of resumable sweep files (one row per finished condition)
REPLACED = ".pathens-replaced"  # --force: the results being replaced, until the run finishes
CONFIG = "config.json"  # the run's command and settings (commands add what they learn later)


def check_out(out, *, run: dict, force: bool = False, resume=None) -> Path:
    """Refuse an --out that cannot take `run`'s results, touching nothing: a file (or a path
    under one), a folder we may not write into, a folder holding results (unless force, or
    resume with the same run recorded). resume=None: the command has no --resume."""
    out = Path(out)
    above = next((p for p in (out, *out.parents) if p.exists()), None)
    if above is not None and not above.is_dir():  # mkdir would say only "Not a directory"
        where = "is a file" if above == out else f"is under {above}, which is a file"
        raise PathensError(f"--out {out} {where}, not a folder: choose another path")
    if above is not None and not os.access(above, os.W_OK | os.X_OK):
        raise PathensError(f"cannot write into {above} (permission denied): choose another --out")
    if not holds_results(out):
        return out
    if resume:
        _check_same_run(out, run)
    elif not force:
        can_resume = resume is not None and (out / SWEEPS).is_dir()
        raise PathensError(f"--out {out} already holds results: choose another folder, pass "
                           f"--force to overwrite them" + (" or --resume to continue its sweeps"
                                                          if can_resume else ""))
    return out


@contextlib.contextmanager
def open_out(out, *, run: dict, force: bool = False, resume=None, holder: str = "pathens"):
    """As _open_out (below) in one process; under torch.distributed rank 0 opens the folder and
    every rank gets its path, or rank 0's refusal."""
    dist = distributed_run()
    if dist is None:
        with _open_out(out, run=run, force=force, resume=resume, holder=holder) as path:
            yield path
        return
    with contextlib.ExitStack() as held:  # rank 0 holds the lock for the block's duration
        path = dist.agree(lambda: held.enter_context(
            _open_out(out, run=run, force=force, resume=resume, holder=holder)))
        yield Path(path)


def distributed_check_out(out, **kw) -> Path:
    """check_out on rank 0, its refusal on every rank (check_out in one process)."""
    dist = distributed_run()
    return check_out(out, **kw) if dist is None else Path(dist.agree(lambda: check_out(out, **kw)))


@contextlib.contextmanager
def _open_out(out, *, run: dict, force: bool = False, resume=None, holder: str = "pathens"):
    """The output folder for `run`, created, locked for the duration of the `with` block (a
    second run on it fails at once, naming this one: `holder`, e.g. its command line) and
    recorded in config.json. Call it once every input is checked: with force, the folder's
    earlier sweep files are removed here (the run starts fresh); with resume and the same run
    recorded, they are continued. Yields the folder's Path."""
    out = Path(out)
    check_out(out, run=run, force=force, resume=resume)
    created, failed = not out.exists(), False
    _make_folder(out, out)
    try:
        with lock_folder(out, holder=holder, what=f"--out {out}"):
            check_out(out, run=run, force=force, resume=resume)  # again: no one else writes it
            resumed = resume and holds_results(out)
            aside = None
            if not resumed:  # a resumed folder keeps the fuller config.json of its run
                if force and holds_results(out):
                    aside = _set_aside(out)
                write_text(out / CONFIG, json.dumps(run, indent=2, default=str))
            try:
                yield out
            except BaseException as err:
                failed = True
                err.pathens_out = str(out)  # the run had begun (cli.py words its message so)
                if aside is not None and _put_back(out, aside):
                    err.pathens_restored = str(out)
                raise
            if (out / REPLACED).exists():  # the run finished: what it replaces goes
                shutil.rmtree(out / REPLACED, ignore_errors=True)
    finally:
        if created and failed and writer():
            _remove_if_empty(out)


def _set_aside(out: Path) -> Path:
    """Move the results in out into out/REPLACED (returned). If REPLACED is there already, a
    --force run was killed before it finished: REPLACED holds the last results it was to
    replace and out the killed run's; those are dropped and REPLACED kept."""
    aside = out / REPLACED
    stale = aside.is_dir()
    aside.mkdir(exist_ok=True)
    for p in out.iterdir():
        if p.name in (LOCK, REPLACED):
            continue
        if stale:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        else:
            os.replace(p, aside / p.name)
    return aside


def _put_back(out: Path, aside: Path) -> bool:
    """Replace out's files by those set aside in `aside`; False (and a line on stderr) if that
    failed, leaving them in `aside`."""
    try:
        for p in out.iterdir():
            if p.name not in (LOCK, REPLACED):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for p in aside.iterdir():
            os.replace(p, out / p.name)
        aside.rmdir()
        return True
    except OSError as err:
        print(f"pathens: could not put the previous results back in {out} "
              f"({err.strerror or err}): they are in {aside}", file=sys.stderr)
        return False


def _remove_if_empty(out: Path) -> None:
    """Remove out, which this run created, if it holds no result: a run that failed before it
    wrote any leaves no folder behind."""
    if holds_results(out):
        return
    with contextlib.suppress(OSError):
        for name in (CONFIG, LOCK):
            (out / name).unlink(missing_ok=True)
        for p in sorted(out.rglob("*"), reverse=True):  # empty subfolders (sweeps/)
            p.rmdir()
        out.rmdir()


def holds_results(out) -> bool:
    """Whether `out` holds anything a run could lose: any file but its lock, pathens'
    temporary files and a config.json recording a pathens run (a run that stopped on a bad
    input before computing anything leaves only that). A config.json that is not pathens'
    (someone else's folder) counts as a result."""
    out = Path(out)
    if not out.is_dir():
        return False
    for p in out.rglob("*"):
        if p.is_dir():
            continue
        if p.parent == out and (p.name == LOCK or (p.name == CONFIG and _is_run(p))):
            continue
        if p.name.startswith(".") and p.name.endswith(".tmp"):  # write_text's, torn by a crash
            continue
        return True
    return False


def _is_run(config: Path) -> bool:
    try:
        stored = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and isinstance(stored.get("command"), str) and isinstance(
        stored.get("settings"), dict)


def prepare_file(path, *, force: bool = False) -> Path:
    """Check an output file's path before any long computation: not a folder, not an existing
    file unless force=True, in a folder (created if missing) where a file can be written."""
    path = Path(path)
    if path.is_dir():
        raise PathensError(f"--out {path} is a folder: pass a file name, e.g. {path / 'out'}")
    if path.exists() and not force:
        raise PathensError(f"{path} exists: choose another --out, or pass --force to overwrite it")
    _make_folder(path.parent, path)
    probe = temporary_path(path)  # the temporary file write_text will write: can it be created here?
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:  # e.g. /proc, a read-only mount: access() did not know
        raise PathensError(f"cannot write {path} ({err.strerror or err}): choose another "
                           f"--out") from None
    return path


def _make_folder(folder: Path, given: Path) -> None:
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
