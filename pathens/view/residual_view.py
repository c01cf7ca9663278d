"""The view: a residual network as stem -> blocks -> head, each block split into its parts.

`wrap(model)` finds the model's stem, the modules holding its residual blocks and its head
(a model adapter names them; otherwise torch.fx traces the model, the block modules kept as
leaves, and cuts the graph), splits every module into the blocks it holds with its block
adapter (one for a ResNet block, two for a transformer layer: attention, then MLP), each
`post(shortcut(x) + scale * branch(x))`, and proves on a probe input that the view recomposes
the model's output, naming the part at fault if not (proof.py).

Every analysis in pathens runs the view, never the model's own forward:
lesion = run with some branches off, reordering = run with a permutation, a single path's
gradient = run with detach masks, the exact decomposition = a backward sweep over `blocks`.
The residual stream h entering block 0 is what the stem returns: (N, C, H, W) for a CNN,
(N, T, d) for a transformer; ctx (None, or a dict such as an attention mask) rides along for
the blocks whose branch needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import checks
from .block import Block
from ..adapters import ModelParts, find_adapter, find_model_adapter, split_block
from ..errors import PathensError, WrapError
from ..data.inputs import main_tensor
from ..data.losses import get_loss
from ..models.modes import eval_mode

# What a lesion deletes or moves as one, and what Block Influence scores (ResidualView.units).
UNITS = ("block", "layer")


@dataclass(frozen=True)
class Unit:
    """One unit of a view: a block, or a layer (a module with all the blocks it holds).

    name:   the block's name ("layer2.0", "transformer.h.3.attn"), or the module's for a layer
            ("transformer.h.3"; a one-block module's layer is named as its block).
    blocks: the view's block indices it holds, in order: (i,) for a block.
    """

    name: str
    blocks: tuple


class ResidualView(nn.Module):
    """A residual network seen as stem -> blocks -> head. Build it with `pathens.wrap`.

    view(x) reproduces model(x)'s logits; view.run(x, deleted=..., order=..., path=...) runs
    variants. The view shares the model's parameters and buffers (nothing is copied).
    loss: the loss analyses use unless told otherwise ("classification" or "next_token").
    """

    def __init__(self, model: nn.Module, stem, blocks: list[Block], head, *,
                 input_shape: tuple, num_outputs: int, loss: str = "classification",
                 vocab_size: Optional[int] = None, max_length: Optional[int] = None,
                 source: str = "torch.fx"):
        super().__init__()
        self.model = model
        self.stem_fn, self.head_fn = stem, head  # nn.Modules (fx graphs) are registered here
        self.blocks: list[Block] = blocks
        self.input_shape = input_shape  # per-sample shape of the probe input, e.g. (3, 32, 32)
        self.num_outputs = num_outputs  # classes, or the vocabulary of a language model
        self.loss = loss
        self.vocab_size, self.max_length = vocab_size, max_length
        self.source = source  # how stem and head were found: "torch.fx" or a model adapter
        # every module of the model as wrapped (the objects, held: an id could be reused):
        # stem, blocks and head hold these, so a module replaced since is one the view no
        # longer runs (check_current)
        self._wrapped = tuple(model.named_modules())
        self.probe = None  # the batch wrap proved the view on (pruned() checks on it too)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_classes(self) -> int:
        return self.num_outputs

    @property
    def residual(self) -> bool:
        """True when every block has a shortcut (always, unless wrapped with allow_plain)."""
        return all(b.residual for b in self.blocks)

    @property
    def param(self) -> torch.Tensor:
        return next(self.model.parameters())

    @property
    def layers(self) -> list[list[int]]:
        """Block indices grouped by the module holding them: [[0, 1], [2, 3], ...] for a
        transformer (attention and MLP of each layer), [[0], [1], ...] for a ResNet."""
        groups: dict[int, list[int]] = {}
        for b in self.blocks:
            groups.setdefault(b.layer, []).append(b.index)
        return list(groups.values())

    def check_current(self) -> None:
        """Refuse (one line, naming it) when a module of the model was replaced or removed
        since wrap (`model.fc = nn.Linear(...)`, `model.h[0] = ...`): the view would still run
        the old one and answer for a model that no longer exists. Every pass over the data
        starts with embed(), which calls it; so does wrap(view). Modules added since are not
        seen: the view was proven without them."""
        now = dict(self.model.named_modules())
        for name, module in self._wrapped:
            if now.get(name) is not module:
                what = f"is now a {type(now[name]).__name__}" if name in now else "was removed"
                raise PathensError(
                    f"the model changed after it was wrapped: {name or 'the model'} {what} (a "
                    f"{type(module).__name__} when wrapped); the view would still run the old "
                    f"module: wrap the model again (view = pathens.wrap(model))")

    def units(self, unit: str = "block") -> list[Unit]:
        """The view's units, in order: each block ("block"; a transformer's attention and MLP
        sublayers apart), or each layer ("layer": the module holding blocks, with all of them;
        a ResNet's layers are its blocks). Lesions delete and move units; Block Influence
        scores them; results keep them (LesionResult.layers, BlockInfluence.names/blocks)."""
        checks.choice("unit", unit, UNITS)
        if unit == "block":
            return [Unit(b.name, (b.index,)) for b in self.blocks]
        return [Unit(_module_name(self.blocks, group), tuple(group)) for group in self.layers]

    def embed(self, inputs) -> tuple:
        """(h, ctx): the residual stream entering block 0 and the context its blocks need."""
        self.check_current()
        out = self.stem_fn(inputs)
        return out if isinstance(out, tuple) else (out, None)

    def stem(self, inputs) -> torch.Tensor:
        """The residual stream entering block 0: (N, *in_shape of block 0)."""
        return self.embed(inputs)[0]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_fn(h)

    def forward(self, inputs) -> torch.Tensor:
        return self.run(inputs)

    @property
    def branch_counts(self) -> tuple:
        """Per block, its number of parallel branches b_i (1 for a ResNet block or a transformer
        sublayer, 2 for a Pythia / Phi layer): pathens.paths functions take this in place of n
        (prod(b_i + 1) paths)."""
        return tuple(b.num_branches for b in self.blocks)

    def run(self, inputs, deleted: Sequence = (), order: Optional[Sequence[int]] = None,
            path=None, routes=None) -> torch.Tensor:
        """Logits of the network with some branches deleted and/or the blocks reordered.

        deleted: blocks whose branch is removed (block i then computes post_i(shortcut_i(x)),
                 as in Veit et al.'s lesion study): indices, block names ("h.3.attn") or module
                 names ("h.3": every block of that module). One of a block's parallel branches:
                 its name ("gpt_neox.layers.3.attn") or a pair (block index, branch index or
                 name), e.g. (3, "attn") or (3, 0); the block then keeps its other branches.
        order:   a permutation of range(num_blocks): position p runs block order[p]; blocks may
                 only move to a position of the same input and output shape.
        path:    a bool mask over blocks (or a set of indices): the backward pass then follows
                 the branch of the blocks in the path and the shortcut of the others, so that
                 autograd returns that single path's gradient. Values are unchanged.
        routes:  the same for views with parallel branches: (num_blocks,) ints, 0 = the
                 shortcut, j = branch j (1-based) of that block, as pathens.paths gives them
                 for view.branch_counts.
        """
        h, ctx = self.embed(inputs)
        return self.run_from(h, 0, deleted=deleted, order=order, path=path, ctx=ctx,
                             routes=routes)

    def run_from(self, h: torch.Tensor, start: int = 0, deleted: Sequence = (),
                 order: Optional[Sequence[int]] = None, path=None, ctx=None,
                 routes=None) -> torch.Tensor:
        """Logits from the activation `h` entering position `start` (0: the first block's
        input, i.e. the stem's output); ctx: what embed() returned with it; the other
        arguments are those of `run`."""
        order = self.check_order(order)
        whole, some = set(), {}  # blocks deleted whole; {block: its deleted branches}
        for d in self.deletions(deleted, "deleted"):
            if isinstance(d, tuple):
                some.setdefault(d[0], set()).add(d[1])
            else:
                whole.add(d)
        for i in whole:
            if not self.blocks[i].deletable:
                b = self.blocks[i]
                raise PathensError(f"deleted: block {i} ({b.name}) is a plain layer that changes "
                                   f"the shape {b.in_shape} -> {b.out_shape}; it cannot be deleted")
        if path is not None and routes is not None:
            raise PathensError("give path= or routes=, not both")
        route = self.path_mask(path) if routes is None else self.check_routes(routes)
        if route is not None and not self.residual:
            raise PathensError("path= needs a residual network: this view has plain layers")
        for i in order[start:]:
            r = None if route is None else bool(route[i]) if route.dtype == bool else int(route[i])
            if i in some:  # some of a parallel block's branches deleted
                h = self.blocks[i](h, ctx, route=r, drop=some[i])
            else:
                h = self.blocks[i](h, ctx, keep_branch=i not in whole, route=r)
        return self.head(h)

    def pruned(self, deleted: Sequence, *, how: str = "remove", example_input=None,
               rtol: Optional[float] = None) -> nn.Module:
        """A deep copy of the model, of its own class, with the blocks of `deleted` removed or
        bypassed, checked on the probe to compute run(x, deleted=deleted) (prune.py)."""
        from .prune import pruned
        return pruned(self, deleted, wrap=wrap, how=how, example_input=example_input, rtol=rtol)

    # ---- argument checks shared by every analysis ----------------------------------------

    def indices(self, items: Sequence, what: str = "block") -> list[int]:
        """Block indices from indices, block names or module names (a module name stands for
        all the blocks it holds, e.g. both sublayers of a transformer layer)."""
        if isinstance(items, (str, int, np.integer)):
            items = [items]
        out = []
        for item in items:
            if isinstance(item, str):
                found = [b.index for b in self.blocks
                         if b.name == item or b.name.startswith(item + ".")]
                if not found:
                    near = ", ".join(b.name for b in self.blocks[:4])
                    raise PathensError(f"{what}: no block or module is named {item!r} (blocks "
                                       f"are named like {near}, ...)")
                out.extend(found)
            else:
                out.extend(self.check_indices([item], what))
        return out

    def deletions(self, items: Sequence, what: str = "deleted") -> tuple:
        """What `deleted` names, as a sorted tuple of block indices (the whole branch, or every
        branch, of the block) and (block, branch) index pairs (one of a block's parallel
        branches). items: indices, block or module names (as `indices`), branch names
        ("<block name>.<branch name>") and (block, branch) pairs, the block an index or name,
        the branch an index or name. A pair on a one-branch block, or pairs that name every
        branch of a block, stand for the block: one-branch views give what `indices` gives."""
        if isinstance(items, (str, int, np.integer)):
            items = [items]
        whole, some = set(), {}
        for item in items:
            if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[0], bool):
                i = self.indices([item[0]], what)
                if len(i) != 1:
                    raise PathensError(f"{what}: {item[0]!r} names a module of {len(i)} blocks; "
                                       f"name one block in a (block, branch) pair")
                some.setdefault(i[0], set()).add(self._branch_index(i[0], item[1], what))
            elif isinstance(item, str) and not self._names_block(item):
                found = [(b.index, j) for b in self.blocks if b.parts.branches
                         for j, name in enumerate(b.branch_names) if f"{b.name}.{name}" == item]
                if not found:
                    self.indices([item], what)  # the one-line error for an unknown name
                some.setdefault(found[0][0], set()).add(found[0][1])
            else:
                whole.update(self.indices([item], what))
        for i, js in some.items():
            if i not in whole and len(js) == self.blocks[i].num_branches:
                whole.add(i)  # every branch: the block
        pairs = [(i, j) for i, js in some.items() if i not in whole for j in js]
        return tuple(sorted([*whole, *pairs], key=lambda d: d if isinstance(d, tuple) else (d, -1)))

    def _names_block(self, name: str) -> bool:
        return any(b.name == name or b.name.startswith(name + ".") for b in self.blocks)

    def _branch_index(self, i: int, branch, what: str) -> int:
        block = self.blocks[i]
        names = block.branch_names
        if isinstance(branch, str):
            if branch not in names:
                raise PathensError(f"{what}: block {i} ({block.name}) has no branch named "
                                   f"{branch!r} (its branches: {', '.join(names)})")
            return names.index(branch)
        if isinstance(branch, bool) or not isinstance(branch, (int, np.integer)) or \
                not 0 <= branch < len(names):
            raise PathensError(f"{what}: block {i} ({block.name}) has {len(names)} branch"
                               f"{'es' if len(names) > 1 else ''}, numbered 0..{len(names) - 1} "
                               f"({', '.join(names)}); got {branch!r}")
        return int(branch)

    def check_routes(self, routes) -> np.ndarray:
        """routes= as a (num_blocks,) int array, entry i in 0..b_i (block i's branch count)."""
        r = np.asarray(routes)
        if r.shape != (self.num_blocks,) or not (r.dtype == bool or r.dtype.kind in "iu"):
            raise PathensError(f"routes must be {self.num_blocks} integers (0: the shortcut, j: "
                               f"branch j of that block), got shape {r.shape}, {r.dtype}")
        r = r.astype(np.int64)
        top = np.array(self.branch_counts)
        bad = np.flatnonzero((r < 0) | (r > top))
        if bad.size:
            i = int(bad[0])
            raise PathensError(f"routes: block {i} ({self.blocks[i].name}) has routes 0..{top[i]} "
                               f"(0: the shortcut), got {r[i]}")
        return r

    def check_indices(self, indices: Sequence[int], what: str = "block") -> list[int]:
        out = []
        for i in indices:
            if not checks.is_integer(i):
                raise PathensError(f"{what}: block indices must be integers, got {i!r}")
            if not 0 <= i < self.num_blocks:
                raise PathensError(f"{what}: block index {i} is out of range: the view has "
                                   f"{self.num_blocks} blocks, numbered 0..{self.num_blocks - 1}")
            out.append(int(i))
        return out

    def check_order(self, order: Optional[Sequence[int]]) -> list[int]:
        n = self.num_blocks
        if order is None:
            return list(range(n))
        order = self.check_indices(order, "order")
        if sorted(order) != list(range(n)):
            raise PathensError(f"order must be a permutation of 0..{n - 1} (each block exactly "
                               f"once), got {len(order)} indices")
        for pos, i in enumerate(order):
            here, there = self.blocks[pos], self.blocks[i]
            if (there.in_shape, there.out_shape) != (here.in_shape, here.out_shape):
                raise PathensError(
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
            raise PathensError(f"path must be a bool mask of length {self.num_blocks} "
                               f"or a set of block indices, got shape {mask.shape}")
        many = [i for i in np.flatnonzero(mask) if self.blocks[i].num_branches > 1]
        if many:  # which branch is ambiguous: say how to choose
            raise PathensError(f"path: block {many[0]} ({self.blocks[many[0]].name}) has "
                               f"{self.blocks[many[0]].num_branches} parallel branches; give the "
                               f"path as routes= (0: the shortcut, j: branch j of each block)")
        return mask

    def __repr__(self) -> str:
        down = [b.index for b in self.blocks if b.downsample]
        by_probe = sum(b.identity_by.startswith("the shortcut module returns") for b in self.blocks)
        modules = len(self.layers)
        held = f" in {modules} modules" if modules != self.num_blocks else ""
        probe = (f" ({by_probe} identity shortcuts found on the probe)" if by_probe else "")
        return (f"ResidualView({type(self.model).__name__}, {self.num_blocks} blocks{held}, "
                f"downsampling at {down}{probe}, input {self.input_shape}, "
                f"{self.num_outputs} outputs, loss {self.loss})")

    def _repr_html_(self) -> str:
        """The blocks as a table in Jupyter (display.py)."""
        from ..display import view_html
        return view_html(self)


# ---- wrap ---------------------------------------------------------------------------------

def _module_name(blocks: list, group: list) -> str:
    """The name of the module holding the blocks of `group` (one layer). proof.py names a block
    "<module>.<sub>" when its part is named (sub: Block.sublayer) or its module holds several
    (sub: its index there), else "<module>"; this undoes that."""
    first = blocks[group[0]]
    sub = first.sublayer
    if sub and first.name.endswith("." + sub):
        return first.name[:-len(sub) - 1]
    return first.name.rsplit(".", 1)[0] if len(group) > 1 else first.name


def wrap(model: nn.Module, *, example_input=None, rtol: Optional[float] = None,
         allow_plain: bool = False) -> ResidualView:
    """See `model` as stem -> residual blocks -> head and prove the view reproduces it.

    example_input: a batch to probe the model with: images, token ids, or a dict of tensors
        (model(**example_input)); cast to the model's device (and floating tensors to its
        dtype). Needed unless the model is of a family pathens can build a probe for
        (pathens, torchvision and timm CNNs and ViTs, Hugging Face models).
    rtol: tolerance of the check, relative to the largest value compared (default 1e-4 in
        float32, 1e-10 in float64).
    allow_plain: accept blocks without shortcuts (a plain, VGG-like network, e.g.
        cifar_resnet(..., skip=False)) for lesion experiments; path analyses refuse such views.

    Raises WrapError (a ValueError) naming the module at fault when the model has no
    registered residual blocks, its blocks do not form a chain, or the view's output differs.
    The check runs in eval mode (BatchNorm on running statistics, no dropout); the model's
    train/eval state is restored afterwards.
    """
    from . import proof, tracing
    from ..adapters import transitions

    if isinstance(model, ResidualView):
        model.check_current()
        return model
    if not isinstance(model, nn.Module):
        raise WrapError(f"pathens.wrap needs a torch.nn.Module, got {type(model).__name__}")
    param = next(model.parameters(), None)
    if param is None:
        raise WrapError(f"{type(model).__name__} has no parameters: nothing to analyse")
    if param.device.type == "meta":
        raise WrapError(f"{type(model).__name__} is on the meta device (shapes, no values): "
                        f"load its weights and move it to cpu or cuda first")
    adapter = find_model_adapter(model)
    if adapter is not None:
        parts = adapter(model)
        if not isinstance(parts, ModelParts):
            raise WrapError(f"the model adapter registered for {type(model).__name__} must return "
                            f"a pathens.ModelParts, got {type(parts).__name__}")
        source = f"model adapter for {type(model).__name__}"
    else:
        parts = tracing.fx_parts(model, _block_modules(model, example_input))
        source = "torch.fx"
    names = {id(m): n for n, m in model.named_modules()}
    modules = list(parts.blocks)
    if not modules:
        raise WrapError(f"the model adapter for {type(model).__name__} names no blocks")
    unknown = [m for m in modules if find_adapter(m) is None]
    if unknown:
        raise WrapError(f"{type(unknown[0]).__name__} ({names.get(id(unknown[0]), '?')}) has no "
                        f"block adapter: split it with pathens.register_block")
    split = [split_block(m) for m in modules]
    plain = [names.get(id(m), "?") for m, ps in zip(modules, split) if not all(p.residual for p in ps)]
    if plain and not allow_plain:
        raise WrapError(
            f"{type(model).__name__} has blocks without shortcuts ({', '.join(plain[:3])}"
            f"{'...' if len(plain) > 3 else ''}): a plain network has no residual paths to analyse "
            f"(wrap(model, allow_plain=True), or the command line's lesion and reorder, accept it "
            f"for lesion experiments)")
    if example_input is None and parts.example_input is not None:
        example_input = parts.example_input()
    probe = proof.check_probe(model, example_input, param)
    stem = parts.stem if parts.stem is not None else tracing.CapturedStem(model, modules[0])
    with eval_mode(model), torch.no_grad():
        record = proof.record(model, modules, probe)
        blocks = proof.build_blocks(model, modules, split, [names.get(id(m), "?") for m in modules],
                                    record, stem, probe, rtol, transitions.check(
                                        parts.transitions, len(modules), type(model).__name__))
        output = record.output
        view = ResidualView(model, stem, blocks, parts.head,
                            input_shape=tuple(main_tensor(probe).shape[1:]),
                            num_outputs=output.shape[-1], loss=parts.loss,
                            vocab_size=parts.vocab_size,
                            max_length=parts.max_length or _context(model, probe),
                            source=source)
        view.input_dtype = main_tensor(probe).dtype  # token ids or floats: check_batch holds to it
        get_loss(view.loss)  # a model adapter naming an unknown loss fails here, not later
        proof.check_head(view, record, probe, rtol)
        view.probe = probe
    return view


def _context(model: nn.Module, probe) -> Optional[int]:
    """A token model's context from its position embedding, when no adapter states it."""
    from .context_length import infer_context
    from ..data.inputs import is_tokens
    return infer_context(model) if is_tokens(probe) else None


def _block_modules(model: nn.Module, example_input=None) -> list:
    """The outermost modules of the model that a block adapter splits (not nested ones)."""
    found, inside = [], set()
    for name, m in model.named_modules():
        if m is model or any(name.startswith(p + ".") for p in inside):
            continue
        if find_adapter(m) is not None:
            found.append(m)
            inside.add(name)
    if not found:  # every family pathens supports, and whether the model adds at all
        from .no_blocks import message
        raise WrapError(message(model, example_input))
    return found



