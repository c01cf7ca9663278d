"""torchvision's ConvNeXt (models/convnext.py: convnext_tiny .. convnext_large), as stem ->
CNBlocks -> head.

CNBlock: x -> x + stochastic_depth(layer_scale * block(x)), block = depthwise 7x7 conv ->
    permute -> LayerNorm -> Linear -> GELU -> Linear -> permute back; no activation after the
    add. `layer_scale` (C, 1, 1) is the branch's `scale` (LayerScale, the analogue of SkipInit's
    alpha); StochasticDepth ("row": a per-example 0 or 1/keep in training, the identity in eval
    mode) stays in the branch, with which the per-channel scale commutes. LayerNorm and GELU:
    the sweep transposes the branch by autograd.

`features` is one flat nn.Sequential: the stem (Conv2dNormActivation), then for each stage an
nn.Sequential of CNBlocks followed by a downsampling nn.Sequential(LayerNorm2d, 2x2 conv with
stride 2), which has no shortcut. The model adapter lists the CNBlocks and names each
downsampling layer a transition (transitions.py), folded into the first block of the next
stage (shortcut and branch); the stem is the model's own forward up to the first CNBlock, the
head avgpool -> classifier (LayerNorm2d, Flatten, Linear).
"""
from __future__ import annotations

from torch import nn
from torchvision.models import convnext as tv

from .transitions import split_chain
from . import BlockParts, ModelParts, register_block, register_model


@register_block(tv.CNBlock, builtin=True)
def cn_block(b) -> BlockParts:
    return BlockParts(branch=lambda x: b.stochastic_depth(b.block(x)), scale=b.layer_scale)


def units(features: nn.Sequential, block_types: tuple) -> list:
    """features as one chain: the blocks of every nn.Sequential made only of `block_types`,
    every other module as itself (stem, downsampling layers, last convolutions)."""
    out = []
    for m in features:
        kids = list(m.children()) if type(m) is nn.Sequential else []
        if kids and all(isinstance(k, block_types) for k in kids):
            out.extend(kids)
        else:
            out.append(m)
    return out


@register_model(tv.ConvNeXt, builtin=True)
def convnext(model) -> ModelParts:
    found = split_chain(units(model.features, (tv.CNBlock,)),
                        lambda m: isinstance(m, tv.CNBlock), type(model).__name__)
    return ModelParts(blocks=found.blocks, transitions=found.transitions,
                      head=lambda h: model.classifier(model.avgpool(found.run_tail(h))))
