"""Hugging Face ConvNeXt (transformers.models.convnext: facebook/convnext-tiny-224 and kin), as
ConvNextForImageClassification: stem -> ConvNextLayers -> head.

ConvNextLayer: x -> x + drop_path(permute(layer_scale_parameter * pwconv2(act(pwconv1(
    layernorm(permute(dwconv(x))))))))), on (N, C, H, W), no activation after the add. The
    layer scale (C,) is the branch's `scale` (as (C, 1, 1)); DropPath (per example, the
    identity in eval mode) stays in the branch. LayerNorm and GELU: the sweep transposes the
    branch by autograd.

torch.fx cannot trace transformers models: the model adapter lists every stage's layers; each
ConvNextStage first runs its `downsampling_layer` (channels-first LayerNorm, 2x2 conv with
stride 2; no shortcut), a transition (transitions.py) folded into the stage's first layer
(shortcut and branch). The stem is the model's own forward up to the first layer (patch
embedding, LayerNorm), the head a mean over H and W -> LayerNorm -> classifier.
"""
from __future__ import annotations

import torch
from transformers.models.convnext import modeling_convnext as hf

from .transitions import split_chain
from . import BlockParts, ModelParts, register_block, register_model


@register_block(hf.ConvNextLayer, builtin=True)
def convnext_layer(layer) -> BlockParts:
    def branch(x):  # (N, C, H, W) -> (N, C, H, W), without the layer scale
        y = layer.dwconv(x).permute(0, 2, 3, 1)
        y = layer.pwconv2(layer.act(layer.pwconv1(layer.layernorm(y))))
        return layer.drop_path(y.permute(0, 3, 1, 2))

    s = layer.layer_scale_parameter
    return BlockParts(branch=branch, scale=None if s is None else s.reshape(-1, 1, 1))


def _probe(config, size: int = 224):
    """() -> two random images at the config's image size (224 for facebook/convnext-*)."""
    size = getattr(config, "image_size", None) or size

    def probe():
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, config.num_channels, size, size, generator=g)
    return probe


@register_model(hf.ConvNextForImageClassification, builtin=True)
def convnext_for_classification(model) -> ModelParts:
    net = model.convnext
    units = [m for stage in net.encoder.stages for m in [*stage.downsampling_layer, *stage.layers]]
    found = split_chain(units, lambda m: isinstance(m, hf.ConvNextLayer), type(model).__name__)

    def head(h):
        h = found.run_tail(h)
        return model.classifier(net.layernorm(h.mean([-2, -1])))

    return ModelParts(blocks=found.blocks, transitions=found.transitions, head=head,
                      example_input=_probe(model.config))
