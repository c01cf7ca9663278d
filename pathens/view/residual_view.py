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

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from .block import Block
from ..adapters import ModelParts, find_adapter, find_model_adapter, registered_classes, split_block
from ..errors import PathensError, WrapError
from ..data.inputs import main_tensor
from ..data.losses import get_loss
from ..models.modes import eval_mode



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

    def embed(self, inputs) -> tuple:
        """(h, ctx): the residual stream entering block 0 and the context its blocks need."""
        out = self.stem_fn(inputs)
        return out if isinstance(out, tuple) else (out, None)

    def stem(self, inputs) -> torch.Tensor:
        """The residual stream entering block 0: (N, *in_shape of block 0)."""
        return self.embed(inputs)[0]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_fn(h)

    def forward(self, inputs) -> torch.Tensor:
        return self.run(inputs)

    def run(self, inputs, deleted: Sequence = (), order: Optional[Sequence[int]] = None,
            path=None) -> torch.Tensor:
        """Logits of the network with some branches deleted and/or the blocks reordered.

        deleted: blocks whose branch is removed (block i then computes post_i(shortcut_i(x)),
                 as in Veit et al.'s lesion study): indices, block names ("h.3.attn") or module
                 names ("h.3": every block of that module).
        order:   a permutation of range(num_blocks): position p runs block order[p]; blocks may
                 only move to a position of the same input and output shape.
        path:    a bool mask over blocks (or a set of indices): the backward pass then follows
                 the branch of the blocks in the path and the shortcut of the others, so that
                 autograd returns that single path's gradient. Values are unchanged.
        """
        h, ctx = self.embed(inputs)
        return self.run_from(h, 0, deleted=deleted, order=order, path=path, ctx=ctx)

    def run_from(self, h: torch.Tensor, start: int = 0, deleted: Sequence = (),
                 order: Optional[Sequence[int]] = None, path=None, ctx=None) -> torch.Tensor:
        """Logits from the activation `h` entering position `start` (0: the first block's
        input, i.e. the stem's output); ctx: what embed() returned with it; the other
        arguments are those of `run`."""
        order = self.check_order(order)
        deleted = set(self.indices(deleted, "deleted"))
        for i in deleted:
            if not self.blocks[i].deletable:
                b = self.blocks[i]
                raise PathensError(f"deleted: block {i} ({b.name}) is a plain layer that changes "
                                   f"the shape {b.in_shape} -> {b.out_shape}; it cannot be deleted")
        route = self.path_mask(path)
        if route is not None and not self.residual:
            raise PathensError("path= needs a residual network: this view has plain layers")
        for i in order[start:]:
            h = self.blocks[i](h, ctx, keep_branch=i not in deleted,
                               route=None if route is None else bool(route[i]))
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

    def check_indices(self, indices: Sequence[int], what: str = "block") -> list[int]:
        out = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
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


# ---- wrap ---------------------------------------------------------------------------------

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
        parts = tracing.fx_parts(model, _block_modules(model))
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
                            vocab_size=parts.vocab_size, max_length=parts.max_length,
                            source=source)
        get_loss(view.loss)  # a model adapter naming an unknown loss fails here, not later
        proof.check_head(view, record, probe, rtol)
        view.probe = probe
    return view


def _block_modules(model: nn.Module) -> list:
    """The outermost modules of the model that a block adapter splits (not nested ones)."""
    found, inside = [], set()
    for name, m in model.named_modules():
        if m is model or any(name.startswith(p + ".") for p in inside):
            continue
        if find_adapter(m) is not None:
            found.append(m)
            inside.add(name)
    if not found:
        known = sorted({name.rsplit(".", 1)[-1] for name in registered_classes()})
        shown = ", ".join(known[:8]) + (f" and {len(known) - 8} more" if len(known) > 8 else "")
        raise WrapError(
            f"{type(model).__name__} has no residual blocks pathens knows ({shown}): register "
            f"your block class with pathens.register_block (and, if torch.fx cannot trace the "
            f"model, the model with pathens.register_model), e.g. in a file that the command "
            f"line loads with --model FILE.py:FUNCTION")
    return found



