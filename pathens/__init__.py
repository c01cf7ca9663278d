"""pathens: residual networks as ensembles of paths.

    view = pathens.wrap(model)                      # stem -> blocks -> head, checked on a probe
    pg = pathens.path_gradients(view, x, y)         # gradient magnitude by path length, exact
    pathens.paths.bn_variance_distribution(view.num_blocks)
"""
from . import lesion, paths
from .adapters import BlockParts, register_block
from .checkpoints import load, load_state_dict, load_weights, save_checkpoint
from .depth import BranchVariance, EffectiveDepth, branch_variance, effective_depth
from .errors import CheckpointError, PathensError, WrapError
from .gradients import PathGradients, path_gradients
from .lesion import LesionResult
from .models import cifar_resnet
from .view import Block, ResidualView, wrap

from .version import __version__

__all__ = [
    "BlockParts", "Block", "BranchVariance", "CheckpointError", "EffectiveDepth", "LesionResult", "PathGradients", "PathensError", "ResidualView",
    "WrapError", "branch_variance", "cifar_resnet", "effective_depth", "load_state_dict", "load_weights", "lesion", "load", "path_gradients", "paths", "save_checkpoint",
    "register_block", "wrap",
]
