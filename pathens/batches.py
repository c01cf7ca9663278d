"""Checking a labelled batch against a view, and cutting it into chunks."""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from .errors import PathensError


def check_batch(view, inputs, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) moved to the view's device and dtype, or a one-line PathensError.

    inputs: (N, *view.input_shape) up to the spatial size; targets: (N,) integer class indices.
    """
    p = view.param
    if not torch.is_tensor(inputs):
        raise PathensError(f"inputs must be a tensor, got {type(inputs).__name__}")
    if not torch.is_tensor(targets):
        targets = torch.as_tensor(targets)
    expected = view.input_shape
    if inputs.ndim != len(expected) + 1 or (len(expected) > 1 and inputs.shape[1] != expected[0]):
        raise PathensError(
            f"inputs of shape {tuple(inputs.shape)} do not fit the model: expected "
            f"(N, {', '.join(map(str, expected))}) like the probe it was wrapped with")
    n = inputs.shape[0]
    if n == 0:
        raise PathensError("inputs are empty: pass at least one example")
    if targets.shape != (n,):
        raise PathensError(f"targets must have shape ({n},) to match the inputs, "
                           f"got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise PathensError(f"targets must be integer class indices, got dtype {targets.dtype}")
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= view.num_classes:
        raise PathensError(f"targets range over {lo}..{hi} but the model has {view.num_classes} "
                           f"classes (0..{view.num_classes - 1})")
    inputs = inputs.to(device=p.device, dtype=p.dtype)
    if not torch.isfinite(inputs).all():
        raise PathensError("inputs contain NaN or infinite values")
    return inputs, targets.to(device=p.device, dtype=torch.long)


def chunks(n: int, size: Optional[int]) -> Iterator[slice]:
    """Consecutive slices of range(n), each at most `size` long (None: one slice)."""
    if size is not None and size < 1:
        raise PathensError(f"batch_size must be a positive integer, got {size}")
    step = n if size is None else size
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))
