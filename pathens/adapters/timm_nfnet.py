"""timm's normalizer-free networks (models/nfnet.py: nf_resnet*, nf_regnet*, nfnet_*, dm_nfnet_*,
eca_nfnet_*; Brock, De, Smith & Simonyan 2021), as stem -> NormFreeBlocks -> head. A model
adapter names the blocks (every stage's, in order) and the head (final_conv -> final_act ->
forward_head), because torch.fx cannot trace every variant (dm_nfnet's stem pads with 'same'
padding computed from the input's size); the stem is the model's own forward up to the first
block.

NormFreeBlock, the direct descendant of SkipInit (De & Smith 2020), with no normalisation:
    x' = beta * act1(x)                        beta = 1 / (the expected std of x)
    out = shortcut + alpha * branch(x'),       shortcut = downsample(x') or x
    branch = drop_path(conv3(act3(attn?(conv2(act2(conv1(x')))))))  (ScaledStdConv2d:
             weight-standardised convolutions with a learned gain; attention (SE / ECA) and
             an extra 3x3 conv where the variant has them; no activation after the add).
alpha (a constant, e.g. 0.2: how fast the variance grows along the stream) is the block's
`scale`, the analogue of SkipInit's alpha; beta is inside the branch, which reads x' (and, in a
downsampling block, the shortcut reads it too: Chain([beta * act1, downsample])). Blocks built
with skipinit=True also multiply the branch by a learned scalar, skipinit_gain (initialised to
0): their scale is alpha x skipinit_gain, applied as scale = skipinit_gain (the parameter
itself, so that the view follows it when it changes) with alpha inside the branch.

Weight standardisation, GELU / SiLU and the attention gates: the sweep transposes these blocks
by autograd (the branch lists no layers).
"""
from __future__ import annotations

from timm.models import nfnet as nf

from .layers import Chain
from . import BlockParts, ModelParts, register_block, register_model


@register_block(nf.NormFreeBlock, builtin=True)
def normfree_block(b) -> BlockParts:
    def pre(x):  # x' = beta * act1(x): what branch and projection read
        return b.act1(x) * b.beta

    gain = b.skipinit_gain

    def branch(x):
        out = b.conv2(b.act2(b.conv1(pre(x))))
        if b.conv2b is not None:
            out = b.conv2b(b.act2b(out))
        if b.attn is not None:
            out = b.attn_gain * b.attn(out)
        out = b.conv3(b.act3(out))
        if b.attn_last is not None:
            out = b.attn_gain * b.attn_last(out)
        out = b.drop_path(out)
        return out if gain is None else out * b.alpha

    shortcut = None if b.downsample is None else Chain([pre, b.downsample])
    return BlockParts(branch=branch, shortcut=shortcut, scale=b.alpha if gain is None else gain)


@register_model(nf.NormFreeNet, builtin=True)
def normfree_net(model) -> ModelParts:
    return ModelParts(blocks=[b for stage in model.stages for b in stage],
                      head=lambda h: model.forward_head(model.final_act(model.final_conv(h))))
