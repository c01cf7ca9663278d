"""timm's ConvNeXt (models/convnext.py: convnext_atto .. convnext_xxlarge, the ConvNeXt-V2 models
with use_grn), as stem -> ConvNeXtBlocks -> head.

ConvNeXtBlock: x -> shortcut(x) + drop_path(gamma * mlp(norm(conv_dw(x)))), the MLP and its
    norm on (N, H, W, C) (permuted) or, with conv_mlp, on (N, C, H, W); no activation after
    the add. LayerScale's gamma (C,) is the branch's `scale` (as (C, 1, 1)), the analogue of
    SkipInit's alpha; DropPath (the identity in eval mode, a per-example 0 or 1/keep in
    training) stays in the branch, with which the per-channel scale commutes. `shortcut` is
    nn.Identity, or timm's Downsample (avg-pool + 1x1 conv) where a block changes the width.
    The branch has LayerNorm and GELU: the sweep transposes it by autograd.

The model adapter is needed because each ConvNeXtStage runs its `downsample` (LayerNorm2d +
strided conv, no shortcut) before its blocks: the blocks alone do not form a chain. Every
stage's downsample after the first block is a transition (transitions.py), folded into the
first block of its stage (shortcut and branch), which becomes the view's downsampling block;
the stem is the model's own forward up to the first block (stem, and stage 0's downsample if
any), the head norm_pre -> forward_head (timm's NormMlpClassifierHead: pool, norm, fc).
"""
from __future__ import annotations

from timm.models import convnext as cx
from torch import nn

from .transitions import split_chain
from . import BlockParts, ModelParts, register_block, register_model


@register_block(cx.ConvNeXtBlock, builtin=True)
def convnext_block(b) -> BlockParts:
    def branch(x):  # (N, C, H, W) -> (N, C, H, W), without gamma
        y = b.conv_dw(x)
        if b.use_conv_mlp:
            y = b.mlp(b.norm(y))
        else:
            y = b.mlp(b.norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return b.drop_path(y)

    scale = None if b.gamma is None else b.gamma.reshape(-1, 1, 1)
    shortcut = None if type(b.shortcut) is nn.Identity else b.shortcut
    return BlockParts(branch=branch, shortcut=shortcut, scale=scale)


@register_model(cx.ConvNeXt, builtin=True)
def convnext(model) -> ModelParts:
    units = [m for stage in model.stages
             for m in ([] if type(stage.downsample) is nn.Identity else [stage.downsample])
             + list(stage.blocks)]
    found = split_chain(units, lambda m: isinstance(m, cx.ConvNeXtBlock), type(model).__name__)
    return ModelParts(blocks=found.blocks, transitions=found.transitions,
                      head=lambda h: model.forward_head(model.norm_pre(found.run_tail(h))))
