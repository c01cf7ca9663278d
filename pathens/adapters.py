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
    """

    branch: Fn
    shortcut: Optional[Fn] = None
    post: Optional[Fn] = None
    scale: Union[torch.Tensor, float, None] = None
    residual: bool = True


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
    # pathens.models blocks expose the protocol directly (see models.py).
    return BlockParts(branch=block.branch, shortcut=block.shortcut, post=block.post,
                      scale=block.alpha, residual=getattr(block, "skip", True))


def _torchvision_basic(block) -> BlockParts:
    def branch(x):  # conv-bn-relu-conv-bn; torchvision's ReLU is in place, F.relu is not
        return block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    return BlockParts(branch=branch, shortcut=block.downsample, post=F.relu)


def _torchvision_bottleneck(block) -> BlockParts:
    def branch(x):  # 1x1 reduce, 3x3, 1x1 expand, each with BN
        h = F.relu(block.bn1(block.conv1(x)))
        h = F.relu(block.bn2(block.conv2(h)))
        return block.bn3(block.conv3(h))
    return BlockParts(branch=branch, shortcut=block.downsample, post=F.relu)


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
