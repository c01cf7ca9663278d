"""pathens's own models (models.py, transformer.py).

CIFAR ResNets: every block follows the protocol
block(x) == block.post(s + block.alpha * block.branch(x)); `layers` spells out the branch()
methods of the two built-in block kinds so that the sweeps transpose them in closed form.

Transformers: every Layer holds two blocks, x -> post(x + scale(branch(pre(x)))) for the
attention and then the MLP sublayer (transformer.Layer); post is the LayerNorm of a post-LN
model, scale ReZero's alpha. The GPT has a model adapter rather than an fx trace: its stem
(embed) builds positions with torch.arange(T), and the adapter also gives what a trace cannot:
the next-token loss, the vocabulary and the context that inputs are checked against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import cifar as models, transformer
from . import BlockParts, ModelParts, register_block, register_model


@register_block(models.ResidualBlock, builtin=True)
def residual_block(block) -> BlockParts:
    if type(block) is models.PreActBlock:
        layers, post = (block.bn1, F.relu, block.conv1, block.bn2, F.relu, block.conv2), None
    elif type(block) is models.BasicBlock:
        layers, post = (block.conv1, block.bn1, F.relu, block.conv2, block.bn2), F.relu
    else:  # a user's subclass of the protocol: its own methods, transposed by autograd
        layers, post = None, block.post
    return BlockParts(branch=block.branch, shortcut=block.shortcut, post=post,
                      scale=block.alpha, residual=getattr(block, "skip", True), layers=layers)


def _sublayer(name, fn, pre, post, scale) -> BlockParts:
    identity = lambda m: isinstance(m, torch.nn.Identity)
    return BlockParts(name=name, branch=lambda x: fn(pre(x)),
                      post=None if identity(post) else post,
                      scale=scale.alpha if isinstance(scale, transformer.Scale) else None)


@register_block(transformer.Layer, builtin=True)
def transformer_layer(layer) -> list:
    return [_sublayer("attn", layer.attn, layer.pre_attn, layer.post_attn, layer.scale_attn),
            _sublayer("mlp", layer.mlp, layer.pre_mlp, layer.post_mlp, layer.scale_mlp)]


@register_model(transformer.GPT, builtin=True)
def gpt_parts(model) -> ModelParts:
    c = model.config

    def probe():  # two random sequences of token ids
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, c["vocab_size"], (2, min(16, c["context"])), generator=g)

    return ModelParts(blocks=list(model.h), stem=model.embed, head=model.head,
                      loss="next_token", vocab_size=c["vocab_size"], max_length=c["context"],
                      example_input=probe)
