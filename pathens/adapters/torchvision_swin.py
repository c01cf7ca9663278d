"""torchvision's Swin Transformer (models/swin_transformer.py: swin_t, swin_s, swin_b and the V2
models swin_v2_t / _s / _b), as stem -> two residual blocks per block -> head.

The stream is (N, H, W, C). SwinTransformerBlock (V1, pre-LN):
    x + stochastic_depth(attn(norm1(x))), then x + stochastic_depth(mlp(norm2(x))),
    attn a ShiftedWindowAttention (shifted windows, padding and the shift's mask inside it).
SwinTransformerBlockV2 (residual post-norm): x + stochastic_depth(norm1(attn(x))), then
    x + stochastic_depth(norm2(mlp(x))): the norm is inside the branch, post the identity.
Each is two sublayers ("attn", "mlp"), transposed by autograd (LayerNorm, softmax, GELU).

`features` is one flat nn.Sequential: the patch embedding (conv, permute, LayerNorm), then
for each stage an nn.Sequential of blocks followed by a PatchMerging (V2: PatchMergingV2),
which has no shortcut. The model adapter lists the blocks and names each PatchMerging a
transition (transitions.py), folded into the attention sublayer of the next stage's first
block (shortcut and branch); the stem is the model's own forward up to the first block, the
head norm -> permute -> avgpool -> flatten -> head.
"""
from __future__ import annotations

from torchvision.models import swin_transformer as tv

from .transitions import split_chain
from . import BlockParts, ModelParts, register_block, register_model
from .torchvision_convnext import units


@register_block(tv.SwinTransformerBlock, builtin=True)
def swin_block(b) -> list:
    return [BlockParts(name="attn", branch=lambda x: b.stochastic_depth(b.attn(b.norm1(x)))),
            BlockParts(name="mlp", branch=lambda x: b.stochastic_depth(b.mlp(b.norm2(x))))]


@register_block(tv.SwinTransformerBlockV2, builtin=True)
def swin_block_v2(b) -> list:
    return [BlockParts(name="attn", branch=lambda x: b.stochastic_depth(b.norm1(b.attn(x)))),
            BlockParts(name="mlp", branch=lambda x: b.stochastic_depth(b.norm2(b.mlp(x))))]


@register_model(tv.SwinTransformer, builtin=True)
def swin_transformer(model) -> ModelParts:
    blocks = (tv.SwinTransformerBlock,)  # V2 blocks are a subclass
    found = split_chain(units(model.features, blocks), lambda m: isinstance(m, blocks),
                        type(model).__name__)

    def head(h):
        h = model.permute(model.norm(found.run_tail(h)))
        return model.head(model.flatten(model.avgpool(h)))

    return ModelParts(blocks=found.blocks, transitions=found.transitions, head=head)
