"""What the Hugging Face family files share: the context's attention mask and token probes.

torch.fx cannot trace transformers models, so each family has a model adapter naming its
blocks and head; the stem is the model's own forward up to its first layer (captured), which
also yields what the model passes every layer (the attention mask it built, in whatever form
this version of transformers builds it)."""
from __future__ import annotations

import torch


def attention_mask(ctx):
    """The attention mask the model passes its layers (None: no padding)."""
    return (ctx or {}).get("attention_mask")


def token_probe(config, length: int = 16):
    """() -> two random sequences of token ids, for wrap's proof."""
    def probe():
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, config.vocab_size, (2, length), generator=g)
    return probe
