"""Layers without a shortcut between residual blocks, folded into the block that follows.

Many networks run a layer with no shortcut between two residual blocks: the downsampling of a
ConvNeXt or Swin stage (LayerNorm + strided conv, patch merging), an inverted residual of
MobileNet / EfficientNet that changes the stride or the width (it has no skip). Such a layer T
feeding the block `y = post(S(x') + a R(x'))`, x' = T(x), is folded into it:

    y = post(S'(x) + a R'(x)),   S' = S o T,   R' = R o T,

which is the same function of x. T then lies on every path through that block, as a
projection shortcut does in a ResNet's downsampling block (the block becomes a downsampling
block of the view), and the view stays residual: path counts, the exact and sampled sweeps
and lesions are those of the residual blocks alone (2^n paths for n of them). Deleting the
block's branch leaves post(S(T(x))): the layer stays, as in the model with that branch removed.
A model adapter names such layers in ModelParts.transitions; `wrap` checks on the probe that
each computes the next block module's input from the previous one's output, then folds it.

Layers of this kind before the first residual block belong to the stem (the model's own
forward up to that block), those after the last one to the head.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

from torch import nn

from . import BlockParts, Branch, find_adapter, split_block
from .. import checks
from ..errors import WrapError
from .layers import Chain


def fold(transition: Callable, parts: BlockParts) -> BlockParts:
    """`parts` read from the output of the layer before it: x -> parts(transition(x)).

    The shortcut becomes Chain([transition, shortcut]) (a folded.Chain: the closed-form
    transposes expand it, linearize.branch_parameters leaves its parameters out), the branch
    branch(transition(x)) and the listed layers, if any, (transition, *layers). A plain layer
    (residual=False) gets the transition in its branch only."""
    t = transition
    shortcut = parts.shortcut
    if parts.residual:
        shortcut = Chain([t] if parts.shortcut is None else [t, parts.shortcut])
    if parts.branches:  # parallel branches: each reads transition(x)
        return replace(parts, branch=None, shortcut=shortcut,
                       branches=tuple(fold_branch(t, b) for b in parts.branches))
    folded = fold_branch(t, parts)
    return replace(parts, branch=folded.branch, shortcut=shortcut, layers=folded.layers)


def fold_branch(t: Callable, b):
    """A Branch (or a BlockParts's own branch) read from t(x): branch o t, layers (t, ...)."""
    if b.context:
        def branch(x, ctx):
            return b.branch(t(x), ctx)
    else:
        def branch(x):
            return b.branch(t(x))
    return Branch(branch, b.scale, None if b.layers is None else (t, *b.layers), b.name,
                  b.context)


def check(transitions, count: int, cls: str) -> dict:
    """ModelParts.transitions as a dict {module index: callable}, refused when an index is not
    that of a block module after the first (the stem covers what precedes the first)."""
    if not transitions:
        return {}
    if not hasattr(transitions, "items"):
        raise WrapError(f"the model adapter for {cls} must give transitions as a dict "
                        f"{{block module index: layer}}, got {type(transitions).__name__}")
    out = {}
    for i, t in transitions.items():
        if not checks.is_integer(i) or not 1 <= i < count:
            raise WrapError(f"the model adapter for {cls} names a transition before block module "
                            f"{i!r}: it must be an index in 1..{count - 1} (what precedes the "
                            f"first block module is the stem's)")
        if not callable(t):
            raise WrapError(f"the model adapter for {cls}: transition {i} is not callable "
                            f"({type(t).__name__})")
        out[int(i)] = t
    return out


@dataclass(frozen=True)
class ResidualChain:
    """A chain of layers split around the ones with a shortcut.

    blocks:      the layers with a shortcut, in order (the view's block modules).
    transitions: {i: the layers without one between blocks[i-1] and blocks[i]}, as a
                 folded.Chain (ModelParts.transitions): each as the layers its block adapter
                 lists where it has one (as_layers), so that a chain of convolutions, BN and
                 ReLU stays transposable in closed form.
    lead, between, tail: the layers without a shortcut before blocks[0] (in the stem),
                 between blocks (in the transitions) and after blocks[-1] (for the head:
                 run_tail runs them, then the model's own head follows).
    """

    blocks: list
    transitions: dict
    lead: list
    between: list
    tail: list

    def run_tail(self, h):
        """h (the last residual block's output) through the layers after it, for the head."""
        for layer in self.tail:
            h = layer(h)
        return h


def split_chain(layers: Sequence[nn.Module], has_shortcut: Callable[[nn.Module], bool],
                cls: str) -> ResidualChain:
    """Split `layers` (the model's blocks in the order its forward runs them, one chain) into
    the ones with a shortcut and the ones without, which are folded (see the module docstring).
    Raises WrapError when none has a shortcut."""
    blocks, transitions, pending, lead, between = [], {}, [], [], []
    for layer in layers:
        if not has_shortcut(layer):
            pending.append(layer)
            continue
        if not blocks:
            lead = pending
        elif pending:
            transitions[len(blocks)] = Chain([f for m in pending for f in as_layers(m)])
            between += pending
        blocks.append(layer)
        pending = []
    if not blocks:
        raise WrapError(f"{cls} has no residual blocks: none of its {len(layers)} blocks adds its "
                        f"input to its output (stride 1 and the same width, with the skip on), so "
                        f"it has no paths to analyse")
    return ResidualChain(blocks, transitions, lead, between, pending)


def as_layers(module) -> list:
    """A layer without a shortcut as the layers its block adapter lists (a plain BlockParts:
    residual=False, its `layers`, then its post), else [module] (its own forward). wrap
    checks the result on the probe like any transition."""
    if find_adapter(module) is None:
        return [module]
    parts = split_block(module)
    if len(parts) != 1:
        return [module]
    p = parts[0]
    if p.residual or p.layers is None or p.context or p.scale is not None:
        return [module]
    return [*p.layers, *([] if p.post is None else [p.post])]


class FoldedLayers(UserWarning):
    """A network some of whose blocks have no shortcut, folded into the residual blocks next
    to them (transitions.py): said at each wrap, with the counts."""


def note(cls: str, chain: ResidualChain, kinds: tuple, why: str) -> Optional[str]:
    """Say, as a FoldedLayers warning, how many of the model's blocks (the layers of classes
    `kinds`; a stem convolution is not one) are residual and where the others went; returns the
    message (None, and nothing said, when every block is residual)."""
    lead, between, tail = (sum(isinstance(m, kinds) for m in layers)
                           for layers in (chain.lead, chain.between, chain.tail))
    if not lead + between + tail:
        return None
    n = len(chain.blocks)
    where = [f"{k} {place}" for k, place in ((lead, "into the stem"), (
        between, "into the shortcut and branch of the residual block after them"),
        (tail, "into the head")) if k]
    msg = (f"{cls}: {n} of its {n + lead + between + tail} blocks are residual ({why}); the "
           f"{lead + between + tail} others have no shortcut and are folded, {', '.join(where)}: "
           f"the view has {n} residual blocks (2^{n} paths)")
    # note <- the family's split <- its model adapter <- wrap <- the caller of wrap
    warnings.warn(msg, FoldedLayers, stacklevel=5)
    return msg


def refuse_concatenating(model: nn.Module, layers: str):
    """The model adapter of a network whose layers concatenate instead of add (DenseNet): a
    WrapError that says so, and that allow_plain=True cannot help either."""
    raise WrapError(
        f"{type(model).__name__} has no residual blocks: its {layers} concatenate their input "
        f"with their output (torch.cat) instead of adding to it, so it has no residual stream and "
        f"no paths to analyse; nor can wrap(..., allow_plain=True) lesion it, since every such "
        f"layer widens the features all later layers read and none can be removed")
