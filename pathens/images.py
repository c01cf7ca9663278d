"""Image files as an image model's evaluation pipeline takes them (RGB), or a one-line reason
why a file cannot be read.

`check_file` reads what is cheap to read before a run (the header; a PNG's chunks, checked
against their CRCs), so that a zero-byte or truncated file, a format PIL cannot read or a
decompression bomb is found before any computation, not in a late batch.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def open_rgb(path):
    """The file at path as an RGB PIL image."""
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB")


def check_file(path) -> str | None:
    """None when path's image can be read (as far as is cheap to tell without decoding it:
    see the module docstring), else why not, in one line."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()  # a PNG's chunks against their CRCs; the header of other formats
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds on a bad file
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def check_files(paths: list, workers: int = 8) -> list:
    """[(path, why), ...] for the files of paths that check_file refuses, in their order
    (threads: the work is reading files)."""
    paths = [Path(p) for p in paths]
    if len(paths) < 64:
        whys = [check_file(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            whys = list(pool.map(check_file, paths, chunksize=64))
    return [(p, why) for p, why in zip(paths, whys) if why is not None]
