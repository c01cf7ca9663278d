"""The `pathens` command line: `main` parses (arguments.py), checks every value, joins a
torchrun process group where there is one, and runs the command (commands.py), turning every
failure into one line and an exit code.

Exit codes: 0 success, 2 user error (one line on stderr, no traceback), 1 internal error or a
result file that could not be written (one line), 130 interrupted, 141 stdout closed early
(`pathens paths 54 | head`: quiet, as a tool stopped by SIGPIPE).

Importing this package imports neither torch nor matplotlib (`pathens --help` is instant):
a command's modules are imported only to run it.
"""
from __future__ import annotations

import errno
import os
import sys

from ..errors import PathensError
from ..io import WriteError
from .arguments import check_values, parser

__all__ = ["main"]


def main(argv=None) -> int:
    try:
        try:
            args = parser().parse_args(argv)  # --help, --version and usage errors exit here
        except SystemExit:
            sys.stdout.flush()  # argparse ignores a closed pipe; the flush at exit would not
            raise
        args._argv = list(sys.argv[1:] if argv is None else argv)  # the command line, as typed
        return _run(args)
    except BrokenPipeError:  # the reader of stdout left (e.g. `| head`): stop, quietly
        _discard_stdout()
        return 141

def _run(args) -> int:
    resume = hasattr(args, "resume")
    try:
        check_values(args)
        if _launched() and hasattr(args, "device"):  # torchrun: join its process group first
            from .. import distributed
            args.device = distributed.init_from_env(args.device)
            distributed.same_everywhere("command lines", args._argv)
        from . import commands  # torch, matplotlib: only to run a command
        code = getattr(commands, args.run)(args) or 0
        sys.stdout.flush()  # a closed pipe is found here, not at exit (a traceback there)
        return code
    except WriteError as err:  # a full disk, a quota: not the input; the rows on disk are whole
        after = (f"free some space and run the command again{_kept(err)}" if _kept(err) else
                 _after_full_disk(resume))
        print(f"pathens: error: could not write {err.filename} ({err.strerror}): {after}",
              file=sys.stderr)
        return 1
    except (PathensError, FileNotFoundError) as err:
        if not _quiet_rank(err):
            print(f"pathens: error: {err}{_kept(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except OSError as err:  # the machine, not the input
        if err.errno in _DISK_FULL and getattr(args, "out", None):  # a writer that is not ours
            after = (f"free some space and run the command again{_kept(err)}" if _kept(err)
                     else _after_full_disk(resume))
            print(f"pathens: error: could not write into {args.out} ({err.strerror}): "
                  f"{after}", file=sys.stderr)
        else:
            where = f": {err.filename}" if err.filename else ""
            print(f"pathens: error: {err.strerror or err}{where}{_kept(err)}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if not _launched():
            raise  # an internal error: its traceback is the report
        # under torchrun: a process died (killed, out of memory, a failure of its own) and the
        # collectives of the others fail; torchrun stops them all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        again = (f"run it again{_kept(err)}" if _kept(err) else
                 "finished lesion rows are kept: run it again with --resume" if resume else
                 "run it again")
        print(f"pathens: error: rank {os.environ.get('RANK', '?')}: stopped: another process "
              f"failed or the processes lost each other ({first[:200]}); {again}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        if _kept(err):
            print(f"pathens: interrupted{_kept(err)}", file=sys.stderr)
            return 130
        if not getattr(err, "pathens_out", None) and args.command not in ("train", "paths"):
            # outputs.open_out marks an interrupt of a run that had begun writing --out
            print("pathens: interrupted while loading the model and data, before the run began: "
                  "nothing was written", file=sys.stderr)
            return 130
        again = " (re-run with --resume to continue its lesion sweeps)" if resume else ""
        print(f"pathens: interrupted; files already written are complete{again}", file=sys.stderr)
        return 130

def _kept(err) -> str:
    """'; the previous results in OUT are kept ...' where a --force run failed and put the
    results it was replacing back (outputs.open_out), else ''."""
    out = getattr(err, "pathens_restored", None)
    return (f"; the previous results in {out} are kept as they were (--force replaces them "
            f"only when the new run finishes)" if out else "")

def _launched() -> bool:
    """Started by torchrun (or another launcher of several processes)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1

def _quiet_rank(err) -> bool:
    """True where a message would repeat rank 0's: a rank other than 0 stopped because rank 0
    (or another rank, reported by rank 0) failed; or it failed as rank 0 did, before the
    processes could compare (the same bad flag on every rank)."""
    if not _launched():
        return False
    from .. import distributed
    return isinstance(err, distributed.Stopped) or (
        int(os.environ.get("RANK", "0")) != 0 and not distributed.active()
        and not isinstance(err, distributed.RendezvousError))

# errors of a write that found no room (a figure library's writer raises them without the
# file's name)
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}

def _after_full_disk(resume: bool) -> str:
    return ("free some space and re-run with --resume to continue: finished lesion rows are "
            "kept" if resume else "free some space and run the command again")

def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
