"""Labelled image arrays from files, with the normalisation their models were trained with."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import PathensError

# name -> (mean, std) per RGB channel, applied after scaling uint8 images to [0, 1].
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # akamaster CIFAR ResNets, torchvision
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def load_npz(path, *, normalize: str = "imagenet", limit: int | None = None):
    """(x, y) from an .npz holding `x` (N, H, W, C) uint8 images and `y` (N,) labels.

    Returns x float32 (N, C, H, W), scaled to [0, 1] and normalised with the named preset,
    and y int64 (N,). limit: keep the first `limit` examples.
    """
    path = Path(path)
    if not path.is_file():
        raise PathensError(f"data file {path} does not exist: pass an .npz with arrays x (N, H, W, C) "
                           f"uint8 and y (N,)")
    if normalize not in NORMALIZATIONS:
        raise PathensError(f"unknown normalisation {normalize!r}: choose one of "
                           f"{', '.join(NORMALIZATIONS)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except KeyError as err:
        raise PathensError(f"{path} lacks the array {err}: it needs x (N, H, W, C) uint8 and y (N,)") from None
    except Exception as err:  # noqa: BLE001 - np.load raises many kinds on a bad file
        raise PathensError(f"{path} is not a readable .npz file ({type(err).__name__})") from None
    if x.ndim != 4 or x.dtype != np.uint8 or y.shape != (len(x),):
        raise PathensError(f"{path}: expected x (N, H, W, C) uint8 and y (N,), got x {x.shape} "
                           f"{x.dtype} and y {y.shape}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALIZATIONS[normalize])
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    if images.shape[1] != mean.shape[1]:
        mean, std = mean.mean().view(1, 1, 1, 1), std.mean().view(1, 1, 1, 1)
    return ((images - mean) / std).contiguous(), torch.from_numpy(y.astype(np.int64))
