"""Hugging Face GPT-2 (GPT2LMHeadModel), a pre-LN decoder: every GPT2Block holds two residual
blocks, x + attn(ln_1(x)) then x + mlp(ln_2(x)) (post = identity); the head is ln_f, then
lm_head; the default loss is next-token prediction."""
from __future__ import annotations

from transformers.models.gpt2 import modeling_gpt2 as gpt2

from ..errors import WrapError
from . import BlockParts, ModelParts, register_block, register_model
from .hf_common import attention_mask, token_probe


@register_block(gpt2.GPT2Block, builtin=True)
def gpt2_block(block) -> list:
    if getattr(block, "crossattention", None) is not None:
        raise WrapError("GPT-2 blocks with cross-attention (add_cross_attention=True) are not "
                        "supported: their third sublayer reads the encoder's states")
    def attn(x, ctx):
        return block.attn(block.ln_1(x), attention_mask=attention_mask(ctx))[0]
    return [BlockParts(name="attn", context=True, branch=attn),
            BlockParts(name="mlp", branch=lambda x: block.mlp(block.ln_2(x)))]


@register_model(gpt2.GPT2LMHeadModel, builtin=True)
def gpt2_lm(model) -> ModelParts:
    t, config = model.transformer, model.config
    return ModelParts(blocks=list(t.h), head=lambda h: model.lm_head(t.ln_f(h)),
                      loss="next_token", vocab_size=config.vocab_size,
                      max_length=config.n_positions,
                      example_input=token_probe(config, min(16, config.n_positions)))
