"""Context managers that put a model in a known state and give it back as it was."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for the duration (BatchNorm uses its running statistics and never updates
    them; dropout is off); each submodule's own train/eval flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training
