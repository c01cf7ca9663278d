"""torchvision's ResNet family (models/resnet.py): BasicBlock and Bottleneck, which make up
resnet18-152, wide_resnet50_2/101_2 and resnext50_32x4d / 101_32x8d / 101_64x4d (grouped
3x3 convolutions, transposed in closed form like the others: folded.ConvT). Their ReLU modules
work in place; the branch uses F.relu, which does not. The shortcut (`downsample`) is None or
Sequential(1x1 conv, BN)."""
from __future__ import annotations

import torch.nn.functional as F
from torchvision.models import resnet as tv

from . import BlockParts, chain, register_block


@register_block(tv.BasicBlock, builtin=True)
def basic_block(block) -> BlockParts:
    layers = (block.conv1, block.bn1, F.relu, block.conv2, block.bn2)  # conv-bn-relu-conv-bn
    return BlockParts(branch=chain(layers), shortcut=block.downsample, post=F.relu,
                      layers=layers)


@register_block(tv.Bottleneck, builtin=True)
def bottleneck(block) -> BlockParts:
    # 1x1 reduce, 3x3 (grouped in ResNeXt), 1x1 expand, each with BN
    layers = (block.conv1, block.bn1, F.relu, block.conv2, block.bn2, F.relu, block.conv3,
              block.bn3)
    return BlockParts(branch=chain(layers), shortcut=block.downsample, post=F.relu,
                      layers=layers)
