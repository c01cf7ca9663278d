"""What results record about where a model came from: the sha256 of its files and the
versions of the libraries that built it (so a number can be traced to the exact weights and
code)."""
from __future__ import annotations

import hashlib
import importlib
import os
import sys

_CHUNK = 1 << 20


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (checkpoints may be gigabytes)."""
    h = hashlib.sha256()
    with open(os.fspath(path), "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(*libraries: str) -> dict:
    """{"python", "pathens", "torch", and each library named that is imported: its version}."""
    from ..version import __version__
    out = {"python": sys.version.split()[0], "pathens": str(__version__)}
    for name in ("torch", *libraries):
        module = sys.modules.get(name) or _try_import(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "unknown"))
    return out


def _try_import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
