"""Locating the real CIFAR-10 images and pretrained checkpoints in ../shared/realdata.

They live outside the repository (repo_root/../shared/realdata, or $PATHENS_REALDATA); tests
that need them use @requires_realdata and skip cleanly when the folder is absent.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# tests/realdata.py -> tests -> repo root -> its parent, which holds shared/
REALDATA = Path(os.environ.get("PATHENS_REALDATA")
                or Path(__file__).resolve().parent.parent.parent / "shared" / "realdata")

HAVE_REALDATA = REALDATA.is_dir()

requires_realdata = pytest.mark.skipif(
    not HAVE_REALDATA,
    reason=f"real CIFAR-10 data / checkpoints not found at {REALDATA} (set PATHENS_REALDATA to the folder)")

# akamaster/pytorch_resnet_cifar10 normalisation (ImageNet statistics)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# reported full-test-set error (%) of the akamaster checkpoints
AKAMASTER_ERROR = {20: 8.27, 32: 7.37, 44: 6.90, 56: 6.61}


def akamaster_checkpoint(depth):
    """Path of akamaster_resnet{depth}-<hash>.th."""
    found = sorted(REALDATA.glob(f"akamaster_resnet{depth}-*.th"))
    if not found:
        pytest.skip(f"no akamaster ResNet-{depth} checkpoint in {REALDATA}")
    return found[0]


def load_cifar_npz(name):
    """(x, y): x float32 (N, 3, 32, 32), RGB in [0, 1] then normalised with MEAN/STD; y int64 (N,).
    name: e.g. "cifar10_test_first1000" (".npz" optional)."""
    path = REALDATA / (name if name.endswith(".npz") else name + ".npz")
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with np.load(path) as data:
        x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float() / 255.0  # NHWC uint8 -> NCHW
        y = torch.from_numpy(data["y"]).long()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(), y
