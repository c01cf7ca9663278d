"""Gradient profiles that are zero where a network's initialisation makes them so, said aloud.

Two initialisations leave path_gradients nothing to split, and each looks like a result:
- a zero head (torchvision's vit_b_16 as built: its classifier's weight is zero-initialised):
  the loss gradient at the head's input is exactly zero, so every length carries 0;
- zero-initialised branch ends (timm's ResNets with zero_init_last=True: every branch's last
  BatchNorm weight is 0; SkipInit or ReZero scales at 0): every branch passes exactly zero
  gradient back, so the whole gradient sits at length 0 (the shortcuts alone).

`diagnose` tells them apart from the sums the sweeps already make (the squared gradient at the
head's input, the totals by length), `note` records the reason in the result's config
("zero_gradient") and warns once (rank 0), and effective_depth reads it back.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import distributed

HEAD = ("the loss gradient at the head's input is exactly zero (a zero head: e.g. torchvision's "
        "vit_b_16 as built, whose classifier is zero-initialised; load trained weights), so "
        "every path length carries 0")
STREAM = ("the loss gradient reaching the first block is exactly zero although the head passes "
          "some back (the blocks pass none: e.g. every ReLU after an addition inactive), so "
          "every path length carries 0")
BRANCHES = ("every branch passes exactly zero gradient back (zero-initialised branch ends: e.g. "
            "timm's zero_init_last=True, each branch's last BatchNorm weight 0, or SkipInit / "
            "ReZero scales at 0), so all of it flows along the length-0 path (the shortcuts "
            "alone) until the branches are trained")


def diagnose(total, head_sq: float, lengths=None, exact_lengths: bool = True) -> str | None:
    """Why a profile is degenerate, or None when it is not.

    total: gradient magnitude by length (lengths: those measured, default 0..n); head_sq: the
    squared norm of the gradient at the head's input, summed over every batch (and rank);
    exact_lengths: False where lengths may have been dropped on purpose (tol > 0), so that
    zeros beyond length 0 prove nothing.
    """
    total = np.asarray(total, float)
    lengths = np.arange(total.size) if lengths is None else np.asarray(lengths)
    if not np.isfinite(total).all() or total.size == 0:
        return None
    if not total.any() and head_sq == 0:
        return HEAD
    if lengths[0] != 0 or total.size < 2:  # length 0 unmeasured: nothing to compare with
        return None
    if not total.any():
        return STREAM
    if exact_lengths and not total[1:].any():
        return BRANCHES
    return None


def note(result, head_sq: float, exact_lengths: bool = True, stacklevel: int = 3):
    """Record a degenerate profile's reason in result.config["zero_gradient"] (every rank) and
    warn once (rank 0). Returns the result."""
    reason = diagnose(result.total, head_sq, result.lengths, exact_lengths)
    if reason is not None:
        result.config["zero_gradient"] = reason
        if distributed.is_writer():
            warnings.warn(f"path_gradients: {reason}", RuntimeWarning, stacklevel=stacklevel)
    return result
