"""timm's inverted-residual networks: EfficientNet (models/efficientnet.py, which also builds
mobilenetv2_*, mnasnet_*, fbnet*, spnasnet, tinynet, efficientnetv2_* / tf_efficientnetv2_*,
mixnet and lcnet) and MobileNetV3 (models/mobilenetv3.py: mobilenetv3_*, tf_mobilenetv3_*,
mobilenetv4_*), as stem -> residual blocks -> head.

Their blocks (models/_efficientnet_blocks.py) add their input to their output only where
`has_skip`: stride 1, the same width, and not built with noskip. A block without the skip (the
first of most stages: it changes the stride or the width) is not residual. The model adapters
list the blocks with the skip as the view's residual blocks and fold the others
(transitions.py) into the next residual block's shortcut and branch (or into the stem when
they come first, the head when they come last), saying how many with a FoldedLayers warning;
wrapped on their own (torch.fx, outside these models), blocks without the skip are plain
layers (residual=False, wrap(..., allow_plain=True)).

Blocks, each `x + drop_path(branch(x))` where has_skip (no activation after the add):
- DepthwiseSeparableConv: [space-to-depth conv, BN] -> depthwise conv -> BN(+act) -> aa ->
  se -> pointwise conv -> BN(+act where pw_act);
- InvertedResidual: [s2d] -> 1x1 expand -> BN+act -> depthwise -> BN+act -> aa -> se ->
  1x1 project -> BN (a linear bottleneck);
- EdgeResidual (EfficientNetV2's fused MBConv): 3x3 expand -> BN+act -> aa -> se -> 1x1
  project -> BN;
- ConvBnAct (with skip=True): conv -> BN+act -> aa;
- UniversalInvertedResidual (MobileNetV4): optional depthwise convs around a 1x1 expand and
  project; its LayerScale2d gamma, where present, is the branch's `scale`;
- CondConvResidual (efficientnet_cc_*): an InvertedResidual whose kernels are mixed per
  example by a routing function of the block's input.
A residual block of another kind (MobileAttention) has no adapter: wrap says so.
BatchNormAct2d is split into its BN and its activation and the branch lists its layers: blocks
made of convolutions, BN and ReLU (mnasnet, mobilenetv2 with ReLU, not ReLU6) are transposed in
closed form; SiLU, ReLU6, hard-swish and squeeze-excitation make the sweep use autograd, and
say so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerScale2d
from timm.models import _efficientnet_blocks as eb
from timm.models import efficientnet as ef
from timm.models import mobilenetv3 as mv3
from torch import nn

from . import transitions
from . import BlockParts, ModelParts, chain, register_block, register_model
from .timm_regnet import conv_norm_act
from .timm_resnet import _eval_identity, _norm


def _mods(*modules) -> list:
    """Modules that may be None or nn.Identity, as listed layers."""
    return [m for m in modules if m is not None and type(m) is not nn.Identity]


def _s2d(b) -> list:
    conv = getattr(b, "conv_s2d", None)
    return [] if conv is None else [conv, *_norm(b.bn_s2d)]


def _parts(b, layers: list, scale=None) -> BlockParts:
    """The block as BlockParts: residual where has_skip (then drop_path is in the branch)."""
    if b.has_skip:
        layers = layers + _eval_identity(b.drop_path)
    layers = tuple(f for f in layers if type(f) is not nn.Identity)
    return BlockParts(branch=chain(layers), layers=layers, scale=scale, residual=b.has_skip)


@register_block(eb.DepthwiseSeparableConv, builtin=True)
def depthwise_separable(b) -> BlockParts:
    return _parts(b, [*_s2d(b), b.conv_dw, *_norm(b.bn1), *_mods(b.aa, b.se), b.conv_pw,
                      *_norm(b.bn2)])


@register_block(eb.InvertedResidual, builtin=True)
def inverted_residual(b) -> BlockParts:
    return _parts(b, [*_s2d(b), b.conv_pw, *_norm(b.bn1), b.conv_dw, *_norm(b.bn2),
                      *_mods(b.aa, b.se), b.conv_pwl, *_norm(b.bn3)])


@register_block(eb.EdgeResidual, builtin=True)
def edge_residual(b) -> BlockParts:
    return _parts(b, [b.conv_exp, *_norm(b.bn1), *_mods(b.aa, b.se), b.conv_pwl,
                      *_norm(b.bn2)])


@register_block(eb.ConvBnAct, builtin=True)
def conv_bn_act(b) -> BlockParts:
    return _parts(b, [b.conv, *_norm(b.bn1), *_mods(b.aa)])


def universal_inverted_residual(b) -> BlockParts:
    layers = [f for m in (b.dw_start, b.pw_exp, b.dw_mid) for f in conv_norm_act(m)]
    layers += [*_mods(b.se), *conv_norm_act(b.pw_proj), *conv_norm_act(b.dw_end)]
    ls = b.layer_scale
    if isinstance(ls, LayerScale2d):
        return _parts(b, layers, scale=ls.gamma.reshape(-1, 1, 1))
    return _parts(b, layers + _mods(ls))


# MobileNetV4's blocks (timm >= 1.0); an older timm lacks them
_UIR = getattr(eb, "UniversalInvertedResidual", None)
if _UIR is not None:
    register_block(_UIR, universal_inverted_residual, builtin=True)


_BLOCKS = tuple(c for c in (eb.DepthwiseSeparableConv, eb.InvertedResidual, eb.EdgeResidual,
                            eb.ConvBnAct, _UIR, getattr(eb, "MobileAttention", None)) if c)


@register_block(eb.CondConvResidual, builtin=True)
def cond_conv_residual(b) -> BlockParts:
    # the kernels are mixed per example by a routing function of the block's input
    def branch(x):
        routing = torch.sigmoid(b.routing_fn(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        y = b.bn2(b.conv_dw(b.bn1(b.conv_pw(x, routing)), routing))
        return b.drop_path(b.bn3(b.conv_pwl(b.se(y), routing)))
    return BlockParts(branch=branch, residual=b.has_skip)


def _split(model):
    """The model's blocks (every stage's, in order) split around the ones with the skip."""
    cls = type(model).__name__
    found = transitions.split_chain([b for stage in model.blocks for b in stage],
                                    lambda b: bool(getattr(b, "has_skip", False)), cls)
    transitions.note(cls, found, _BLOCKS, "stride 1 and the same width, with the skip on")
    return found


@register_model(ef.EfficientNet, builtin=True)
def efficientnet(model) -> ModelParts:
    found = _split(model)
    return ModelParts(blocks=found.blocks, transitions=found.transitions,
                      head=lambda h: model.forward_head(model.bn2(model.conv_head(
                          found.run_tail(h)))))


@register_model(mv3.MobileNetV3, builtin=True)
def mobilenetv3(model) -> ModelParts:
    found = _split(model)
    return ModelParts(blocks=found.blocks, transitions=found.transitions,
                      head=lambda h: model.forward_head(found.run_tail(h)))
