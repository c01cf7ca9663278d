"""A language model's context (the longest sequence it takes), read from its position
embedding when no adapter states it (ModelParts.max_length): a sequence longer than that would
otherwise fail deep inside the model with a bare "IndexError: index out of range in self".

Candidates are the nn.Embedding modules and parameters whose own name says "position" (a word
pos, wpe, posemb, position...: pos_emb, wpe, position_embeddings, embed_positions; not
transposed): an embedding's rows, a (T, d) or (1, T, d) parameter's T. Only an
unambiguous answer is returned: none, or several different sizes, give None (nothing checked).
"""
from __future__ import annotations

import re

from torch import nn

_WORDS = {"pos", "wpe", "posemb", "posembed", "posembedding", "positional"}


def _names_position(name: str) -> bool:
    """pos, pos_emb, wpe, position_embeddings, embed_positions, ... (not transposed, compose)."""
    words = re.split(r"[_\d]+", name.rsplit(".", 1)[-1].lower())
    return any(w in _WORDS or w.startswith("position") for w in words)


def infer_context(model: nn.Module) -> int | None:
    """The number of positions the model's position embedding holds, or None."""
    sizes, embeddings = set(), set()
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding) and _names_position(name):
            sizes.add(int(m.num_embeddings))
            embeddings.add(id(m.weight))
    for name, p in model.named_parameters():
        if id(p) in embeddings or not _names_position(name):
            continue
        if p.ndim == 2 or (p.ndim == 3 and p.shape[0] == 1):
            sizes.add(int(p.shape[-2]))
    return sizes.pop() if len(sizes) == 1 else None
