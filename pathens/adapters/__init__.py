"""Adapters: how pathens sees a network as stem -> residual blocks -> head.

Two kinds, both public:

- A **block adapter** splits one module into the residual blocks it holds, each
  `post(shortcut(x) + scale * branch(x))` (a `BlockParts`). A CNN block is one; a transformer
  layer holds two (attention, then MLP), so its adapter returns a list:

      @pathens.register_block(MyBlock)
      def my_block_parts(block):
          return pathens.BlockParts(
              branch=lambda x: block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x))))),
              shortcut=block.downsample,   # None means the identity
              post=F.relu,                 # None means the identity (pre-activation, pre-LN)
              scale=None,                  # or a scalar tensor: SkipInit's alpha, ReZero, LayerScale
              layers=(block.conv1, block.bn1, F.relu, block.conv2, block.bn2))   # optional

  A block whose branches read the same input and add to the stream in parallel (Pythia's
  `x + attn(ln1(x)) + mlp(ln2(x))`, a multi-branch CNN cell) is ONE block with several
  branches, `post(shortcut(x) + sum_j a_j branch_j(x))`; a path then takes one of them:

          return pathens.BlockParts(branches=(
              pathens.Branch(lambda x, ctx: block.attn(block.ln1(x), **ctx), name="attn",
                             context=True),
              pathens.Branch(lambda x: block.mlp(block.ln2(x)), name="mlp")))

- A **model adapter** names a model's blocks and head (and, optionally, its stem) directly,
  for models torch.fx cannot trace (Hugging Face models, a GPT whose forward builds positions
  with torch.arange); without one, `wrap` traces the model with torch.fx and cuts the graph:

      @pathens.register_model(MyGPT)
      def my_gpt_parts(model):
          return pathens.ModelParts(blocks=list(model.layers),
                                    head=lambda h: model.lm_head(model.ln_f(h)),
                                    loss="next_token")

`pathens.wrap` then proves on a probe input that the parts recompose the model's own forward
(stem, every module, head), so a wrong adapter is caught with the module's name rather than
giving wrong science. Adapters for pathens's own models, torchvision, timm and Hugging Face
families live in this package, one file per family, and are loaded only when a model uses
that library (so importing pathens imports none of them).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

Fn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Branch:
    """One of a block's parallel branches (BlockParts.branches): `branch`, `scale`, `layers`,
    `name` and `context` mean for it what BlockParts's fields of those names mean for a block's
    single branch (the branch WITHOUT its scale; its listed layers; its name within the block,
    e.g. "attn" or "mlp": the branch is called "<block name>.<name>"; whether it takes (x, ctx))."""

    branch: Fn
    scale: Union[torch.Tensor, float, None] = None
    layers: Optional[tuple] = None
    name: str = ""
    context: bool = False


@dataclass(frozen=True)
class BlockParts:
    """One residual block as `post(shortcut(x) + scale * branch(x))`.

    branch:   the residual branch (x -> same shape as the shortcut's output), WITHOUT scale.
              With context=True it is called branch(x, ctx), ctx being the keyword arguments
              the model passes to the module (e.g. an attention mask; see ModelParts.stem).
    shortcut: the skip connection; None is the identity. A module that returns its input
              unchanged on the probe (an empty nn.Sequential) is found to be the identity by
              `wrap`; any other shortcut (zero-pad, projection) makes a *downsampling* block.
    post:     what follows the sum: F.relu for original ResNets, the LayerNorm of a post-LN
              transformer, None (identity) for pre-activation ResNets and pre-LN transformers.
              Must not work in place.
    scale:    multiplies the branch: None for 1, else a scalar or a per-channel tensor that
              broadcasts against the branch (SkipInit's alpha, ReZero, timm's LayerScale).
    residual: False for a layer with no shortcut at all (a plain, VGG-like layer): then the
              layer computes post(branch(x)).
    layers:   optional, the branch as the chain of layers it applies in order: then the
              path-gradient sweeps transpose it in closed form (BN folded into the
              convolutions), ~1.5x faster than autograd. Known kinds: nn.Conv2d (grouped too,
              zero padding), nn.BatchNorm2d in eval mode, ReLU (F.relu, torch.relu, nn.ReLU),
              nn.AvgPool2d, nn.Identity, nn.Dropout (eval), folded.BatchNormOf and
              folded.IdentityInEval, pathens's ZeroPadShortcut, nested nn.Sequential; a
              shortcut may be a folded.Chain of them. Only these exact classes: a subclass
              that overrides forward (timm's StdConv2d) is transposed by autograd. `wrap`
              checks that the chain computes `branch`.
    name:     the sublayer's name within its module when a module holds several blocks
              ("attn", "mlp"): the block is then called "<module name>.<name>".
    context:  True when branch takes (x, ctx).
    branches: instead of branch, scale, layers and context: two or more `Branch`es that read
              the same x and add to the stream in parallel, `post(shortcut(x) + sum_j a_j
              branch_j(x))` (Pythia, Phi, multi-branch CNN cells). A path goes through the
              shortcut or ONE of them, so the block has len(branches) + 1 routes. `branch` is
              then filled in with their scaled sum (context: whether any takes a context),
              which is what measurements that see a block as shortcut + one branch use.
    """

    branch: Optional[Fn] = None
    shortcut: Optional[Fn] = None
    post: Optional[Fn] = None
    scale: Union[torch.Tensor, float, None] = None
    residual: bool = True
    layers: Optional[tuple] = None
    name: str = ""
    context: bool = False
    branches: tuple = ()

    def __post_init__(self):
        from ..errors import WrapError
        if not self.branches:
            if self.branch is None:
                raise WrapError("BlockParts needs a branch (or branches=(pathens.Branch(...), "
                                "...) for parallel branches)")
            return
        branches = tuple(self.branches)
        if not all(isinstance(b, Branch) for b in branches) or len(branches) < 2:
            got = ", ".join(type(b).__name__ for b in branches) or "nothing"
            raise WrapError(f"BlockParts.branches must be two or more pathens.Branch (one "
                            f"branch: give branch=), got {len(branches)}: {got}")
        names = [b.name for b in branches if b.name]
        if len(set(names)) < len(names):
            raise WrapError(f"BlockParts.branches: the branch names {names} repeat a name")
        # `branch` may hold the sum made for the same branches (dataclasses.replace copies it)
        if (self.branch is not None and getattr(self.branch, "summed", None) is None) or \
                self.scale is not None or self.layers is not None or not self.residual:
            raise WrapError("BlockParts with branches= takes no branch, scale or layers of its "
                            "own (each Branch has them) and must be residual")
        object.__setattr__(self, "branches", branches)
        object.__setattr__(self, "branch", _summed(branches))
        object.__setattr__(self, "context", any(b.context for b in branches))


def _summed(branches: tuple) -> Fn:
    """x (, ctx) -> sum_j scale_j * branch_j(x): a parallel block seen as one branch."""
    def branch(x, ctx=None):
        total = None
        for b in branches:
            r = b.branch(x, {} if ctx is None else ctx) if b.context else b.branch(x)
            r = r if b.scale is None else b.scale * r
            total = r if total is None else total + r
        return total
    branch.summed = branches
    return branch


@dataclass(frozen=True)
class ModelParts:
    """A model as stem -> blocks -> head, for models torch.fx cannot trace.

    blocks:   the modules holding the residual blocks, in the order the model runs them (each
              split by its block adapter into one or more BlockParts); names are found in
              the model.
    head:     h -> output (logits): everything after the last block.
    stem:     inputs -> h, or -> (h, ctx) with ctx a dict of keyword arguments for
              `context=True` branches. None (default): the model's own forward, stopped where
              it calls the first block (captured with a hook), with ctx the other arguments
              it passes that block (attention masks, position embeddings): exactly what the
              model computes, whatever its version.
    example_input: () -> a probe input for `wrap` when the user gives none.
    loss:     the loss analyses use by default: "classification" ((N, C) logits, (N,) labels)
              or "next_token" ((N, T, V) logits of a language model, targets the token ids).
    vocab_size, max_length: for token-id inputs: checked before any work.
    transitions: {i: layer} for layers without a shortcut that the model runs between block
              module i-1 and block module i (a ConvNeXt or Swin stage's downsampling, an
              inverted residual that changes the width): module i's input is layer(output of
              module i-1). `wrap` checks that on the probe and folds the layer into the first
              block of module i, its shortcut and its branch alike (pathens/transitions.py).
    """

    blocks: Sequence[nn.Module]
    head: Fn
    stem: Optional[Callable[[Any], Any]] = None
    example_input: Optional[Callable[[], Any]] = None
    loss: str = "classification"
    vocab_size: Optional[int] = None
    max_length: Optional[int] = None
    info: dict = field(default_factory=dict)
    transitions: dict = field(default_factory=dict)


BlockAdapter = Callable[[nn.Module], Union[BlockParts, Sequence[BlockParts]]]
ModelAdapter = Callable[[nn.Module], ModelParts]
_BLOCKS: dict[type, BlockAdapter] = {}
_MODELS: dict[type, ModelAdapter] = {}


def _registrar(table: dict, what: str):
    def register(cls: type, adapter=None, *, builtin: bool = False):
        if not isinstance(cls, type) or not issubclass(cls, nn.Module):
            raise TypeError(f"{what} needs an nn.Module subclass, got {cls!r}")

        def decorate(fn):
            if builtin:  # a family file: never override what the user registered first
                table.setdefault(cls, fn)
            else:
                table[cls] = fn
            return fn

        return decorate if adapter is None else decorate(adapter)
    return register


register_block = _registrar(_BLOCKS, "register_block")
register_block.__doc__ = """Teach pathens a residual block class: `adapter(block) -> BlockParts`
(or a list of BlockParts, one per residual sublayer, in the order the module runs them).

Usable directly, `register_block(MyBlock, fn)`, or as a decorator, `@register_block(MyBlock)`.
Subclasses of a registered class use its adapter unless registered themselves."""

register_model = _registrar(_MODELS, "register_model")
register_model.__doc__ = """Teach pathens a model class: `adapter(model) -> ModelParts`, naming
its blocks and head (and optionally its stem). Usable directly or as a decorator; subclasses use
it unless registered themselves. Models without one are traced with torch.fx."""


# Families shipped with pathens, by the top-level package their classes come from: loaded the
# first time a module of that package is looked up (the library is then already imported).
_FAMILIES = {
    "pathens": ("pathens_models",),
    "torchvision": ("torchvision", "torchvision_vit", "torchvision_convnext", "torchvision_swin",
                    "torchvision_regnet", "torchvision_mobile", "torchvision_densenet"),
    "timm": ("timm_resnet", "timm_vit", "timm_convnext", "timm_swin", "timm_regnet",
             "timm_efficientnet", "timm_nfnet", "timm_densenet"),
    "transformers": ("hf_gpt2", "hf_bert", "hf_resnet", "hf_decoder", "hf_encoders", "hf_convnext",
                     "hf_swin"),
}
_loaded: set = set()
unavailable: dict[str, str] = {}  # family file -> why it could not load (e.g. an old library)


def _load_families(cls: type) -> None:
    for c in cls.__mro__:
        top = c.__module__.split(".", 1)[0]
        if top in _FAMILIES and top not in _loaded:
            _loaded.add(top)
            for name in _FAMILIES[top]:
                try:
                    importlib.import_module(f"{__name__}.{name}")
                except ImportError as err:  # this version of the library lacks the family
                    unavailable[name] = str(err)


def _find(table: dict, module: nn.Module):
    _load_families(type(module))
    for cls in type(module).__mro__:
        if cls in table:
            return cls, table[cls]
    return None


def find_adapter(module: nn.Module) -> Optional[BlockAdapter]:
    """The block adapter for this module's class (nearest registered class in its MRO), or None."""
    found = _find(_BLOCKS, module)
    return found[1] if found else None


def adapter_class(module: nn.Module) -> Optional[type]:
    """The registered class whose block adapter `module` uses (itself or a base class)."""
    found = _find(_BLOCKS, module)
    return found[0] if found else None


def model_adapter_class(cls: type) -> Optional[type]:
    """The registered class whose model adapter instances of `cls` would use, or None (such a
    model is traced with torch.fx)."""
    _load_families(cls)
    return next((c for c in cls.__mro__ if c in _MODELS), None)


def model_classes() -> list[type]:
    """The model classes with a model adapter now (families load when a model uses them)."""
    return list(_MODELS)


def find_model_adapter(model: nn.Module) -> Optional[ModelAdapter]:
    found = _find(_MODELS, model)
    return found[1] if found else None


def split_block(module: nn.Module) -> list[BlockParts]:
    """The residual blocks a module holds, as its adapter returns them (always a list)."""
    parts = find_adapter(module)(module)
    parts = [parts] if isinstance(parts, BlockParts) else list(parts)
    if not parts or not all(isinstance(p, BlockParts) for p in parts):
        from ..errors import WrapError
        raise WrapError(f"the adapter registered for {qualname(adapter_class(module))} must return "
                        f"a BlockParts or a non-empty list of them, got {parts!r}")
    return parts


def registered_classes() -> list[str]:
    """The block classes pathens knows now (families load when a model uses their library)."""
    return sorted(qualname(c) for c in _BLOCKS)


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def chain(layers):
    """The function that applies `layers` in order."""
    def branch(x):
        for f in layers:
            x = f(x)
        return x
    return branch
