"""Image folders (the ImageNet-val layout: one subfolder of images per class), streamed.

    loader = pathens.imagefolder.loader("~/imagenet/val", model=model, limit=5000)
    pathens.lesion.delete_each(view, loader)          # batches are read as they are used
    pathens.path_gradients(view, loader)

The eval transform is the one the model was trained with: for a timm model its own pretrained
configuration (timm.data.resolve_data_config + create_transform: input size, crop, resize
interpolation, mean and std); otherwise the usual ImageNet evaluation (resize the short side to
size / crop_pct, centre-crop size x size, ImageNet mean and std, with size 224 and crop_pct
0.875 = 224 / 256). image_size, crop_pct and normalize override either. A DataLoader with
workers reads and decodes the images, so memory does not grow with the number of images.

A file that cannot be decoded is never skipped silently: every file is checked before the first
batch (images.check_file: a zero-byte or truncated file is found before any computation) and
the first bad one is named in one line, unless skip_bad=True, which leaves it out and counts it
(`loader.skipped`, `loader.description["skipped"]`); a file whose pixels fail to decode later
stops the pass the same way. Hidden files and folders (`.ipynb_checkpoints`) are ignored; a
class folder without images is refused (as torchvision's ImageFolder does). 16-bit and float
images are scaled to [0, 1] (images.py), never clipped.
limit keeps a seeded subset spread evenly over the classes (quick runs stay representative).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import images
from .datasets import NORMALIZATIONS
from .. import checks
from ..errors import PathensError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def eval_transform(model=None, *, image_size: Optional[int] = None,
                   crop_pct: Optional[float] = None, normalize: Optional[str] = None):
    """(transform PIL image -> (3, S, S) tensor, description dict) as described above."""
    cfg = _timm_config(model)
    size = image_size or (cfg["input_size"][-1] if cfg else 224)
    crop = crop_pct or (cfg.get("crop_pct") if cfg else None) or 0.875
    checks.number("crop_pct", crop, low=0, high=1, open_low=True, kind="a fraction",
                  example="0.875")
    _check_size(size, crop)
    if normalize is not None:
        if normalize not in NORMALIZATIONS:
            raise PathensError(f"unknown normalisation {normalize!r}: choose one of "
                               f"{', '.join(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[normalize]
        mean, std = (mean * 3, std * 3) if len(mean) == 1 else (mean, std)
        name = normalize
    elif cfg:
        mean, std, name = tuple(cfg["mean"]), tuple(cfg["std"]), "the model's (timm config)"
    else:
        (mean, std), name = NORMALIZATIONS["imagenet"], "imagenet"
    interpolation = (cfg or {}).get("interpolation", "bilinear")
    if cfg:  # timm's own evaluation transform, with the overrides
        from timm.data import create_transform
        transform = create_transform(**dict(cfg, input_size=(3, size, size), crop_pct=crop,
                                            mean=mean, std=std), is_training=False)
    else:
        from torchvision import transforms as T
        transform = T.Compose([T.Resize(int(math.floor(size / crop)),
                                        interpolation=T.InterpolationMode.BILINEAR),
                               T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    return transform, dict(image_size=size, crop_pct=crop, resize=int(math.floor(size / crop)),
                           interpolation=interpolation, normalize=name, mean=list(mean),
                           std=list(std), source="timm pretrained_cfg" if cfg else "ImageNet eval")


def _check_size(size: int, crop: float) -> None:
    """Refuse an image size whose resized images PIL would refuse (DecompressionBombError in
    the crop, a traceback at the first batch) and that no memory could hold in batches."""
    from PIL import Image
    most, resize = Image.MAX_IMAGE_PIXELS, int(math.floor(size / crop))
    if most and resize * resize > most:
        side = math.isqrt(most)  # the largest resize allowed; then the largest size giving it
        largest = math.ceil((side + 1) * crop) - 1
        while largest > 1 and math.floor(largest / crop) > side:
            largest -= 1
        raise PathensError(f"image size {size} (--image-size; crop_pct {crop}) resizes every "
                           f"image to at least {resize} x {resize} pixels, more than PIL's limit "
                           f"of {most:,} pixels per image ({3 * 4 * size * size / 2**30:.1f} GiB "
                           f"per image as floats): choose an image size of at most {largest}")


def _timm_config(model) -> Optional[dict]:
    if model is None or not isinstance(getattr(model, "pretrained_cfg", None), dict):
        return None
    from timm.data import resolve_data_config
    return resolve_data_config({}, model=model)


class ImageFolder(Dataset):
    """(image tensor, class index) for every image under root/<class>/..., classes sorted by
    name (torchvision's ImageFolder order). A file that cannot be decoded gives a `Bad` marker
    in its place (the loader turns it into an error naming it, or drops and counts it)."""

    def __init__(self, root, transform, *, limit: Optional[int] = None, seed: int = 0):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise PathensError(f"image folder {root} does not exist (or is not a folder)")
        # hidden folders (.ipynb_checkpoints, .git) are no classes: counted as one, the
        # first in sorted order, it would shift every class index by one
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not _hidden(d))
        if not self.classes:
            raise PathensError(f"image folder {root} has no class subfolders: it needs "
                               f"root/<class>/<image> (the ImageNet-val layout)")
        self.samples = [(p, c) for c, name in enumerate(self.classes)
                        for p in sorted((root / name).rglob("*"))
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                        and not any(_hidden(q) for q in p.relative_to(root).parts)]
        if not self.samples:
            raise PathensError(f"image folder {root} has class subfolders but no images "
                               f"({', '.join(IMAGE_SUFFIXES)})")
        empty = sorted(set(self.classes) - {self.classes[c] for _, c in self.samples})
        if empty:  # as torchvision's ImageFolder: a class without images is a mistake
            raise PathensError(f"image folder {root}: the class folder{'s' * (len(empty) > 1)} "
                               f"{', '.join(empty[:3])}{'...' if len(empty) > 3 else ''} "
                               f"hold{'s' * (len(empty) == 1)} no images ({len(self.classes)} "
                               f"class folders in all): remove {'them' if len(empty) > 1 else 'it'}"
                               f" or add its images; each subfolder is a class, in sorted order")
        if limit is not None:
            self.samples = stratified(self.samples, limit, seed)
        self.root, self.transform = root, transform

    def __len__(self) -> int:
        return len(self.samples)

    def files_fingerprint(self) -> str:
        """A short sha256 of every sample's path (relative to root), label, size and
        modification time (ns): a file replaced, added or removed changes it, so that a resumed
        sweep never mixes rows of other images (batches.Data.fingerprint adds it). The
        contents are not hashed (too slow for ImageNet-sized folders): a file rewritten with
        its old size and its old mtime restored goes unnoticed."""
        import hashlib
        h = hashlib.sha256()
        for path, label in self.samples:
            st = path.stat()
            h.update(f"{path.relative_to(self.root).as_posix()}\0{label}\0{st.st_size}\0"
                     f"{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            image = images.open_rgb(path)
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds on a bad file
            return Bad(str(path), f"{type(err).__name__}: {err}".splitlines()[0])
        return self.transform(image), label


def _hidden(path) -> bool:
    return Path(path).name.startswith(".")


class Bad:
    """A file that could not be decoded (picklable: it crosses from the worker processes)."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why

    def __repr__(self) -> str:  # what a fingerprint of the dataset sees
        return f"Bad({self.path!r})"


def _collate(items):
    """(images, labels, [Bad, ...]): the good items stacked, the bad ones passed on."""
    bad = [it for it in items if isinstance(it, Bad)]
    good = [it for it in items if not isinstance(it, Bad)]
    if not good:
        return torch.zeros(0, 3, 1, 1), torch.zeros(0, dtype=torch.long), bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


class ImageLoader:
    """Re-iterable (images (B, 3, S, S), labels (B,)) batches of an ImageFolder, decoded by a
    DataLoader's workers. Undecodable files stop the pass with one line naming the first, or,
    with skip_bad, are left out and collected in `skipped` (paths; a set, so passes repeat
    nothing). `dataset` and `description` (transform, folder, counts) are for results."""

    def __init__(self, dataset: ImageFolder, *, batch_size: int, workers: int,
                 skip_bad: bool, description: dict):
        self.dataset, self.skip_bad, self.description = dataset, skip_bad, description
        self.batch_size, self.skipped = batch_size, set()
        self._loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                  num_workers=workers, collate_fn=_collate)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        for x, y, bad in self._loader:
            if bad and not self.skip_bad:
                raise PathensError(f"{bad[0].path} cannot be decoded as an image ({bad[0].why}): "
                                   f"remove it, or skip such files and count them "
                                   f"(--skip-bad-images; skip_bad=True)")
            self.skipped.update(b.path for b in bad)
            if len(y):
                yield x, y


def stratified(samples: list, limit: int, seed: int) -> list:
    """`limit` samples spread over the classes as evenly as they allow, each class's own drawn
    with a generator seeded by (seed, class); in folder order."""
    limit = checks.limit(limit)
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    order = {c: np.random.default_rng([seed, c]).permutation(len(v)) for c, v in by_class.items()}
    take = dict.fromkeys(by_class, 0)
    left = min(limit, len(samples))
    while left:  # round-robin over classes that still have images
        for c in by_class:
            if left and take[c] < len(by_class[c]):
                take[c] += 1
                left -= 1
    keep = {id(by_class[c][j]) for c in by_class for j in order[c][:take[c]]}
    return [s for s in samples if id(s) in keep]


def loader(root, *, model=None, image_size: Optional[int] = None,
           crop_pct: Optional[float] = None, normalize: Optional[str] = None,
           limit: Optional[int] = None, seed: int = 0, skip_bad: bool = False,
           batch_size: int = 64, workers: Optional[int] = None) -> ImageLoader:
    """Batches of an image folder, streamed (see the module docstring). workers: decoding
    processes (default: one per CPU, at most 4; 0 decodes in this process)."""
    import os
    transform, info = eval_transform(model, image_size=image_size, crop_pct=crop_pct,
                                     normalize=normalize)
    data = ImageFolder(root, transform, limit=limit, seed=seed)
    bad = check_images(data, skip_bad)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    stream = ImageLoader(data, batch_size=batch_size, workers=workers, skip_bad=skip_bad,
                         description=dict(info, root=str(data.root), images=len(data),
                                          classes=len(data.classes), limit=limit, seed=seed,
                                          skip_bad=skip_bad, skipped=len(bad)))
    stream.skipped.update(str(p) for p in bad)
    return stream


def check_images(data: ImageFolder, skip_bad: bool) -> list:
    """Every file of data checked before any is used (images.check_file: the header, a PNG's
    chunks, a float image's range), so that a bad file stops a run before it computes, not in
    a late batch: refused in one line naming the first, or with skip_bad dropped from
    data.samples. Returns the paths dropped."""
    bad = images.check_files([p for p, _ in data.samples])
    if bad and not skip_bad:
        path, why = bad[0]
        more = f" (and {len(bad) - 1} other file{'s' * (len(bad) > 2)})" if len(bad) > 1 else ""
        raise PathensError(f"{path} cannot be decoded as an image ({why}){more}: remove it, or "
                           f"skip such files and count them (--skip-bad-images; skip_bad=True)")
    dropped = {p for p, _ in bad}
    data.samples = [s for s in data.samples if s[0] not in dropped]
    if not data.samples:
        raise PathensError(f"image folder {data.root}: none of its images can be decoded")
    return [p for p, _ in bad]
