"""pathens's own models (models.py): every block follows the protocol
block(x) == block.post(s + block.alpha * block.branch(x)); `layers` spells out the branch()
methods of the two built-in block kinds so that the sweeps transpose them in closed form."""
from __future__ import annotations

import torch.nn.functional as F

from .. import models
from . import BlockParts, register_block


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
