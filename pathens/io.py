"""Writing files without losing anything: atomic replacement (a reader sees the old file or the
new one, never half of one); a write that fails for want of space is a WriteError naming its
file; under torch.distributed only rank 0 writes.

Below every layer: results, lesion row files, reports and the command line's run folders all
write through here (the run folders themselves, config.json and the lock are cli/run_folder.py).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


class WriteError(OSError):
    """A result file could not be written (a full disk, a quota, an I/O error): not the user's
    input, so the command line exits 1; `filename` is the file, `strerror` the reason. An
    OSError, so that code catching OSError still catches it."""

    def __init__(self, path, err: OSError):
        super().__init__(err.errno, err.strerror or str(err), str(path))


def distributed_run():
    """pathens.distributed when torch.distributed runs several processes, else None (this
    module is imported by `pathens --help`, which must not import torch)."""
    if "torch" not in sys.modules:
        return None
    from . import distributed
    return distributed if distributed.active() else None


def writer() -> bool:
    """False on the ranks of a torch.distributed run other than 0: they write no results."""
    dist = distributed_run()
    return dist is None or dist.is_writer()


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic(path):
    """A temporary path next to `path`, renamed onto it when the block ends without error (a
    crash never leaves half a file, nor destroys the old one); removed on error. A failed
    write (full disk, ...) is a WriteError naming `path`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(path, err) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path, text: str) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a file.
    Nothing is written on a torch.distributed rank other than 0."""
    if not writer():
        return Path(path)
    with atomic(path) as tmp:
        tmp.write_text(text if text.endswith("\n") else text + "\n")
    return Path(path)


def save_figure(fig, path, **kw) -> Path:
    """fig.savefig(path, **kw) atomically (as write_text), then close the figure (rank 0
    alone saves it)."""
    path = Path(path)
    try:
        if not writer():
            return path
        with atomic(path) as tmp:
            # the format from the real name: the temporary one ends in .tmp
            fig.savefig(tmp, format=path.suffix.lstrip(".") or None, **kw)
    finally:
        import matplotlib.pyplot as plt  # here: importing this module must stay cheap
        plt.close(fig)
    return path
