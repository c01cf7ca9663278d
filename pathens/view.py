"""The view: a residual network as stem -> blocks -> head, each block split into its parts.

`wrap(model)` traces the model's forward with torch.fx (the residual blocks kept as leaves),
checks that the blocks form a chain, cuts the graph into a stem (everything before the first
block) and a head (everything after the last) and splits every block into
`post(shortcut(x) + scale * branch(x))` with its adapter (see adapters.py). It then proves,
on a probe input, that the view recomposes the model's output, naming the part at fault if not.

Every analysis in pathens runs the view, never the model's own forward:
lesion = run with some branches off, reordering = run with a permutation, a single path's
gradient = run with detach masks, the exact decomposition = a backward sweep over `blocks`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import fx, nn

from .adapters import BlockParts, chain, find_adapter, registered_classes
from .errors import WrapError
from .modes import eval_mode


@dataclass(frozen=True, eq=False)
class Block:
    """One residual block of a view.

    name:       the module path in the model, e.g. "layer2.0".
    downsample: True where the shortcut is not the identity (zero-pad or projection).
    in_shape, out_shape: per-sample shapes seen on the probe input, e.g. (16, 32, 32).
    """

    index: int
    name: str
    module: nn.Module
    parts: BlockParts
    in_shape: tuple
    out_shape: tuple

    @property
    def residual(self) -> bool:
        """False for a plain (VGG-like) layer with no shortcut (wrap(..., allow_plain=True))."""
        return self.parts.residual

    @property
    def downsample(self) -> bool:
        if not self.residual:
            return self.in_shape != self.out_shape
        return self.parts.shortcut is not None

    @property
    def deletable(self) -> bool:
        """A residual block always (its shortcut stays); a plain layer only if it keeps the
        shape (it is then replaced by the identity, as in Veit et al.'s plain-network lesion)."""
        return self.residual or self.in_shape == self.out_shape

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.parts.shortcut is None else self.parts.shortcut(x)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The branch times its scale."""
        r = self.parts.branch(x)
        return r if self.parts.scale is None else self.parts.scale * r

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.parts.post is None else self.parts.post(z)

    def __call__(self, x: torch.Tensor, *, keep_branch: bool = True, route: Optional[bool] = None):
        """Block output. keep_branch=False deletes the branch (lesion: post(shortcut(x))).

        route=True lets the gradient through the branch only, route=False through the shortcut
        only (the forward value is unchanged): one factor of a single path's gradient.
        """
        if not self.residual:  # a plain layer: no shortcut, no paths to route
            return self.post(self.branch(x)) if keep_branch else x
        s = self.shortcut(x)
        if not keep_branch:
            return self.post(s)
        r = self.branch(x)
        if route is True:
            s = s.detach()
        elif route is False:
            r = r.detach()
        return self.post(s + r)

    def __repr__(self) -> str:
        kind = "downsample" if self.downsample else "identity"
        return f"Block({self.index}, {self.name!r}, {kind}, {self.in_shape} -> {self.out_shape})"


class ResidualView(nn.Module):
    """A residual network seen as stem -> blocks -> head. Build it with `pathens.wrap`.

    view(x) reproduces model(x); view.run(x, deleted=..., order=..., path=...) runs variants.
    The view shares the model's parameters and buffers (nothing is copied).
    """

    def __init__(self, model: nn.Module, stem: nn.Module, blocks: list[Block], head: nn.Module,
                 input_shape: tuple, num_classes: int):
        super().__init__()
        self.model, self.stem, self.head = model, stem, head
        self.blocks: list[Block] = blocks
        self.input_shape = input_shape  # per-sample shape of the probe input, e.g. (3, 32, 32)
        self.num_classes = num_classes

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def residual(self) -> bool:
        """True when every block has a shortcut (always, unless wrapped with allow_plain)."""
        return all(b.residual for b in self.blocks)

    @property
    def param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def run(self, x: torch.Tensor, deleted: Sequence[int] = (), order: Optional[Sequence[int]] = None,
            path=None) -> torch.Tensor:
        """Logits of the network with some branches deleted and/or the blocks reordered.

        deleted: indices of blocks whose branch is removed (block i then computes
                 post_i(shortcut_i(x)), as in Veit et al.'s lesion study).
        order:   a permutation of range(num_blocks): position p runs block order[p]; blocks may
                 only move to a position of the same input and output shape.
        path:    a bool mask over blocks (or a set of indices): the backward pass then follows
                 the branch of the blocks in the path and the shortcut of the others, so that
                 autograd returns that single path's gradient. Values are unchanged.
        """
        return self.run_from(self.stem(x), 0, deleted=deleted, order=order, path=path)

    def run_from(self, h: torch.Tensor, start: int = 0, deleted: Sequence[int] = (),
                 order: Optional[Sequence[int]] = None, path=None) -> torch.Tensor:
        """Logits from the activation `h` entering position `start` (0: the first block's
        input, i.e. the stem's output); the other arguments are those of `run`."""
        order = self.check_order(order)
        deleted = set(self.check_indices(deleted, "deleted"))
        for i in deleted:
            if not self.blocks[i].deletable:
                b = self.blocks[i]
                raise ValueError(f"deleted: block {i} ({b.name}) is a plain layer that changes the "
                                 f"shape {b.in_shape} -> {b.out_shape}; it cannot be deleted")
        route = self.path_mask(path)
        if route is not None and not self.residual:
            raise ValueError("path= needs a residual network: this view has plain layers")
        for i in order[start:]:
            h = self.blocks[i](h, keep_branch=i not in deleted,
                               route=None if route is None else bool(route[i]))
        return self.head(h)

    # ---- argument checks shared by every analysis ----------------------------------------

    def check_indices(self, indices: Sequence[int], what: str = "block") -> list[int]:
        out = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise ValueError(f"{what}: block indices must be integers, got {i!r}")
            if not 0 <= i < self.num_blocks:
                raise ValueError(f"{what}: block index {i} is out of range: the view has "
                                 f"{self.num_blocks} blocks, numbered 0..{self.num_blocks - 1}")
            out.append(int(i))
        return out

    def check_order(self, order: Optional[Sequence[int]]) -> list[int]:
        n = self.num_blocks
        if order is None:
            return list(range(n))
        order = self.check_indices(order, "order")
        if sorted(order) != list(range(n)):
            raise ValueError(f"order must be a permutation of 0..{n - 1} (each block exactly once), "
                             f"got {len(order)} indices")
        for pos, i in enumerate(order):
            here, there = self.blocks[pos], self.blocks[i]
            if (there.in_shape, there.out_shape) != (here.in_shape, here.out_shape):
                raise ValueError(
                    f"order puts block {i} ({there.name}, {there.in_shape} -> {there.out_shape}) at "
                    f"position {pos} ({here.name}, {here.in_shape} -> {here.out_shape}): only blocks "
                    f"of the same shape can be swapped")
        return order

    def path_mask(self, path) -> Optional[np.ndarray]:
        if path is None:
            return None
        mask = np.asarray(path)
        if mask.dtype != bool:  # a collection of block indices
            mask = np.zeros(self.num_blocks, bool)
            mask[self.check_indices(list(path), "path")] = True
        if mask.shape != (self.num_blocks,):
            raise ValueError(f"path must be a bool mask of length {self.num_blocks} "
                             f"or a set of block indices, got shape {mask.shape}")
        return mask

    def __repr__(self) -> str:
        down = [b.index for b in self.blocks if b.downsample]
        return (f"ResidualView({type(self.model).__name__}, {self.num_blocks} blocks, "
                f"downsampling at {down}, input {self.input_shape}, {self.num_classes} classes)")


# ---- wrap ---------------------------------------------------------------------------------

def wrap(model: nn.Module, *, example_input: Optional[torch.Tensor] = None,
         rtol: Optional[float] = None, allow_plain: bool = False) -> ResidualView:
    """See `model` as stem -> residual blocks -> head and prove the view reproduces it.

    example_input: a batch to probe the model with (needed unless the model is a pathens model
        or a torchvision ResNet, for which a probe is built in the model's dtype and device).
    rtol: tolerance of the check, relative to the largest logit (default 1e-4 in float32,
        1e-10 in float64).
    allow_plain: accept blocks without shortcuts (a plain, VGG-like network, e.g.
        cifar_resnet(..., skip=False)) for lesion experiments; path analyses refuse such views.

    Raises WrapError (a ValueError) naming the module at fault when the model has no
    registered residual blocks, its blocks do not form a chain, or the view's output differs.
    The check runs in eval mode (BatchNorm on running statistics); the model's train/eval
    state is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise WrapError(f"pathens.wrap needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, ResidualView):
        return model
    block_modules = [m for m in model.modules() if m is not model and find_adapter(m) is not None]
    if not block_modules:
        raise WrapError(
            f"{type(model).__name__} has no residual blocks pathens knows (it knows "
            f"{', '.join(registered_classes())}); register your block class with "
            f"pathens.register_block")
    graph_module = _trace(model, set(map(type, block_modules)))
    stem, block_nodes, head = _split(graph_module, model)
    blocks_found = [graph_module.get_submodule(node.target) for node in block_nodes]
    parts = [find_adapter(m)(m) for m in blocks_found]
    plain = [str(node.target) for node, p in zip(block_nodes, parts) if not p.residual]
    if plain and not allow_plain:
        raise WrapError(
            f"{type(model).__name__} has blocks without shortcuts ({', '.join(plain[:3])}"
            f"{'...' if len(plain) > 3 else ''}): a plain network has no residual paths to analyse "
            f"(wrap(model, allow_plain=True) accepts it for lesion experiments)")
    probe = example_input if example_input is not None else _default_probe(model)
    with eval_mode(model), torch.no_grad():
        records = _record_blocks(model, blocks_found, probe)
        blocks = [Block(i, str(node.target), m, p, tuple(records[m][0].shape[1:]),
                        tuple(records[m][1].shape[1:]))
                  for i, (node, m, p) in enumerate(zip(block_nodes, blocks_found, parts))]
        expected = records["output"]
        if not torch.is_tensor(expected) or expected.ndim != 2:
            raise WrapError(f"{type(model).__name__} returns {_describe(expected)}; pathens "
                            f"needs a (batch, classes) tensor of logits")
        view = ResidualView(model, stem, blocks, head, tuple(probe.shape[1:]), expected.shape[1])
        _check_view(view, records, probe, rtol)
    return view


class _BlockTracer(fx.Tracer):
    """Traces through everything but the residual blocks, which stay single calls."""

    def __init__(self, block_types: set):
        super().__init__()
        self.block_types = tuple(block_types)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.block_types) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, block_types: set) -> fx.GraphModule:
    try:
        graph = _BlockTracer(block_types).trace(model)
    except Exception as err:  # fx raises many kinds; all mean "forward is not traceable"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WrapError(f"cannot trace {type(model).__name__}.forward with torch.fx ({first}); "
                        f"pathens needs a forward without Python control flow on tensor values "
                        f"outside the residual blocks") from None
    return fx.GraphModule(model, graph)


def _split(gm: fx.GraphModule, model: nn.Module):
    """Cut the traced graph into (stem GraphModule, block call nodes in order, head GraphModule)."""
    is_block = lambda n: n.op == "call_module" and find_adapter(gm.get_submodule(n.target)) is not None
    nodes = list(gm.graph.nodes)
    block_nodes = [n for n in nodes if is_block(n)]
    targets = [n.target for n in block_nodes]
    reused = {t for t in targets if targets.count(t) > 1}
    if reused:
        raise WrapError(f"block {sorted(reused)[0]} is called more than once in "
                        f"{type(model).__name__}.forward; pathens needs each block used once")
    for prev, node in zip(block_nodes, block_nodes[1:]):
        if node.args != (prev,) or node.kwargs or len(prev.users) != 1:
            raise WrapError(
                f"blocks {prev.target} and {node.target} are not chained: the output of "
                f"{prev.target} must feed {node.target} directly and nothing else "
                f"(found something between or beside them)")
    first, last = block_nodes[0], block_nodes[-1]
    if len(first.args) != 1 or first.kwargs or not isinstance(first.args[0], fx.Node):
        raise WrapError(f"block {first.target} must be called with a single tensor")

    # Stem: every node the first block's input depends on; it takes the model's inputs.
    stem_graph, env = fx.Graph(), {}
    needed = _ancestors(first.args[0])
    for n in nodes:
        if n.op == "placeholder" or n in needed:
            env[n] = stem_graph.node_copy(n, lambda a: env[a])
    stem_graph.output(env[first.args[0]])

    # Head: every node after the last block; it may use only the last block's output.
    head_graph = fx.Graph()
    env = {last: head_graph.placeholder("h")}
    for n in nodes[nodes.index(last) + 1:]:
        missing = [a for a in n.all_input_nodes if a not in env]
        if missing:
            raise WrapError(f"the head of {type(model).__name__} uses {missing[0].name}, computed "
                            f"before the last block {last.target}; pathens needs the head to "
                            f"depend on the last block's output only")
        if n.op == "output":
            head_graph.output(fx.map_arg(n.args[0], lambda a: env[a]))
        else:
            env[n] = head_graph.node_copy(n, lambda a: env[a])
    return fx.GraphModule(gm, stem_graph), block_nodes, fx.GraphModule(gm, head_graph)


def _ancestors(node: fx.Node) -> set:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _default_probe(model: nn.Module) -> torch.Tensor:
    """A probe batch for the families pathens knows; otherwise the user must pass one."""
    p = next(model.parameters(), None)
    if p is None:
        raise WrapError(f"{type(model).__name__} has no parameters; pass example_input=")
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "in_channels" in config:  # pathens CIFAR ResNet
        shape = (2, config["in_channels"], 32, 32)
    elif type(model).__module__.startswith("torchvision.models") and hasattr(model, "conv1"):
        shape = (2, model.conv1.in_channels, 64, 64)
    else:
        raise WrapError(f"pathens cannot guess an input for {type(model).__name__}; pass "
                        f"example_input=<a batch of inputs> to pathens.wrap")
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=p.dtype).to(p.device)


def _record_blocks(model: nn.Module, blocks: list, probe: torch.Tensor) -> dict:
    """Run the model once, recording each block's (input, output) and the final output."""
    records, handles = {}, []
    for m in blocks:
        handles.append(m.register_forward_hook(
            lambda mod, args, out: records.__setitem__(mod, (args[0], out))))
    try:
        records["output"] = model(probe)
    except Exception as err:
        raise WrapError(f"{type(model).__name__} fails on the probe input of shape "
                        f"{tuple(probe.shape)} ({str(err).splitlines()[0] if str(err) else err!r}); "
                        f"pass a valid example_input=") from None
    finally:
        for h in handles:
            h.remove()
    return records


def _check_view(view: ResidualView, records: dict, probe: torch.Tensor, rtol: Optional[float]):
    """Compare stem, every block and the head with what the model computed; name the culprit."""
    if rtol is None:
        rtol = 1e-10 if probe.dtype == torch.float64 else 1e-4

    def close(a, b):  # NaN/inf where the model has them too count as reproduced
        if a.shape != b.shape:
            return False
        finite = b[torch.isfinite(b)]
        scale = 1 + (finite.abs().max() if finite.numel() else 0)
        return torch.allclose(a, b, rtol=0, atol=float(rtol * scale), equal_nan=True)

    if not close(view.stem(probe), records[view.blocks[0].module][0]):
        raise WrapError(f"the stem of {type(view.model).__name__} (everything before "
                        f"{view.blocks[0].name}) does not reproduce the model on the probe")
    for b in view.blocks:
        x, y = records[b.module]
        if not close(b(x), y):
            raise WrapError(
                f"block {b.name} ({type(b.module).__name__}) is not post(shortcut(x) + scale * "
                f"branch(x)) as its adapter says; fix the adapter registered for "
                f"{type(b.module).__name__}")
        layers = b.parts.layers
        if layers is not None and not close(chain(layers)(x), b.parts.branch(x)):
            raise WrapError(
                f"block {b.name} ({type(b.module).__name__}): the layers its adapter lists do "
                f"not compute its branch; fix `layers` in the adapter registered for "
                f"{type(b.module).__name__} (or leave it None)")
    if not close(view.head(records[view.blocks[-1].module][1]), records["output"]):
        raise WrapError(f"the head of {type(view.model).__name__} (everything after "
                        f"{view.blocks[-1].name}) does not reproduce the model on the probe")
    if not close(view(probe), records["output"]):  # the whole chain, composed
        raise WrapError(f"the view of {type(view.model).__name__} does not reproduce its output")


def _describe(x) -> str:
    return f"a tensor of shape {tuple(x.shape)}" if torch.is_tensor(x) else f"a {type(x).__name__}"
