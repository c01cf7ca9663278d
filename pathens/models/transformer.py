"""pathens's own decoder-only transformer (a GPT, in the style of karpathy/nanoGPT), with the
four ways of putting a residual sublayer on the stream that the transformer twin of De & Smith's
question compares:

    norm="pre"     x = x + attn(ln(x));             x = x + mlp(ln(x))      (GPT-2; a final LN)
    norm="post"    x = ln(x + attn(x));             x = ln(x + mlp(x))      (Vaswani et al.)
    norm="rezero"  x = x + alpha_attn * attn(x);    x = x + alpha_mlp * mlp(x)   (Bachlechner et al.)
    norm="none"    x = x + attn(x);                 x = x + mlp(x)

Every attention and every MLP sublayer is one residual block of pathens's protocol,
post(x + scale * branch(x)): a `Layer` holds two, and the adapter in
pathens/adapters/pathens_models.py hands them to the view as "h.<i>.attn" and "h.<i>.mlp".

    model = gpt(depth=6, width=64, heads=4, context=64, norm="rezero")
    logits = model(ids)                 # ids (B, T) int64 -> logits (B, T, vocab_size)

The head is untied from the token embedding: with a byte vocabulary the embedding is small
anyway, and an untied unembedding lets the length-0 path (embedding -> head, no sublayer) be
a real bigram model, rather than one that scores the next token by the similarity of its
embedding to the current token's, which tying forces on it; so how much work the shortest
paths do depends on the norm being compared, not on the tying.

Initialisation (GPT-2's): every Linear and Embedding weight ~ N(0, 0.02), biases 0, LayerNorm
(1, 0). The two projections that write into the stream (attn.proj, mlp.proj) are scaled by
1/sqrt(2 * depth) for "pre" and "none", where the stream is the sum of 2 * depth branches that
nothing renormalises (GPT-2's reason). Not for "post", whose LayerNorm after every sum resets
the scale. Not for "rezero" either: ReZero's one change is the gate, x + alpha * F(x) with
alpha = 0 at init (Bachlechner et al. 2020, eq. 1), the sublayers keeping their usual
initialisation; alpha learns each branch's scale, and shrinking F as well would only shrink
alpha's first gradients (dL/dalpha = <dL/dx, F(x)>), the only non-zero ones at init.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..errors import PathensError

NORMS = ("pre", "post", "rezero", "none")
INIT_STD = 0.02  # GPT-2's


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: (B, T, d) -> (B, T, d)."""

    def __init__(self, width, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)   # query, key, value for all heads at once
        self.proj = nn.Linear(width, width)      # writes into the residual stream
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                            # 3 x (B, T, d)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
                   for t in (q, k, v))                                    # (B, heads, T, d/heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                  # (B, T, d)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: (B, T, d) -> (B, T, ratio * d) -> GELU -> (B, T, d)."""

    def __init__(self, width, ratio, dropout):
        super().__init__()
        self.fc = nn.Linear(width, ratio * width)
        self.proj = nn.Linear(ratio * width, width)  # writes into the residual stream
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Scale(nn.Module):
    """ReZero's learnable scalar on a residual branch: x -> alpha * x, alpha of shape ()."""

    def __init__(self, alpha_init):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x):
        return self.alpha * x

    def extra_repr(self):
        return f"alpha={self.alpha.item():.4g}"


def _ln_if(on, width):
    return nn.LayerNorm(width) if on else nn.Identity()


class Layer(nn.Module):
    """One transformer layer: two residual blocks on the stream x (B, T, d), attention then MLP,
    each x -> post(x + scale(branch(pre(x)))). Depending on norm, pre (pre-LN) or post (post-LN)
    is a LayerNorm and scale is ReZero's alpha; every other part is an nn.Identity."""

    def __init__(self, *, width, heads, mlp_ratio, dropout, norm, alpha_init):
        super().__init__()
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.mlp = MLP(width, mlp_ratio, dropout)
        self.pre_attn, self.pre_mlp = _ln_if(norm == "pre", width), _ln_if(norm == "pre", width)
        self.post_attn, self.post_mlp = _ln_if(norm == "post", width), _ln_if(norm == "post", width)
        rezero = norm == "rezero"
        self.scale_attn = Scale(alpha_init) if rezero else nn.Identity()
        self.scale_mlp = Scale(alpha_init) if rezero else nn.Identity()

    def forward(self, x):
        x = self.post_attn(x + self.scale_attn(self.attn(self.pre_attn(x))))   # attention block
        x = self.post_mlp(x + self.scale_mlp(self.mlp(self.pre_mlp(x))))       # MLP block
        return x


class GPT(nn.Module):
    """Token + position embeddings -> depth Layers -> (final LN for pre-LN) -> linear head.
    Build it with gpt(); the arguments are kept in self.config."""

    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        c = self.config
        d = c["width"]
        self.wte = nn.Embedding(c["vocab_size"], d)   # token embedding
        self.wpe = nn.Embedding(c["context"], d)      # learned position embedding
        self.drop = nn.Dropout(c["dropout"])
        self.h = nn.ModuleList([Layer(width=d, heads=c["heads"], mlp_ratio=c["mlp_ratio"],
                                      dropout=c["dropout"], norm=c["norm"],
                                      alpha_init=c["alpha_init"]) for _ in range(c["depth"])])
        self.ln_f = _ln_if(c["norm"] == "pre", d)     # pre-LN's last sum is not normalised yet
        self.lm_head = nn.Linear(d, c["vocab_size"], bias=False)  # untied: module docstring
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if self.config["norm"] in ("pre", "none"):  # 2 * depth unnormalised branches add up
            std = INIT_STD / math.sqrt(2 * self.config["depth"])
            for layer in self.h:
                nn.init.normal_(layer.attn.proj.weight, mean=0.0, std=std)
                nn.init.normal_(layer.mlp.proj.weight, mean=0.0, std=std)

    def embed(self, idx):
        """The stem: token ids (B, T) -> the residual stream (B, T, d)."""
        T, c = idx.shape[1], self.config
        if T > c["context"]:
            raise PathensError(f"sequences of {T} tokens are longer than the model's context of "
                               f"{c['context']}: cut them")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c["vocab_size"]):
            raise PathensError(f"token ids range over {int(idx.min())}..{int(idx.max())} but the "
                               f"vocabulary has {c['vocab_size']} (0..{c['vocab_size'] - 1})")
        pos = torch.arange(T, device=idx.device)      # (T,)
        return self.drop(self.wte(idx) + self.wpe(pos))

    def head(self, x):
        """(B, T, d) -> logits (B, T, vocab_size)."""
        return self.lm_head(self.ln_f(x))

    def forward(self, idx):
        x = self.embed(idx)
        for layer in self.h:
            x = layer(x)
        return self.head(x)


def gpt(*, depth=6, width=64, heads=4, context=64, vocab_size=256, norm="pre", mlp_ratio=4,
        dropout=0.0, alpha_init=0.0):
    """A decoder-only transformer of `depth` layers (2 * depth residual blocks).

    width:      d_model, divisible by heads.        heads: attention heads.
    context:    the longest sequence (learned position embeddings for 0..context-1).
    vocab_size: 256 for bytes (pathens.text's default tokenisation).
    norm:       "pre" (GPT-2), "post" (the original Transformer), "rezero" (no normalisation, a
                learnable scalar alpha on every branch, initialised to alpha_init: ReZero,
                SkipInit's transformer twin) or "none" (no normalisation, no alpha).
    mlp_ratio:  the MLP's hidden width over width.   dropout: on attention, branches, embeddings.
    """
    depth = checks.integer("depth", depth, least=1)
    width = checks.positive("width", width)
    heads = checks.positive("heads", heads)
    context = checks.integer("context", context, least=2, hint="tokens")
    vocab_size = checks.integer("vocab_size", vocab_size, least=2)
    mlp_ratio = checks.positive("mlp_ratio", mlp_ratio)
    if width % heads:
        raise PathensError(f"width ({width}) must be divisible by heads ({heads})")
    if norm not in NORMS:
        raise PathensError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    checks.number("dropout", dropout, low=0, high=1, open_high=True)
    checks.number("alpha_init", alpha_init)
    if norm != "rezero" and alpha_init != 0:
        raise PathensError(f"alpha_init={alpha_init!r} only applies to norm='rezero' (norm is {norm!r})")
    return GPT(dict(depth=depth, width=width, heads=heads, context=context,
                    vocab_size=vocab_size, norm=norm, mlp_ratio=mlp_ratio,
                    dropout=float(dropout), alpha_init=float(alpha_init)))
