"""The weights a zoo or user model is built with: read from a file (torch.save, read with
weights_only=True, or safetensors: pathens.checkpoints.load_state_dict), given as a state
dict, or none (random initialisation); and loaded strictly, with what results record about
them (the file, its sha256)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from ..models import checkpoints
from ..errors import CheckpointError
from .record import file_sha256


def read(weights) -> tuple[Optional[dict], dict]:
    """(state dict or None, info). weights: a path (str / PathLike) to a .pth / .pt / .th /
    .safetensors file, a state dict (a mapping name -> tensor), or None. info: weights (the
    file's absolute path, or None), weights_sha256 (of the file), weights_from ("file",
    "state dict" or "random init") and random_init."""
    if weights is None:
        return None, dict(weights=None, weights_sha256=None, weights_from="random init",
                          random_init=True)
    if isinstance(weights, (str, os.PathLike)):
        path = Path(os.fspath(weights))
        state = checkpoints.load_state_dict(path)  # every failure a one-line CheckpointError
        return state, dict(weights=str(path.absolute()), weights_sha256=file_sha256(path),
                           weights_from="file", random_init=False)
    if isinstance(weights, Mapping):
        return checkpoints._clean(weights, "the state dict"), dict(
            weights=None, weights_sha256=None, weights_from="state dict", random_init=False)
    raise CheckpointError(f"weights must be a checkpoint path or a state dict, got "
                          f"{checkpoints._kind(weights)}")


def load(model, state: dict, *, what: str, hint: str):
    """Load state into model strictly (checkpoints.load_weights: every key, every shape), the
    error saying which model (`what`, e.g. 'timm:resnet50') it did not fit and `hint`."""
    try:
        return checkpoints.load_weights(model, state, hint=hint)
    except CheckpointError as err:
        raise CheckpointError(f"{what}: {err}") from None
