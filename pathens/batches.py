"""Checking a labelled batch against a view, and cutting it into chunks."""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from .errors import PathensError
from .inputs import batch_len, check_finite, is_tokens, main_tensor, tensors, to_model
from .losses import get_loss


def check_batch(view, inputs, targets, loss=None) -> tuple:
    """(inputs, targets) moved to the view's device (floating inputs in its dtype) and checked
    against the view and the loss (None: the view's own), or a one-line PathensError.

    inputs: (N, *view.input_shape) up to the spatial size (images), (N, T) token ids, or a dict
    of such tensors; targets: what the loss needs ((N,) class indices; token ids).
    """
    if not (torch.is_tensor(inputs) or (isinstance(inputs, dict) and inputs and
                                        all(torch.is_tensor(v) for v in inputs.values()))):
        raise PathensError(f"inputs must be a tensor (or a dict of tensors), got "
                           f"{type(inputs).__name__}")
    x = main_tensor(inputs)
    expected = view.input_shape
    if x.ndim != len(expected) + 1 or (len(expected) > 1 and x.shape[1] != expected[0]):
        raise PathensError(
            f"inputs of shape {tuple(x.shape)} do not fit the model: expected "
            f"(N, {', '.join(map(str, expected))}) like the probe it was wrapped with")
    n = batch_len(inputs)
    if n == 0:
        raise PathensError("inputs are empty: pass at least one example")
    if any(len(t) != n for t in tensors(inputs)):
        raise PathensError("the tensors of the inputs hold different numbers of examples")
    if is_tokens(inputs):
        _check_tokens(view, x)
    inputs = to_model(inputs, view.param)
    check_finite(inputs)
    targets = get_loss(loss, view.loss).check(targets, inputs, view.num_outputs)
    return inputs, targets.to(device=view.param.device) if torch.is_tensor(targets) else targets


def _check_tokens(view, ids: torch.Tensor) -> None:
    vocab = view.vocab_size or (view.num_outputs if view.loss == "next_token" else None)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or (vocab and hi >= vocab):
        raise PathensError(f"token ids range over {lo}..{hi} but the model's vocabulary has "
                           f"{vocab} tokens (0..{vocab - 1}): tokenise with the model's own "
                           f"tokenizer")
    if view.max_length and ids.shape[1] > view.max_length:
        raise PathensError(f"sequences of {ids.shape[1]} tokens are longer than the model's "
                           f"context of {view.max_length}: cut them (e.g. --seq-len)")


def chunks(n: int, size: Optional[int]) -> Iterator[slice]:
    """Consecutive slices of range(n), each at most `size` long (None: one slice)."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise PathensError(f"batch_size must be a positive integer, got {size!r}")
    step = n if size is None else size
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))
