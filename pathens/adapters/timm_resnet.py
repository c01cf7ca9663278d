"""timm's ResNet families, traced with torch.fx as they are (forward_features and forward_head
are plain code), blocks split here:

- timm.models.resnet BasicBlock / Bottleneck: resnet*, resnext* (grouped 3x3), seresnet* /
  seresnext* (a squeeze-excitation module after the last BN), wide_resnet*, resnet*d / *t
  (shortcut Sequential(AvgPool2d, Conv2d, BN)), resnetaa* (AvgPool2d anti-aliasing),
  resnetblur* (BlurPool2d), resnetrs*, ecaresnet*: conv-BN-act chains, then `se`, `drop_path`,
  a shortcut (`downsample`) and an activation after the add.
- timm.models.resnetv2 PreActBasic / PreActBottleneck (resnetv2_18..152 and *d: BatchNormAct2d;
  the BiT models: StdConv2d and GroupNormAct): x_preact = norm1(x); out = branch(x_preact) +
  (downsample(x_preact) if downsample else x), no activation after the add; and the
  non-pre-activation resnetv2 Bottleneck (hybrid ViT backbones).

timm's activations work in place (act_layer(inplace=True)): branch and post use F.relu or a
non-in-place copy (folded.activation). DropPath and DropBlock2d are the identity in eval mode
(IdentityInEval); BatchNormAct2d is split into its BN (BatchNormOf) and its activation, so
that the closed-form transposes see them. A part they cannot transpose (SEModule, whose gate
depends on the input; GroupNorm; StdConv2d's standardised weight; BlurPool2d) stays listed as
itself: wrap still proves it, and the sweep transposes that block by autograd and says so
(linearize.autograd_note).
"""
from __future__ import annotations

from timm.layers import BatchNormAct2d
from timm.models import resnet as tr
from timm.models import resnetv2 as tr2
from torch import nn

from .layers import BatchNormOf, Chain, IdentityInEval, activation
from . import BlockParts, chain, register_block


def _eval_identity(module) -> list:
    """DropPath / DropBlock2d / dropout (None or nn.Identity when off) as listed layers."""
    return [] if module is None or type(module) is nn.Identity else [IdentityInEval(module)]


def _norm(norm) -> list:
    """A norm layer as listed layers: BatchNormAct2d as BN, its dropout, its activation;
    anything else (nn.BatchNorm2d, GroupNormAct, nn.Identity) as itself."""
    if isinstance(norm, BatchNormAct2d):
        return [BatchNormOf(norm), *_eval_identity(norm.drop), *activation(norm.act)]
    return [] if type(norm) is nn.Identity else [norm]


def _tail(block) -> list:
    """What follows a resnet.py branch's last BN: squeeze-excitation (or ECA, ...), DropPath."""
    return ([] if block.se is None else [block.se]) + _eval_identity(block.drop_path)


def _post(act):
    (f,) = activation(act) or [None]  # the activation after the add (nn.Identity: None)
    return f


def _projection(ds) -> list:
    """resnetv2's DownsampleConv (conv, norm) / DownsampleAvg (pool, conv, norm) as layers;
    norm is nn.Identity in pre-activation blocks."""
    pool = [ds.pool] if isinstance(ds, tr2.DownsampleAvg) else []
    return [*pool, ds.conv, *_norm(ds.norm)]


def _shortcut(ds):
    """resnetv2's projection shortcut as an nn.Sequential of its layers (it owns their
    parameters), None for the identity; another module as itself."""
    if ds is None:
        return None
    if isinstance(ds, (tr2.DownsampleConv, tr2.DownsampleAvg)):
        return nn.Sequential(*_projection(ds))
    return ds


def _parts(layers: list, shortcut, post) -> BlockParts:
    layers = tuple(l for l in layers if type(l) is not nn.Identity)
    return BlockParts(branch=chain(layers), shortcut=shortcut, post=post, layers=layers)


@register_block(tr.BasicBlock, builtin=True)
def basic_block(block) -> BlockParts:
    # conv1 -> bn1 -> drop_block -> act1 -> aa -> conv2 -> bn2 -> se -> drop_path
    layers = [block.conv1, *_norm(block.bn1), *_eval_identity(block.drop_block),
              *activation(block.act1), block.aa, block.conv2, *_norm(block.bn2), *_tail(block)]
    return _parts(layers, block.downsample, _post(block.act2))


@register_block(tr.Bottleneck, builtin=True)
def bottleneck(block) -> BlockParts:
    # 1x1 reduce, 3x3 (grouped in ResNeXt, strided or followed by aa), 1x1 expand, se, drop_path
    layers = [block.conv1, *_norm(block.bn1), *activation(block.act1),
              block.conv2, *_norm(block.bn2), *_eval_identity(block.drop_block),
              *activation(block.act2), block.aa,
              block.conv3, *_norm(block.bn3), *_tail(block)]
    return _parts(layers, block.downsample, _post(block.act3))


def _preact(block, convs: list) -> BlockParts:
    """out = branch(x_preact) + shortcut, x_preact = norm1(x); convs: [(conv, norm before it)]
    after the first conv, which reads x_preact."""
    pre = _norm(block.norm1)
    layers = [*pre]
    for conv, norm in convs:
        layers += [*([] if norm is None else _norm(norm)), conv]
    layers += _eval_identity(block.drop_path)
    # The projection reads x_preact too (not x): the shortcut is norm1, then the projection.
    ds = block.downsample
    shortcut = None if ds is None else Chain([*pre, _shortcut(ds)])
    return _parts(layers, shortcut, None)


if hasattr(tr2, "PreActBasic"):  # older timm lacks it (and resnetv2_18 / 34, built of it)
    @register_block(tr2.PreActBasic, builtin=True)
    def preact_basic(block) -> BlockParts:
        return _preact(block, [(block.conv1, None), (block.conv2, block.norm2)])


@register_block(tr2.PreActBottleneck, builtin=True)
def preact_bottleneck(block) -> BlockParts:
    return _preact(block, [(block.conv1, None), (block.conv2, block.norm2),
                           (block.conv3, block.norm3)])


@register_block(tr2.Bottleneck, builtin=True)
def v2_bottleneck(block) -> BlockParts:
    # conv-norm(act) x2, conv-norm (no act), drop_path; act3 after the add
    layers = [block.conv1, *_norm(block.norm1), block.conv2, *_norm(block.norm2),
              block.conv3, *_norm(block.norm3), *_eval_identity(block.drop_path)]
    return _parts(layers, _shortcut(block.downsample), _post(block.act3))
