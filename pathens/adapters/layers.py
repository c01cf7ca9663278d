"""The layer helpers adapters list a branch or a shortcut with: parts of a library's fused
layers (BatchNormOf: the BatchNorm of timm's BatchNormAct2d; an activation as a non-in-place
layer), layers that are the identity in eval mode (IdentityInEval), and a Chain of layers as
one shortcut. measure/transposes.py transposes exactly these in closed form; here they are
only described and run, so that adapters need nothing from the measurements.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


RELU_FUNCTIONS = (F.relu, torch.relu)


def exactly(layer, cls) -> bool:
    """layer is a cls whose forward is cls's own (not a subclass computing something else)."""
    return isinstance(layer, cls) and type(layer).forward is cls.forward


def is_relu(f) -> bool:
    return f in RELU_FUNCTIONS or exactly(f, nn.ReLU)


class BatchNormOf(nn.Module):
    """x -> the BatchNorm part of `bn`, a subclass of nn.BatchNorm2d whose forward adds more
    (timm's BatchNormAct2d: BN, then dropout and an activation, which the adapter lists after
    this as their own layers). Computes torch's BatchNorm2d forward with bn's statistics and
    affine, in bn's mode (batch statistics in training, running ones in eval). A module (bn its
    child), so that a shortcut nn.Sequential holding it owns bn's parameters."""

    def __init__(self, bn: nn.BatchNorm2d):
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"BatchNormOf needs an nn.BatchNorm2d (or subclass), got "
                            f"{type(bn).__name__}")
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.BatchNorm2d.forward(self.bn, x)


class IdentityInEval(nn.Module):
    """x -> module(x) for a module that is the identity in eval mode (timm's DropPath,
    DropBlock2d): transposed as the identity then, refused in training mode (random)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class Chain:
    """x -> the layers applied in order: a shortcut made of several layers (timm's
    pre-activation shortcut: the block's first norm and activation, then its projection),
    which transpose_chain expands as it does an nn.Sequential, and whose parameters
    linearize.branch_parameters leaves out as it does a shortcut module's."""

    def __init__(self, layers: Sequence[Callable]):
        self.layers = tuple(layers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for f in self.layers:
            x = f(x)
        return x


def activation(act: nn.Module) -> list:
    """An activation module as the layers a branch lists: [] for nn.Identity, [F.relu] for
    nn.ReLU (in place or not: F.relu never is), else [a copy of act that does not work in
    place] (a post and a listed branch must not overwrite their input)."""
    if type(act) is nn.Identity:
        return []
    if is_relu(act):
        return [F.relu]
    if getattr(act, "inplace", False):
        act = copy.copy(act)  # shallow: shares act's parameters (if any), own `inplace` flag
        act.inplace = False
    return [act]
