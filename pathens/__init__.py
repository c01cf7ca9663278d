"""pathens: residual networks as ensembles of paths.

    view = pathens.wrap(model)                      # stem -> blocks -> head, checked on a probe
    pg = pathens.path_gradients(view, x, y)         # gradient magnitude by path length, exact
    pathens.paths.bn_variance_distribution(view.num_blocks)

The sub-packages are the layers, each importing only those before it: data, models ->
adapters -> view -> measure -> report -> analysis, demo -> cli (DESIGN.md, "The code").
Names are imported on first use (PEP 562), so that `import pathens.paths` (numpy only) and
`pathens --help` do not pay for torch; type checkers and editors see the real imports below.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from importlib import import_module
from typing import TYPE_CHECKING

from .version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "BlockParts": "adapters", "ModelParts": "adapters", "register_block": "adapters",
    "register_model": "adapters", "Branch": "adapters",
    "load": "models.checkpoints", "load_state_dict": "models.checkpoints",
    "load_weights": "models.checkpoints", "save_checkpoint": "models.checkpoints",
    "BranchVariance": "measure.depth", "EffectiveDepth": "measure.depth",
    "branch_variance": "measure.depth", "effective_depth": "measure.depth",
    "CheckpointError": "errors", "PathensError": "errors", "WrapError": "errors",
    "PathGradients": "measure.path_gradients", "path_gradients": "measure.path_gradients",
    "LesionResult": "measure.lesion",
    "cifar_resnet": "models.cifar",
    "Block": "view", "ResidualView": "view", "wrap": "view",
    "Analysis": "analysis", "analyze": "analysis",
    "gpt": "models.transformer", "load_corpus": "data.text", "train_lm": "models.train_text",
    "block_influence": "measure.importance", "angular_distance": "measure.importance",
    "BlockInfluence": "measure.importance", "AngularDistance": "measure.importance",
    "influence_vs_deletion": "measure.influence_cost",
    "InfluenceVsDeletion": "measure.influence_cost",
    "signal_propagation": "measure.signal_propagation",
    "SignalPropagation": "measure.signal_propagation",
    "block_jacobian_spectra": "measure.jacobian_spectra",
    "JacobianSpectra": "measure.jacobian_spectra",
    "singularities": "measure.singularities", "Singularities": "measure.singularities",
    "hessian": "measure.hessian", "Hessian": "measure.hessian",
    "diagnose": "diagnosis", "Diagnosis": "diagnosis",
}
# public module -> where it lives: `pathens.lesion`, `import pathens.lesion` and
# `from pathens.lesion import delete_each` all give pathens.measure.lesion
_MODULES = {
    "lesion": "measure.lesion", "paths": "combinatorics", "report": "report",
    "plots": "report.plots", "data": "data", "models": "models", "losses": "data.losses",
    "imagefolder": "data.imagefolder", "distributed": "distributed", "text": "data.text",
    "transformer": "models.transformer", "train_text": "models.train_text",
    "importance": "measure.importance", "zoo": "zoo", "user_model": "zoo.user_model",
}

__all__ = sorted(_EXPORTS) + list(_MODULES) + ["__version__"]

if TYPE_CHECKING:  # what the lazy names are, for editors ("go to definition") and checkers
    from . import combinatorics as paths, distributed, report  # noqa: F401
    from .adapters import (BlockParts, Branch, ModelParts, register_block,  # noqa: F401
                           register_model)
    from .analysis import Analysis, analyze  # noqa: F401
    from .diagnosis import Diagnosis, diagnose  # noqa: F401
    from .data import imagefolder, losses, text  # noqa: F401
    from .data.text import load_corpus  # noqa: F401
    from .errors import CheckpointError, PathensError, WrapError  # noqa: F401
    from .measure import importance, lesion  # noqa: F401
    from .measure.depth import (BranchVariance, EffectiveDepth, branch_variance,  # noqa: F401
                                effective_depth)
    from .measure.importance import (AngularDistance, BlockInfluence,  # noqa: F401
                                     angular_distance, block_influence)
    from .measure.influence_cost import InfluenceVsDeletion, influence_vs_deletion  # noqa: F401
    from .measure.lesion import LesionResult  # noqa: F401
    from .measure.hessian import Hessian, hessian  # noqa: F401
    from .measure.jacobian_spectra import JacobianSpectra, block_jacobian_spectra  # noqa: F401
    from .measure.path_gradients import PathGradients, path_gradients  # noqa: F401
    from .measure.signal_propagation import SignalPropagation, signal_propagation  # noqa: F401
    from .measure.singularities import Singularities, singularities  # noqa: F401
    from . import zoo  # noqa: F401
    from .models import train_text, transformer  # noqa: F401
    from .zoo import user_model  # noqa: F401
    from .models.checkpoints import (load, load_state_dict, load_weights,  # noqa: F401
                                     save_checkpoint)
    from .models.cifar import cifar_resnet  # noqa: F401
    from .models.train_text import train_lm  # noqa: F401
    from .models.transformer import gpt  # noqa: F401
    from .report import plots  # noqa: F401
    from .view import Block, ResidualView, wrap  # noqa: F401


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _MODULES:
        value = import_module(f".{_MODULES[name]}", __name__)
    else:
        raise AttributeError(f"module 'pathens' has no attribute {name!r}")
    globals()[name] = value  # import once
    return value


def __dir__():
    return __all__


class _PublicModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import pathens.lesion` (a public module's old name) gives the module where it lives
    now, the same object under both names."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, short = fullname.partition(".")
        if head == __name__ and _MODULES.get(short, short) != short:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return import_module(f".{_MODULES[spec.name.partition('.')[2]]}", __name__)

    def exec_module(self, module):
        pass  # executed already, under its own name


sys.meta_path.append(_PublicModules())
