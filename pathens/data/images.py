"""Image files as an image model's evaluation pipeline takes them: 8-bit RGB, whatever the file
holds, or a one-line reason why a file cannot be read that way.

PIL's `convert("RGB")` is right for 8-bit files (L, P, RGB, RGBA, CMYK, ...) but silently wrong
for others: a 16-bit PNG (mode I;16) is clipped at 255 of its 65535 levels (mid-grey becomes
white) and a float TIFF (mode F) in [0, 1] is truncated to 0 or 1. Here 16-bit images are
scaled by 1/65535 and float images are taken as they are when they lie in [0, 1] (outside it
their scale is unknown: refused); both are then quantised to 8 bits (an error of at most
1/510, the precision of every 8-bit image) so that they go through the very transform
(resize, crop, normalise) the model's 8-bit images go through. 32-bit integer images (mode I
outside PNG) have no known scale either: refused.

`check_file` reads what is cheap to read before a run (the header; a PNG's chunks, checked
against their CRCs; the pixels of float images, whose range decides), so that a zero-byte or
truncated file, a format PIL cannot read or a decompression bomb is found before any
computation, not in a late batch.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """A file that holds an image pathens cannot take as 8-bit RGB (the message says why)."""


def _scale(im) -> float | None:
    """The value of full intensity in im's pixels when they are not 8-bit (None: 8-bit, PIL's
    own conversion is right), or ImageError when it cannot be known."""
    if im.mode in SIXTEEN_BIT or (im.mode == "I" and im.format == "PNG"):  # PNG's I: 16-bit
        return 65535.0
    if im.mode == "F":
        return 1.0
    if im.mode.startswith("I"):
        raise ImageError(f"32-bit integer pixels (PIL mode {im.mode}) have no known full scale: "
                         f"save it as 8-bit, 16-bit or float in [0, 1]")
    return None


def to_rgb(im):
    """im (an open PIL image) as an 8-bit RGB PIL image, or ImageError (see the module
    docstring). Loads the pixels."""
    from PIL import Image
    scale = _scale(im)
    if scale is None:
        return im.convert("RGB")
    values = np.asarray(im, dtype=np.float64) / scale
    if values.ndim != 2:  # PIL's high-depth modes are single-channel
        raise ImageError(f"{values.ndim}-dimensional pixels in PIL mode {im.mode}")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        bad = values[np.isfinite(values)]
        span = f"{bad.min():.4g} to {bad.max():.4g}" if bad.size else "no finite values"
        raise ImageError(f"float pixels (PIL mode {im.mode}) range over {span}"
                         f"{'' if np.isfinite(values).all() else ', with NaN or inf'}, not "
                         f"[0, 1]: their scale is unknown; save the image scaled to [0, 1] "
                         f"(or as 8-bit or 16-bit)")
    grey = np.rint(values * 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # 2-D uint8: mode L


def open_rgb(path):
    """The file at path as an 8-bit RGB PIL image (to_rgb)."""
    from PIL import Image
    with Image.open(path) as im:
        return to_rgb(im)


def check_file(path) -> str | None:
    """None when path's image can be read (as far as is cheap to tell without decoding it:
    see the module docstring), else why not, in one line."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if _scale(im) == 1.0:  # a float image: its pixels decide
                to_rgb(im)
                return None
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
