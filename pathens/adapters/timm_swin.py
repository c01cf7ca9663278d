"""timm's Swin Transformer (models/swin_transformer.py: swin_tiny_patch4_window7_224 .. swin_large,
at any img_size / window_size), as stem -> two residual blocks per SwinTransformerBlock -> head.

The stream is (N, H, W, C) (timm keeps Swin's features channels-last). A SwinTransformerBlock
computes x + drop_path1(_attn(norm1(x))), the (shifted-)window attention: cyclic shift by
shift_size, pad to whole windows, attention within each window (with the shift's mask),
reverse; then x + drop_path2(mlp(norm2(x))) (the block reshapes to (N, H*W, C) for it, which
changes nothing for a LayerNorm and an MLP that act on the last dimension). Both are pre-LN
sublayers with no activation after the add ("attn" and "mlp"); their branches have LayerNorm,
softmax and GELU: the sweep transposes them by autograd.

The model adapter is needed because every SwinTransformerStage runs its `downsample`
(PatchMerging: 2x2 neighbours concatenated, LayerNorm, Linear to 2C; no shortcut) before its
blocks. Each PatchMerging after the first block is a transition (transitions.py), folded into
the attention sublayer of its stage's first block, which becomes the view's downsampling
block. The stem is the model's own forward up to the first block (patch embedding, absolute
position embedding if any), the head norm -> forward_head (pool, fc).
"""
from __future__ import annotations

from timm.models import swin_transformer as sw
from torch import nn

from .transitions import split_chain
from . import BlockParts, ModelParts, register_block, register_model


@register_block(sw.SwinTransformerBlock, builtin=True)
def swin_block(b) -> list:
    return [BlockParts(name="attn", branch=lambda x: b.drop_path1(b._attn(b.norm1(x)))),
            BlockParts(name="mlp", branch=lambda x: b.drop_path2(b.mlp(b.norm2(x))))]


@register_model(sw.SwinTransformer, builtin=True)
def swin_transformer(model) -> ModelParts:
    units = [m for stage in model.layers
             for m in ([] if type(stage.downsample) is nn.Identity else [stage.downsample])
             + list(stage.blocks)]
    found = split_chain(units, lambda m: isinstance(m, sw.SwinTransformerBlock),
                        type(model).__name__)
    return ModelParts(blocks=found.blocks, transitions=found.transitions,
                      head=lambda h: model.forward_head(model.norm(found.run_tail(h))))
