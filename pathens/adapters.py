"""Adapters: how pathens sees a residual block as `post(shortcut(x) + scale * branch(x))`.

Every block family the view can wrap is registered here with a function that, given a block
module, returns its `BlockParts`. pathens's own models and torchvision's ResNet blocks are
registered below; a user registers their own class with `register_block`:

    import torch.nn.functional as F
    import pathens

    @pathens.register_block(MyBlock)
    def my_block_parts(block):
        return pathens.BlockParts(
            branch=lambda x: block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x))))),
            shortcut=block.downsample,        # None means the identity
            post=F.relu,                       # None means the identity (pre-activation)
            scale=None,                        # or a scalar tensor, e.g. SkipInit's alpha
            layers=(block.conv1, block.bn1, F.relu, block.conv2, block.bn2),  # optional
        )

`pathens.wrap` then proves on a probe input that the parts recompose each block's own
forward, so a wrong adapter is caught with the block's name rather than giving wrong science.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BlockParts:
    """One residual block as `post(shortcut(x) + scale * branch(x))`.

    branch:   the residual branch (x -> same shape as the shortcut's output), WITHOUT scale.
    shortcut: the skip connection; None is the identity (a block whose shortcut is not the
              identity, e.g. a zero-pad or 1x1 projection, is a *downsampling* block).
    post:     what follows the sum; F.relu for original ResNets, None (identity) for
              pre-activation ResNets. Must not work in place.
    scale:    multiplies the branch: None for 1, else a scalar (SkipInit's alpha).
    residual: False for a block with no shortcut at all (a plain, VGG-like layer).
    layers:   optional, the branch as the chain of layers it applies in order (nn.Conv2d,
              nn.BatchNorm2d, ReLU, nn.Identity): then the path-gradient sweeps transpose it
              in closed form (BN folded into the convolutions), ~1.5x faster than autograd.
              `wrap` checks that the chain computes `branch`.
    """

    branch: Fn
    shortcut: Optional[Fn] = None
    post: Optional[Fn] = None
    scale: Union[torch.Tensor, float, None] = None
    residual: bool = True
    layers: Optional[tuple] = None


Adapter = Callable[[nn.Module], BlockParts]
_ADAPTERS: dict[type, Adapter] = {}


def register_block(cls: type, adapter: Optional[Adapter] = None):
    """Teach pathens a residual block class: `adapter(block) -> BlockParts`.

    Usable directly, `register_block(MyBlock, fn)`, or as a decorator, `@register_block(MyBlock)`.
    Subclasses of a registered class use its adapter unless registered themselves.
    """
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"register_block needs an nn.Module subclass, got {cls!r}")

    def decorate(fn: Adapter) -> Adapter:
        _ADAPTERS[cls] = fn
        return fn

    return decorate if adapter is None else decorate(adapter)


def find_adapter(module: nn.Module) -> Optional[Adapter]:
    """The adapter for this module's class (nearest registered class in its MRO), or None."""
    _register_builtin()
    for cls in type(module).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    return None


def registered_classes() -> list[str]:
    _register_builtin()
    return sorted(f"{c.__module__}.{c.__qualname__}" for c in _ADAPTERS)


# ---- built-in families ---------------------------------------------------------------------

def _pathens_parts(block) -> BlockParts:
    # pathens.models blocks (see models.py): post-activation relu(s + alpha * branch), or
    # pre-activation s + alpha * branch; `layers` spells out their branch() methods.
    from . import models
    if type(block) is models.PreActBlock:
        layers, post = (block.bn1, F.relu, block.conv1, block.bn2, F.relu, block.conv2), None
    elif type(block) is models.BasicBlock:
        layers, post = (block.conv1, block.bn1, F.relu, block.conv2, block.bn2), F.relu
    else:  # a user's subclass of the protocol: its own methods, transposed by autograd
        layers, post = None, block.post
    return BlockParts(branch=block.branch, shortcut=block.shortcut, post=post,
                      scale=block.alpha, residual=getattr(block, "skip", True), layers=layers)


def chain(layers):
    """The function that applies `layers` in order."""
    def branch(x):
        for f in layers:
            x = f(x)
        return x
    return branch


def _torchvision_basic(block) -> BlockParts:
    # conv-bn-relu-conv-bn; torchvision's ReLU is in place, F.relu is not
    layers = (block.conv1, block.bn1, F.relu, block.conv2, block.bn2)
    return BlockParts(branch=chain(layers), shortcut=block.downsample, post=F.relu,
                      layers=layers)


def _torchvision_bottleneck(block) -> BlockParts:
    # 1x1 reduce, 3x3, 1x1 expand, each with BN
    layers = (block.conv1, block.bn1, F.relu, block.conv2, block.bn2, F.relu, block.conv3,
              block.bn3)
    return BlockParts(branch=chain(layers), shortcut=block.downsample, post=F.relu,
                      layers=layers)


_builtin_done = False


def _register_builtin() -> None:
    # Lazily, so that importing pathens does not import torchvision and models stays a leaf.
    global _builtin_done
    if _builtin_done:
        return
    _builtin_done = True
    from . import models
    _ADAPTERS.setdefault(models.ResidualBlock, _pathens_parts)
    try:
        from torchvision.models import resnet as tv
    except Exception:  # torchvision is optional
        return
    _ADAPTERS.setdefault(tv.BasicBlock, _torchvision_basic)
    _ADAPTERS.setdefault(tv.Bottleneck, _torchvision_bottleneck)
