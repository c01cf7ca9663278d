"""timm's RegNet (models/regnet.py: regnetx_* and regnety_* (squeeze-excitation), regnetz is
another file), traced with torch.fx as it is (stem -> s1..s4 -> final_conv -> head are plain
code), blocks split here.

Bottleneck: conv1 (1x1) -> conv2 (3x3, grouped, strided at a stage's start) -> se (RegNetY:
    SEModule, whose gate depends on the input) -> conv3 (1x1, no activation) -> drop_path,
    each conv a ConvNormAct (conv, BatchNormAct2d, anti-aliasing); plus the shortcut
    (`downsample`: nn.Identity, or a ConvNormAct 1x1 projection, or avg-pool + projection),
    then act3 after the add (ReLU; nn.Identity with linear_out). A block built with
    downsample=None where the shape changes has no shortcut at all: a plain layer.
PreBottleneck (pre-activation): x' = norm1(x); branch(x') + shortcut, where the shortcut is
    downsample(x') or x: as timm's PreActBottleneck (timm_resnet.py), no activation after
    the add.

The branch lists its layers: RegNetX (no SE) is transposed in closed form (convolutions,
BN folded, ReLU masks); RegNetY's SE gate makes the sweep use autograd for it, and say so.
"""
from __future__ import annotations

from timm.models import regnet as rg
from torch import nn

from .layers import Chain
from . import BlockParts, chain, register_block
from .timm_resnet import _eval_identity, _norm, _post


def conv_norm_act(m) -> list:
    """timm's ConvNormAct as layers: conv, its norm (BN, dropout, activation), anti-aliasing."""
    if isinstance(m, (nn.Conv2d, nn.Identity)):  # a pre-activation block's bare convolution
        return [] if type(m) is nn.Identity else [m]
    aa = getattr(m, "aa", None)
    norm = m.bn if not (type(m.bn) is nn.Sequential and len(m.bn) == 0) else nn.Identity()
    return [m.conv, *_norm(norm), *([] if aa is None or type(aa) is nn.Identity else [aa])]


def shortcut(ds):
    """RegNet's `downsample` as the block's shortcut: None for nn.Identity, an nn.Sequential of
    its layers for a (pooled) ConvNormAct projection, which the closed form transposes."""
    if ds is None or type(ds) is nn.Identity:
        return None
    mods = list(ds) if type(ds) is nn.Sequential else [ds]
    return nn.Sequential(*[f for m in mods for f in
                           ([m] if isinstance(m, nn.AvgPool2d) else conv_norm_act(m))
                           if type(f) is not nn.Identity])


def _parts(layers: list, sc, post, residual: bool = True) -> BlockParts:
    layers = tuple(f for f in layers if type(f) is not nn.Identity)
    return BlockParts(branch=chain(layers), shortcut=sc, post=post, layers=layers,
                      residual=residual)


@register_block(rg.Bottleneck, builtin=True)
def bottleneck(b) -> BlockParts:
    layers = [*conv_norm_act(b.conv1), *conv_norm_act(b.conv2), b.se, *conv_norm_act(b.conv3)]
    if b.downsample is None:  # no shortcut (and no drop_path): act3(branch(x)), a plain layer
        return _parts(layers, None, _post(b.act3), residual=False)
    return _parts(layers + _eval_identity(b.drop_path), shortcut(b.downsample), _post(b.act3))


@register_block(rg.PreBottleneck, builtin=True)
def pre_bottleneck(b) -> BlockParts:
    # x' = norm1(x); out = drop_path(branch(x')) + downsample(x'): the shortcut reads x' too,
    # even where downsample is nn.Identity
    pre = _norm(b.norm1)
    layers = [*pre, b.conv1, *_norm(b.norm2), b.conv2, b.se, *_norm(b.norm3), b.conv3]
    if b.downsample is None:
        return _parts(layers, None, None, residual=False)
    sc = shortcut(b.downsample)
    skip = [*pre, *([] if sc is None else [sc])]
    return _parts(layers + _eval_identity(b.drop_path), Chain(skip) if skip else None, None)
