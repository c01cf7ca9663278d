"""Closed-form transposes of layer chains made of convolutions, eval-mode BatchNorm and ReLU.

autograd's VJP of a conv-BN-ReLU-conv-BN branch re-runs BatchNorm's backward and ReLU's
threshold backward for every cotangent the exact sweep sends through it. In eval mode BN is a
per-channel scale (plus a shift, which no Jacobian sees) and ReLU's Jacobian is a fixed 0/1
mask. Diagonal maps commute, so every channel scale folds into the weight of the nearest
convolution and the transpose of a BasicBlock's branch is three kernels:
conv_transpose2d -> mask -> conv_transpose2d (BENCHMARKS.md: the measured speed-up).

`transpose_chain(layers, x)` runs the chain forward once (recording the ReLU masks) and
returns its output with the transpose as a list of ops to apply in order; None when a layer
is not one of the kinds above (the caller then falls back to autograd).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .models import ZeroPadShortcut

RELU_FUNCTIONS = (F.relu, torch.relu)


def is_relu(f) -> bool:
    return f in RELU_FUNCTIONS or isinstance(f, nn.ReLU)


class ConvT:
    """u -> W^T u for a conv2d of input shape in_shape (bias dropped: no Jacobian sees it)."""

    def __init__(self, conv: nn.Conv2d, in_shape: torch.Size, out_shape: torch.Size):
        self.conv, self.weight = conv, conv.weight.detach()
        # conv_transpose2d needs output_padding to recover in_shape where the stride drops pixels
        k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        self.output_padding = tuple(
            in_shape[2 + j] - ((out_shape[2 + j] - 1) * s[j] - 2 * p[j] + d[j] * (k[j] - 1) + 1)
            for j in range(2))

    def scale_out(self, s: torch.Tensor) -> None:  # W <- diag(s) W: s over output channels
        self.weight = self.weight * s.reshape(-1, 1, 1, 1)

    def scale_in(self, s: torch.Tensor) -> bool:   # W <- W diag(s): s over input channels
        if self.conv.groups != 1:
            return False
        self.weight = self.weight * s.reshape(1, -1, 1, 1)
        return True

    def __call__(self, u: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        c = self.conv
        return F.conv_transpose2d(u, self.weight, None, c.stride, c.padding, self.output_padding,
                                  c.groups, c.dilation)


class Diagonal:
    """u -> d * u: a ReLU mask (0/1 in u's dtype, shaped like u: a float multiply measured 3x
    faster than a bool one) or a channel scale (1, C, 1, 1)."""

    def __init__(self, d: torch.Tensor, per_channel: bool):
        self.d, self.per_channel = d, per_channel

    def __call__(self, u: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return u.mul_(self.d) if inplace else u * self.d


class ZeroPadT:
    """Transpose of option A (every second pixel, zero-padded channels): scatter back."""

    def __init__(self, shortcut: ZeroPadShortcut, in_shape: torch.Size):
        self.front, self.in_planes, self.in_shape = shortcut.pad_front, shortcut.in_planes, in_shape

    def __call__(self, u: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        out = u.new_zeros(self.in_shape)
        out[:, :, ::2, ::2] = u[:, self.front:self.front + self.in_planes]
        return out


def relu_mask(out: torch.Tensor) -> torch.Tensor:
    """ReLU's Jacobian at a ReLU's output `out` (>= 0) as a 0/1 tensor in its dtype and memory
    layout: 1 where out > 0 (autograd's convention at 0). sign() makes it in one pass."""
    return torch.sign(out.detach())


def apply(ops: list, u: torch.Tensor) -> torch.Tensor:
    """The ops in order; after the first (which allocates), they work in place."""
    for j, op in enumerate(ops):
        u = op(u, inplace=j > 0)
    return u


def bn_scale(bn: nn.BatchNorm2d) -> Optional[torch.Tensor]:
    """Eval-mode BN's per-channel slope weight / sqrt(running_var + eps), or None when BN uses
    batch statistics (training mode or no running statistics: not a fixed linear map)."""
    if bn.training or bn.running_var is None:
        return None
    s = torch.rsqrt(bn.running_var + bn.eps)
    return s * bn.weight.detach() if bn.weight is not None else s


def transpose_chain(layers: Sequence[Callable], x: torch.Tensor, scale=None):
    """(chain(x) * scale, transpose ops in application order), or None if not foldable.

    layers: nn.Conv2d (zero padding), nn.BatchNorm2d in eval mode, ReLU (F.relu, torch.relu,
    nn.ReLU), nn.Identity, ZeroPadShortcut, or nn.Sequential of these. scale: None or a scalar
    multiplying the output (SkipInit's alpha). With grad enabled the output carries the
    graph (the transpose ops never do).
    """
    ops, h = [], x
    for layer in _flatten(layers):
        if isinstance(layer, nn.Identity):
            continue
        out = layer(h)
        if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros":
            ops.append(ConvT(layer, h.shape, out.shape))
        elif isinstance(layer, nn.BatchNorm2d) and (s := bn_scale(layer)) is not None:
            ops.append(Diagonal(s.reshape(1, -1, 1, 1), per_channel=True))
        elif is_relu(layer):
            ops.append(Diagonal(relu_mask(out), per_channel=False))
        elif isinstance(layer, ZeroPadShortcut):
            ops.append(ZeroPadT(layer, h.shape))
        else:
            return None
        h = out
    if scale is not None:
        s = scale.detach() if torch.is_tensor(scale) else torch.tensor(float(scale))
        s = s.to(device=h.device, dtype=h.dtype).reshape([1] * h.ndim)
        h = h * s
        ops.append(Diagonal(s, per_channel=True))
    return h, _fold(ops)[::-1]


def _flatten(layers):
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            yield from _flatten(layer)
        else:
            yield layer


def _fold(ops: list) -> list:
    """Fold every channel scale into the nearest convolution reachable across diagonal ops
    (diagonal maps commute): before it, into its output channels; after it, its input ones."""
    ops = list(ops)
    for i, op in enumerate(ops):
        if not (isinstance(op, Diagonal) and op.per_channel):
            continue
        j = _nearest_conv(ops, i, -1)
        if j is not None:
            ops[j].scale_out(op.d)
            ops[i] = None
            continue
        j = _nearest_conv(ops, i, +1)
        if j is not None and ops[j].scale_in(op.d):
            ops[i] = None
    return [op for op in ops if op is not None]


def _nearest_conv(ops: list, i: int, step: int) -> Optional[int]:
    j = i + step
    while 0 <= j < len(ops) and (ops[j] is None or isinstance(ops[j], Diagonal)):
        j += step
    return j if 0 <= j < len(ops) and isinstance(ops[j], ConvT) else None
