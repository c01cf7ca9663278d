"""torchvision's inverted-residual networks: MobileNetV2 (models/mobilenetv2.py), MobileNetV3
(mobilenetv3.py: mobilenet_v3_small / _large) and EfficientNet (efficientnet.py: efficientnet_b0
.. b7 with MBConv, efficientnet_v2_s / m / l with FusedMBConv too), as stem -> residual blocks
-> head.

Their blocks add their input to their output only where `use_res_connect`: stride 1 and the
same width. A block without it (the first of most stages: it changes the stride or the width)
is not residual. The model adapters list the blocks with the connection as the view's residual
blocks and fold the others (transitions.py) into the next residual block's shortcut and branch
(into the stem when they come first, the head when they come last, with the last 1x1 conv),
saying how many with a FoldedLayers warning; wrapped on their own (torch.fx, outside these
models), blocks without it are plain layers (residual=False, wrap(..., allow_plain=True)).

Blocks, each x + branch(x) where use_res_connect (no activation after the add):
- mobilenetv2.InvertedResidual: `conv`, an nn.Sequential (1x1 expand, depthwise 3x3, each
  conv-BN-ReLU6, then 1x1 project, BN: a linear bottleneck);
- mobilenetv3.InvertedResidual: `block` (expand, depthwise, SqueezeExcitation, project; ReLU
  or hard-swish);
- efficientnet.MBConv and FusedMBConv: stochastic_depth(block(x)) (StochasticDepth "row",
  the identity in eval mode), block with SiLU and SqueezeExcitation.
The branch lists its layers; ReLU6, hard-swish, SiLU and the SE gates make the sweep transpose
these blocks by autograd, and say so.
"""
from __future__ import annotations

import torch
from torchvision.models import efficientnet as tv_eff
from torchvision.models import mobilenetv2 as tv_v2
from torchvision.models import mobilenetv3 as tv_v3

from . import transitions
from .layers import IdentityInEval
from . import BlockParts, ModelParts, chain, register_block, register_model
from .torchvision_convnext import units


@register_block(tv_v2.InvertedResidual, builtin=True)
def inverted_residual_v2(b) -> BlockParts:
    return BlockParts(branch=b.conv, layers=(b.conv,), residual=b.use_res_connect)


@register_block(tv_v3.InvertedResidual, builtin=True)
def inverted_residual_v3(b) -> BlockParts:
    return BlockParts(branch=b.block, layers=(b.block,), residual=b.use_res_connect)


def _mbconv(b) -> BlockParts:
    if not b.use_res_connect:  # no stochastic depth either: block(x)
        return BlockParts(branch=b.block, layers=(b.block,), residual=False)
    layers = (b.block, IdentityInEval(b.stochastic_depth))
    return BlockParts(branch=chain(layers), layers=layers)


register_block(tv_eff.MBConv, _mbconv, builtin=True)
register_block(tv_eff.FusedMBConv, _mbconv, builtin=True)

_BLOCKS = (tv_v2.InvertedResidual, tv_v3.InvertedResidual, tv_eff.MBConv, tv_eff.FusedMBConv)


def _split(model):
    cls = type(model).__name__
    found = transitions.split_chain(units(model.features, _BLOCKS),
                                    lambda m: bool(getattr(m, "use_res_connect", False)), cls)
    transitions.note(cls, found, _BLOCKS, "stride 1 and the same width")
    return found


@register_model(tv_v2.MobileNetV2, builtin=True)
def mobilenet_v2(model) -> ModelParts:
    found = _split(model)

    def head(h):  # as MobileNetV2._forward_impl: pool with the functional, flatten, classifier
        h = torch.nn.functional.adaptive_avg_pool2d(found.run_tail(h), (1, 1))
        return model.classifier(torch.flatten(h, 1))

    return ModelParts(blocks=found.blocks, transitions=found.transitions, head=head)


def _pooled(model):
    """MobileNetV3 and EfficientNet: ModelParts with the head avgpool -> flatten -> classifier."""
    found = _split(model)
    return ModelParts(blocks=found.blocks, transitions=found.transitions,
                      head=lambda h: model.classifier(torch.flatten(
                          model.avgpool(found.run_tail(h)), 1)))


register_model(tv_v3.MobileNetV3, _pooled, builtin=True)
register_model(tv_eff.EfficientNet, _pooled, builtin=True)
