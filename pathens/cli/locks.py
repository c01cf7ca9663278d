"""One run at a time per output folder: an advisory lock on `folder/.pathens.lock`.

Two runs on the same --out would both compute every condition and append duplicate rows to
the same sweep files. The lock is an OS file lock (flock on POSIX, msvcrt on Windows), taken
without waiting: a second run fails at once, with one line naming the run that holds it (its
pid, host, command line and start time, which the holder writes into the lock file; on Windows,
where the locked file cannot be read, the message says only that it is held). The OS
drops the lock when its process ends, however it ends (a kill, a crash), so a stale lock
never blocks a folder. The file itself stays (emptied on release): removing it would let a
run that opened it just before the removal lock a file no one else sees.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from ..errors import PathensError

LOCK = ".pathens.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # the first byte stands for the file
    except OSError:  # BlockingIOError (POSIX) / PermissionError (Windows): held by another
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _holder(path: Path) -> str:
    """The run that holds the lock, in words, from what it wrote into the lock file."""
    try:
        info = json.loads(path.read_text())
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{info['command']}")
    except (OSError, ValueError, KeyError, TypeError):  # it has not written it yet
        return "its details are not written yet"


@contextlib.contextmanager
def lock_folder(folder, *, holder: str, what: str | None = None):
    """Hold the lock of `folder` (which must exist) for the `with` block, or raise a one-line
    PathensError naming the run that holds it. holder: this run, in words (its command line);
    what: the folder as the user named it (default: its path)."""
    folder = Path(folder)
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise PathensError(f"cannot create the lock file {path} ({err.strerror or err}): "
                           f"choose a folder you can write to") from None
    try:
        if not _try_lock(fd):
            raise PathensError(f"{what or folder} is in use by another pathens run "
                               f"({_holder(path)}); wait for it to end, or choose another "
                               f"folder")
        try:
            info = dict(pid=os.getpid(), host=socket.gethostname(), command=holder,
                        started=time.strftime("%Y-%m-%d %H:%M:%S %z"))
            # the details only inform a second run: on a full disk the lock holds without
            # them, and the run's first result file reports the disk
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps(info) + "\n").encode())
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # the next holder, or none: no stale details
            _unlock(fd)
    finally:
        os.close(fd)
