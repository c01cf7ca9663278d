"""timm's VisionTransformer (models/vision_transformer.py) and the blocks it is built from.

Block (pre-LN, the default): two residual blocks on the token stream (N, prefix + patches, d),
    x + drop_path1(ls1(attn(norm1(x)))) then x + drop_path2(ls2(mlp(norm2(x)))). LayerScale
    `ls1` / `ls2` (a per-channel gamma (d,); nn.Identity when init_values is None) is the
    branch's `scale`, the analogue of SkipInit's alpha. DropPath is kept in the branch: it
    multiplies each example by 0 or 1/keep in training and is the identity in eval mode, so it
    commutes with the per-channel scale.
ResPostBlock (residual post-norm, e.g. vit_base_patch16_rpn_224): x + drop_path(norm1(attn(x))),
    then x + drop_path(norm2(mlp(x))): the norm is inside the branch, post is the identity.
ParallelThingsBlock (Touvron et al. 2022): x + sum_j attns[j](x), then x + sum_j ffns[j](x):
    two residual blocks whose branch is the sum of the parallel sublayers (each with its own
    LayerScale, kept inside the branch since the scales differ).
ParallelScalingBlock and DiffParallelScalingBlock (attention and MLP fused into one
    projection) are not split: wrap says they have no block adapter.

The model adapter is needed because torch.fx cannot trace VisionTransformer.forward_features:
it branches on `attn_mask is not None`, which fx takes for a Proxy (never None), and then calls
every block with keyword arguments. The stem is captured (the model's own forward stopped at
its first block: patch embedding, class / register tokens, position embedding, patch dropout,
norm_pre, whatever this version of timm does); the head is norm -> forward_head (pooling,
fc_norm, head). The probe's size comes from patch_embed (a model made with
create_model(..., img_size=32) keeps pretrained_cfg's 224)."""
from __future__ import annotations

import torch
from timm.layers import LayerScale
from timm.models import vision_transformer as vit

from . import BlockParts, ModelParts, register_block, register_model


def _attend(attn, y: torch.Tensor, ctx) -> torch.Tensor:
    """attn(y) with the attention arguments the model passed its block (none unless the caller
    gave forward an attn_mask or is_causal); older timm Attention takes neither."""
    kwargs = {k: v for k, v in (ctx or {}).items() if k in ("attn_mask", "is_causal")}
    return attn(y, **kwargs)


def _scale(ls):
    """(scale, rest): LayerScale's gamma (d,) as the block's scale, else None and the module
    (nn.Identity, or another scaling module kept inside the branch)."""
    if isinstance(ls, LayerScale):
        return ls.gamma, None
    return None, ls


@register_block(vit.Block, builtin=True)
def block(b) -> list:
    s1, rest1 = _scale(b.ls1)
    s2, rest2 = _scale(b.ls2)
    keep1 = rest1 if rest1 is not None else (lambda r: r)
    keep2 = rest2 if rest2 is not None else (lambda r: r)

    def attn(x, ctx):  # (N, T, d) -> (N, T, d), without gamma
        return b.drop_path1(keep1(_attend(b.attn, b.norm1(x), ctx)))

    return [BlockParts(name="attn", context=True, branch=attn, scale=s1),
            BlockParts(name="mlp", scale=s2,
                       branch=lambda x: b.drop_path2(keep2(b.mlp(b.norm2(x)))))]


@register_block(vit.ResPostBlock, builtin=True)
def res_post_block(b) -> list:
    def attn(x, ctx):
        return b.drop_path1(b.norm1(_attend(b.attn, x, ctx)))

    return [BlockParts(name="attn", context=True, branch=attn),
            BlockParts(name="mlp", branch=lambda x: b.drop_path2(b.norm2(b.mlp(x))))]


@register_block(vit.ParallelThingsBlock, builtin=True)
def parallel_things_block(b) -> list:
    def attn(x, ctx):  # sum over the parallel attentions, each norm -> attn -> ls -> drop_path
        return sum(p.drop_path(p.ls(_attend(p.attn, p.norm(x), ctx))) for p in b.attns)

    return [BlockParts(name="attn", context=True, branch=attn),
            BlockParts(name="mlp", branch=lambda x: sum(f(x) for f in b.ffns))]


@register_model(vit.VisionTransformer, builtin=True)
def vision_transformer(model) -> ModelParts:
    return ModelParts(blocks=list(model.blocks), head=lambda h: model.forward_head(model.norm(h)),
                      example_input=_image_probe(model))


def _image_probe(model):
    """() -> two random images of the size the patch embedding expects, or None (wrap's
    default probe: pretrained_cfg's input_size)."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    proj = getattr(pe, "proj", None)
    chans = getattr(proj, "in_channels", None) or getattr(model, "in_chans", None)
    if size is None or chans is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)

    def probe():
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, chans, h, w, generator=g)
    return probe
