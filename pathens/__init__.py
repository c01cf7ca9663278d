"""pathens: residual networks as ensembles of paths.

    view = pathens.wrap(model)                      # stem -> blocks -> head, checked on a probe
    pg = pathens.path_gradients(view, x, y)         # gradient magnitude by path length, exact
    pathens.paths.bn_variance_distribution(view.num_blocks)

Names are imported on first use (PEP 562), so that `import pathens.paths` (numpy only) and
`pathens --help` do not pay for torch.
"""
from importlib import import_module

from .version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "BlockParts": "adapters", "ModelParts": "adapters", "register_block": "adapters",
    "register_model": "adapters",
    "load": "checkpoints", "load_state_dict": "checkpoints", "load_weights": "checkpoints",
    "save_checkpoint": "checkpoints",
    "BranchVariance": "depth", "EffectiveDepth": "depth", "branch_variance": "depth",
    "effective_depth": "depth",
    "CheckpointError": "errors", "PathensError": "errors", "WrapError": "errors",
    "PathGradients": "gradients", "path_gradients": "gradients",
    "LesionResult": "lesion",
    "cifar_resnet": "models",
    "Block": "view", "ResidualView": "view", "wrap": "view",
    "Analysis": "analysis", "analyze": "analysis",
    "gpt": "transformer", "load_corpus": "text", "train_lm": "train_text",
    "block_influence": "importance", "angular_distance": "importance",
    "BlockInfluence": "importance", "AngularDistance": "importance",
    "influence_vs_deletion": "influence_cost", "InfluenceVsDeletion": "influence_cost",
    "signal_propagation": "signal", "SignalPropagation": "signal",
    "block_jacobian_spectra": "jacobian", "JacobianSpectra": "jacobian",
}
_MODULES = ("lesion", "paths", "report", "plots", "data", "models", "losses", "imagefolder",
            "distributed", "text", "transformer", "train_text", "importance", "zoo",
            "user_model", "signal", "jacobian")

__all__ = sorted(_EXPORTS) + list(_MODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _MODULES:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'pathens' has no attribute {name!r}")
    globals()[name] = value  # import once
    return value


def __dir__():
    return __all__
