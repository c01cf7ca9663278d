"""Closed-form transposes of layer chains made of convolutions, eval-mode BatchNorm, ReLU and
average pooling.

autograd's VJP of a conv-BN-ReLU-conv-BN branch re-runs BatchNorm's backward and ReLU's
threshold backward for every cotangent the exact sweep sends through it. In eval mode BN is a
per-channel scale (plus a shift, which no Jacobian sees) and ReLU's Jacobian is a fixed 0/1
mask. Diagonal maps commute, so every channel scale folds into the weight of the nearest
convolution (grouped ones too) and the transpose of a BasicBlock's branch is three kernels:
conv_transpose2d -> mask -> conv_transpose2d (BENCHMARKS.md: the measured speed-up). Average
pooling (timm's resnet*d shortcuts, anti-aliasing) is linear: its transpose is its own
backward kernel; layers that are the identity in eval mode (dropout, DropPath, DropBlock)
drop out.

`transpose_chain(layers, x)` runs the chain forward once (recording the ReLU masks) and
returns its output with the transpose as a list of ops to apply in order; None when a layer
is not one of the kinds above (the caller then falls back to autograd). `why_not(layer)` says
why a layer is not, without running anything.

A layer counts only when its class computes exactly what the torch class does: a subclass
that overrides forward (timm's StdConv2d standardises its weight; its BatchNormAct2d adds an
activation) is refused, since the closed form would transpose the wrong map. Adapters split
such layers into parts (BatchNormOf, the activation) when the parts are known.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.layers import BatchNormOf, Chain, IdentityInEval, exactly, is_relu
from ..models.cifar import ZeroPadShortcut


def _name(layer) -> str:
    return type(layer).__name__ if isinstance(layer, nn.Module) else getattr(
        layer, "__name__", type(layer).__name__)


def _padding(conv: nn.Conv2d) -> Optional[tuple]:
    """The conv's symmetric zero padding per spatial dim; None for 'same' padding that is
    asymmetric (even effective kernel: torch pads one more pixel on one side)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return tuple(conv.padding)


def why_not(layer) -> Optional[str]:
    """Why `layer` has no closed-form transpose here, or None when it has one. Read from the
    layer and its mode only (nothing runs): e.g. "SEModule" (an input-dependent gate),
    "BatchNorm2d on batch statistics" (training mode)."""
    if exactly(layer, nn.Identity) or exactly(layer, ZeroPadShortcut) or is_relu(layer):
        return None
    if isinstance(layer, IdentityInEval):
        return f"{_name(layer.module)} in training mode" if layer.module.training else None
    if any(exactly(layer, cls) for cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d)):
        return f"{_name(layer)} in training mode" if layer.training else None
    if exactly(layer, nn.Conv2d) and type(layer)._conv_forward is nn.Conv2d._conv_forward:
        if layer.padding_mode != "zeros":
            return f"Conv2d with {layer.padding_mode} padding"
        return None if _padding(layer) is not None else "Conv2d with asymmetric 'same' padding"
    if exactly(layer, nn.BatchNorm2d) or isinstance(layer, BatchNormOf):
        bn = layer.bn if isinstance(layer, BatchNormOf) else layer
        return None if bn_scale(bn) is not None else f"{_name(bn)} on batch statistics"
    if exactly(layer, nn.AvgPool2d):
        return None
    return _name(layer)


class ConvT:
    """u -> W^T u for a conv2d of input shape in_shape (bias dropped: no Jacobian sees it).
    W: (out, in / groups, kh, kw), as the conv holds it."""

    def __init__(self, conv: nn.Conv2d, in_shape: torch.Size, out_shape: torch.Size):
        self.conv, self.weight = conv, conv.weight.detach()
        self.padding = _padding(conv)
        # conv_transpose2d needs output_padding to recover in_shape where the stride drops pixels
        k, s, p, d = conv.kernel_size, conv.stride, self.padding, conv.dilation
        self.output_padding = tuple(
            in_shape[2 + j] - ((out_shape[2 + j] - 1) * s[j] - 2 * p[j] + d[j] * (k[j] - 1) + 1)
            for j in range(2))

    def scale_out(self, s: torch.Tensor) -> None:  # W <- diag(s) W: s over output channels
        self.weight = self.weight * s.reshape(-1, 1, 1, 1)

    def scale_in(self, s: torch.Tensor) -> bool:   # W <- W diag(s): s over input channels
        # Output channel o (group g = o // (out/groups)) reads input channels
        # g * in_g .. (g+1) * in_g - 1 through W[o, 0..in_g-1], in_g = in / groups; so s,
        # (in,), becomes (groups, 1, in_g) broadcast over each group's out/groups rows.
        groups, (out, in_g) = self.conv.groups, self.weight.shape[:2]
        if s.numel() == 1:
            self.weight = self.weight * s.reshape(1, 1, 1, 1)
            return True
        s = s.reshape(groups, 1, in_g).expand(groups, out // groups, in_g)
        self.weight = self.weight * s.reshape(out, in_g, 1, 1)
        return True

    def __call__(self, u: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        c = self.conv
        return F.conv_transpose2d(u, self.weight, None, c.stride, self.padding,
                                  self.output_padding, c.groups, c.dilation)


class AvgPoolT:
    """u -> A^T u for nn.AvgPool2d A on inputs of in_shape (N, C, H, W): its backward kernel,
    which handles every padding / ceil_mode / count_include_pad / divisor_override case the
    forward does (partial windows at a ceil_mode edge divide by their own size)."""

    def __init__(self, pool: nn.AvgPool2d, in_shape: torch.Size):
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
        k = pair(pool.kernel_size)
        self.args = (k, pair(pool.stride) if pool.stride else k, pair(pool.padding),
                     pool.ceil_mode, pool.count_include_pad, pool.divisor_override)
        self.in_shape = tuple(in_shape[1:])

    def __call__(self, u: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        # The kernel reads only the input's shape and memory layout: an uninitialised tensor
        # in u's layout (never written, so no pages are touched), per call (nothing held).
        fmt = (torch.channels_last if u.is_contiguous(memory_format=torch.channels_last)
               and not u.is_contiguous() else torch.contiguous_format)
        like = torch.empty((u.shape[0], *self.in_shape), dtype=u.dtype, device=u.device,
                           memory_format=fmt)
        return torch.ops.aten.avg_pool2d_backward(u, like, *self.args)


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


def chain_reason(layers: Sequence[Callable]) -> Optional[str]:
    """Why the chain has no closed-form transpose (its first such layer), or None."""
    return next((r for r in map(why_not, flatten(layers)) if r is not None), None)


def transpose_chain(layers: Sequence[Callable], x: torch.Tensor, scale=None):
    """(chain(x) * scale, transpose ops in application order), or None if not foldable.

    layers: nn.Conv2d (zero padding, grouped or not), nn.BatchNorm2d in eval mode (or
    BatchNormOf), ReLU (F.relu, torch.relu, nn.ReLU), nn.AvgPool2d, nn.Identity, dropout or
    IdentityInEval in eval mode, ZeroPadShortcut, or nn.Sequential / Chain of these. scale:
    None or a tensor multiplying the output as the block does (broadcast): a scalar
    (SkipInit's alpha) or per channel, (C, 1, 1) (LayerScale), folds into a convolution. With
    grad enabled the output carries the graph (the transpose ops never do).
    """
    layers = list(flatten(layers))
    if chain_reason(layers) is not None:
        return None
    ops, h = [], x
    for layer in layers:
        if exactly(layer, nn.Identity):
            continue
        out = layer(h)
        if isinstance(layer, nn.Conv2d):
            ops.append(ConvT(layer, h.shape, out.shape))
        elif isinstance(layer, (nn.BatchNorm2d, BatchNormOf)):
            s = bn_scale(layer.bn if isinstance(layer, BatchNormOf) else layer)
            ops.append(Diagonal(s.reshape(1, -1, 1, 1), per_channel=True))
        elif is_relu(layer):
            ops.append(Diagonal(relu_mask(out), per_channel=False))
        elif isinstance(layer, nn.AvgPool2d):
            ops.append(AvgPoolT(layer, h.shape))
        elif isinstance(layer, ZeroPadShortcut):
            ops.append(ZeroPadT(layer, h.shape))
        # else: the identity in eval mode (dropout, IdentityInEval): no op
        h = out
    if scale is not None:
        s = scale.detach() if torch.is_tensor(scale) else torch.tensor(float(scale))
        s = s.to(device=h.device, dtype=h.dtype)
        h = h * s  # broadcast as the block's own `scale * branch` does
        ops.append(Diagonal(s, per_channel=_per_channel(s, h)))
    return h, _fold(ops)[::-1]


def _per_channel(s: torch.Tensor, h: torch.Tensor) -> bool:
    """s scales h (N, C, H, W) by channel: a scalar, or (C, 1, 1) / (1, C, 1, 1) (LayerScale);
    then it folds into a convolution. Any other shape stays an elementwise multiply."""
    if s.numel() == 1:
        return True
    shape = (1,) * (h.ndim - s.ndim) + tuple(s.shape)
    return h.ndim == 4 and shape == (1, h.shape[1], 1, 1)


def flatten(layers):
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            yield from flatten(layer)
        elif isinstance(layer, Chain):
            yield from flatten(layer.layers)
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
