"""torchvision's VisionTransformer (models/vision_transformer.py), a pre-LN encoder: every
EncoderBlock holds two residual blocks on the token stream (N, 1 + patches, d),
x + dropout(self_attention(ln_1(x))) then x + mlp(ln_2(x)) (post = identity).

No model adapter: torch.fx traces VisionTransformer with the EncoderBlocks kept as leaves (they
are called as a chain, one tensor each, inside encoder.layers); the stem is patchify + class
token + position embedding (+ dropout), the head encoder.ln -> class token -> heads. wrap's
default probe comes from the model's `image_size`."""
from __future__ import annotations

from torchvision.models import vision_transformer as tv

from . import BlockParts, register_block


@register_block(tv.EncoderBlock, builtin=True)
def encoder_block(block) -> list:
    def attn(x):  # (N, T, d) -> (N, T, d): self-attention of the normalised stream
        y = block.ln_1(x)
        # need_weights=False as in the block's own forward (it may take the fused fast path,
        # which differs from the slow one only by rounding)
        return block.dropout(block.self_attention(y, y, y, need_weights=False)[0])

    return [BlockParts(name="attn", branch=attn),
            BlockParts(name="mlp", branch=lambda x: block.mlp(block.ln_2(x)))]
