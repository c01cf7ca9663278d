"""torchvision's RegNet (models/regnet.py: regnet_x_* and regnet_y_* (squeeze-excitation)),
traced with torch.fx as it is (stem -> trunk_output stages -> avgpool -> fc).

ResBottleneckBlock: activation(shortcut(x) + f(x)), f a BottleneckTransform (an nn.Sequential:
1x1 conv-BN-ReLU, 3x3 grouped conv-BN-ReLU (strided at a stage's start), SqueezeExcitation for
RegNetY, 1x1 conv-BN), shortcut `proj` (1x1 conv-BN with stride, where the shape changes) or
the identity, then ReLU after the add (`activation`, in place: post is F.relu). The branch
lists f's layers: RegNetX is transposed in closed form; RegNetY's SE gate (it depends on the
input) makes the sweep use autograd for it, and say so.
"""
from __future__ import annotations

from torchvision.models import regnet as tv

from .layers import activation
from . import BlockParts, register_block


@register_block(tv.ResBottleneckBlock, builtin=True)
def res_bottleneck_block(b) -> BlockParts:
    (post,) = activation(b.activation) or [None]
    return BlockParts(branch=b.f, shortcut=b.proj, post=post, layers=(b.f,))
