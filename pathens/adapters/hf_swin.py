"""Hugging Face Swin Transformer (transformers.models.swin: microsoft/swin-tiny-patch4-window7-224
and kin), as SwinForImageClassification: stem -> two residual blocks per SwinLayer -> head.

The stream is (N, H*W, C), the patch grid (H, W) of the stage riding beside it: the model
passes the first stage's grid to every layer as `input_dimensions` (it is in the view's
context, captured with the stem), and each patch merging halves it, rounding up. A SwinLayer
computes, as its forward does,
    attn: x + drop_path(window_attention(layernorm_before(x))): the stream viewed as
          (N, H, W, C), padded to whole windows, cyclically shifted (odd layers), attention
          within each window with the shift's mask, then shifted back, cropped, flattened;
    mlp:  x + dropout(mlp(layernorm_after(x))),
two pre-LN sublayers with no activation after the add, transposed by autograd. The layer's
own forward also shrinks its window (and drops the shift) where the grid is smaller than a
window (set_shift_and_window_size): the branch does the same.

torch.fx cannot trace transformers models: the model adapter lists every stage's layers.
Each SwinStage runs its `downsample` (SwinPatchMerging: 2x2 neighbours concatenated,
LayerNorm, Linear to 2C; no shortcut) after its layers, with the stage's grid: a transition
(transitions.py) folded into the next stage's first attention sublayer. A transition sees
the stream only, so it reads the grid off the token count: the stage's grid at the config's
image size where the count matches it, else a square grid; other inputs (a non-square image
at another size) are refused. The stem is the model's own forward up to the first layer
(patch embedding, position embedding, norm), the head layernorm -> pool -> classifier.

Numerics: Hugging Face's eager attention (attn_implementation="eager") takes its softmax in
float32 whatever the model's dtype (softmax(..., dtype=torch.float32).to(query.dtype)): a
float64 Swin's own gradient then carries float32 rounding (1.6e-9 relative to the float64 one
on a tiny model), and the exact decomposition sums to it to ~2e-11 rather than 1e-15 (the
whole and its parts are rounded apart). The default, sdpa, computes in the model's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.swin import modeling_swin as hf

from ..errors import PathensError
from .transitions import split_chain
from . import BlockParts, ModelParts, register_block, register_model


def _grid(x: torch.Tensor, ctx) -> tuple:
    """(H, W) of the stage whose stream is x (N, H*W, C): the first stage's grid, from the
    context, halved (rounding up) until it has x's token count."""
    dims = (ctx or {}).get("input_dimensions")
    if dims is None:
        raise PathensError("a Swin layer needs the patch grid (input_dimensions) the model passes "
                           "it: run it through the view, whose stem captures it")
    h, w = (int(d) for d in dims)
    while h * w > x.shape[1] and (h, w) != (1, 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != x.shape[1]:
        raise PathensError(f"a Swin layer receives {x.shape[1]} tokens, which is no stage's grid "
                           f"for an input grid of {tuple(dims)}")
    return h, w


@register_block(hf.SwinLayer, builtin=True)
def swin_layer(layer) -> list:
    def attn(x, ctx):  # (N, H*W, C) -> (N, H*W, C), as SwinLayer.forward computes it
        height, width = _grid(x, ctx)
        if not (ctx or {}).get("always_partition", False):
            layer.set_shift_and_window_size((height, width))
        n, _, c = x.shape
        ws = layer.window_size
        y = layer.layernorm_before(x).view(n, height, width, c)
        y, pad = layer.maybe_pad(y, height, width)
        _, hp, wp, _ = y.shape
        windows = hf.window_partition(layer.cyclic_shift(y), ws).view(-1, ws * ws, c)
        mask = layer.get_attn_mask(hp, wp, dtype=y.dtype, device=windows.device)
        out = layer.dropout(layer.attention(windows, mask)[0])
        out = layer.cyclic_shift(hf.window_reverse(out.view(-1, ws, ws, c), ws, hp, wp),
                                 reverse=True)
        if pad[3] > 0 or pad[5] > 0:
            out = out[:, :height, :width, :].contiguous()
        return layer.drop_path(out.view(n, height * width, c))

    return [BlockParts(name="attn", context=True, branch=attn),
            BlockParts(name="mlp",
                       branch=lambda x: layer.dropout(layer.mlp(layer.layernorm_after(x))))]


class PatchMerging(nn.Module):
    """A SwinStage's downsample as a function of the stream alone (a transition): the grid is
    read off the token count (the module docstring says how)."""

    def __init__(self, stage: hf.SwinStage):
        super().__init__()
        self.merge = stage.downsample
        self.resolution = tuple(stage.blocks[0].input_resolution) if len(stage.blocks) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[1]
        if self.resolution is not None and math.prod(self.resolution) == tokens:
            grid = self.resolution
        elif math.isqrt(tokens) ** 2 == tokens:
            grid = (math.isqrt(tokens),) * 2
        else:
            raise PathensError(f"pathens reads a Swin stage's patch grid off its {tokens} tokens, "
                               f"which is neither the config's grid {self.resolution} nor "
                               f"square: give square images, or images of the config's size")
        return self.merge(x, grid)


def _probe(config):
    """() -> two random images at the config's image size."""
    size = config.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)

    def probe():
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, config.num_channels, h, w, generator=g)
    return probe


@register_model(hf.SwinForImageClassification, builtin=True)
def swin_for_classification(model) -> ModelParts:
    net = model.swin
    if net.pooler is None:
        raise PathensError("SwinForImageClassification without its pooler cannot be wrapped")
    units = []
    for stage in net.encoder.layers:
        units.extend(stage.blocks)
        if stage.downsample is not None:
            units.append(PatchMerging(stage))
    found = split_chain(units, lambda m: isinstance(m, hf.SwinLayer), type(model).__name__)

    def head(h):
        h = net.layernorm(found.run_tail(h))
        return model.classifier(torch.flatten(net.pooler(h.transpose(1, 2)), 1))

    return ModelParts(blocks=found.blocks, transitions=found.transitions, head=head,
                      example_input=_probe(model.config))
