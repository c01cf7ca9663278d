"""Hugging Face ResNet (transformers.models.resnet: microsoft/resnet-18 .. -152 and kin), as
ResNetForImageClassification. torch.fx cannot trace transformers models, so a model adapter
names the blocks: the layers of every stage in order (resnet.encoder.stages[s].layers[j]);
the stem is the model's own forward up to the first layer (embedder: 7x7 conv-BN-act, max
pool), the head its pooler (AdaptiveAvgPool2d) then classifier (Flatten, Linear).

Blocks: ResNetBasicLayer (two ResNetConvLayers, conv-BN-act, the second without act) and
ResNetBottleNeckLayer (1x1 reduce, 3x3, 1x1 expand), each + shortcut (nn.Identity or
ResNetShortCut: 1x1 conv, BN), then the activation (config.hidden_act) after the add. The
branch lists its convolutions, BNs and activations, so that the sweep transposes it in
closed form (ReLU; another hidden_act falls back to autograd, and the sweep says so).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.resnet import modeling_resnet as hf

from .layers import activation
from . import BlockParts, ModelParts, chain, register_block, register_model


def _conv_layer(layer: hf.ResNetConvLayer) -> list:
    # convolution -> normalization -> activation (nn.Identity where activation=None)
    return [layer.convolution, layer.normalization, *activation(layer.activation)]


def _parts(block) -> BlockParts:
    layers = tuple(l for conv in block.layer for l in _conv_layer(conv))
    sc = block.shortcut
    shortcut = (None if type(sc) is nn.Identity else
                nn.Sequential(sc.convolution, sc.normalization)
                if isinstance(sc, hf.ResNetShortCut) else sc)
    (post,) = activation(block.activation) or [None]
    return BlockParts(branch=chain(layers), shortcut=shortcut, post=post, layers=layers)


register_block(hf.ResNetBasicLayer, _parts, builtin=True)
register_block(hf.ResNetBottleNeckLayer, _parts, builtin=True)


def _probe(config, size: int = 224):
    """() -> two random images at ImageNet's 224 x 224 (the size microsoft/resnet-* use), for
    wrap's proof."""
    def probe():
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, config.num_channels, size, size, generator=g)
    return probe


@register_model(hf.ResNetForImageClassification, builtin=True)
def resnet_for_classification(model) -> ModelParts:
    resnet = model.resnet
    blocks = [layer for stage in resnet.encoder.stages for layer in stage.layers]
    return ModelParts(blocks=blocks, head=lambda h: model.classifier(resnet.pooler(h)),
                      example_input=_probe(model.config))
