"""A lesion exported: the model itself, of its own class, with some blocks removed or bypassed.

`view.pruned(deleted)` returns a deep copy of `view.model` that computes what
`view.run(x, deleted=deleted)` computes, so that a pruned network can be saved, loaded, served
and fine-tuned without pathens (ShortGPT, Gromov et al. and their peers remove whole
transformer layers this way). Each deleted block leaves `post(shortcut(x))`, as in the lesion;
how the copy gets there depends on what the module holding the block is:

    removed    every block of the module is deleted and the module then computes the
               identity (residual blocks, identity shortcut, no post: a pre-norm transformer
               layer, a pre-activation or ConvNeXt block): the module leaves its nn.ModuleList
               or nn.Sequential. For Hugging Face models the config follows
               (num_hidden_layers, per-layer lists such as layer_types) and every kept layer's
               `layer_idx` is renumbered, so that the KV cache, generation, save_pretrained and
               from_pretrained work as for any model of the class.
    bypassed   a one-block module whose shortcut and post are modules (or ReLU) and that is
               called on the stream alone (a ResNet's BasicBlock / Bottleneck, downsampling
               ones too): replaced by `Bypass(shortcut, post)`, its branch's parameters gone;
               removed instead where that Bypass returns its input unchanged on the probe (a
               ReLU after the sum on a stream a ReLU before made non-negative: the identity,
               as wrap finds identity shortcuts). A Bypass is a plain layer of a view (wrap
               the pruned model with allow_plain=True where one stays).
    zeroed     anything else (the attention or the MLP sublayer of a transformer layer whose
               other sublayer stays, a post-LN layer): the branch is made to return exactly
               zero by zeroing its scale when that is a parameter (SkipInit's alpha,
               LayerScale), else the parameters of the last layer of the branch that then gives
               zero (o_proj / down_proj of a Llama, fc2 of OPT, the last BN of a ResNet
               branch), found by running the branch on the probe. The class and every
               parameter name stay, so every loader reproduces it; the sublayer still runs
               (its compute is not saved: the model's own class has no switch to skip it).

how="zero" zeroes every deleted block (the structure and the state dict keys unchanged: a
pathens checkpoint of the copy rebuilds from its architecture).

The copy is then run on the probe (the batch wrap proved the view on, or example_input=) and
must reproduce the view run with those blocks deleted (relative 1e-12 in float64, 1e-5 in
lower precision, of the largest logit), or pruned() refuses with the largest difference. It
costs a second copy of the model's parameters while it runs.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn

from ..adapters import BlockParts, register_block, split_block
from ..adapters.layers import RELU_FUNCTIONS
from ..data.inputs import call_model, logits_of, to_model
from ..errors import PathensError, WrapError
from ..models.modes import eval_mode

HOWS = ("remove", "zero")
_INDEX_NAMES = ("layer_idx", "layer_id", "layer_index")  # a layer's own position (HF caches)
# Hugging Face config lists with one entry per layer (besides lists of strings such as
# layer_types), and lists of layer indices
_PER_LAYER = ("no_rope_layers", "layer_types", "mlp_layer_types")
_LAYER_INDICES = ("mlp_only_layers",)


class Bypass(nn.Module):
    """What a deleted one-block module leaves: post(shortcut(x)) (shortcut and post None: the
    identity). The shortcut's parameters (a projection, its BN) stay, the branch's are gone."""

    def __init__(self, shortcut: Optional[nn.Module] = None, post=None):
        super().__init__()
        self.shortcut = shortcut
        self.post = post if isinstance(post, nn.Module) else None
        self.post_fn = None if isinstance(post, nn.Module) else post  # F.relu: not a module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.shortcut is None else self.shortcut(x)
        if self.post is not None:
            return self.post(s)
        return s if self.post_fn is None else self.post_fn(s)


def pruned(view, deleted: Sequence, *, wrap, how: str = "remove", example_input=None,
           rtol: Optional[float] = None) -> nn.Module:
    """A deep copy of view.model, of its own class, computing view.run(x, deleted=deleted).
    Called as view.pruned(deleted, ...) (wrap: pathens.wrap, which this module, below
    residual_view.py, does not import).

    deleted: block indices, block names ("model.layers.3.mlp") or module names
        ("model.layers.3": all its blocks), as for view.run.
    how: "remove" (default: whole modules removed or bypassed where they can be, sublayers
        zeroed) or "zero" (every deleted branch zeroed; the structure unchanged).
    example_input: the batch to check the copy on (default: the probe wrap used).
    rtol: the check's tolerance relative to the largest logit (default 1e-12 in float64,
        1e-5 otherwise).
    """
    if how not in HOWS:
        raise PathensError(f"how must be 'remove' or 'zero', got {how!r}")
    idx = sorted(set(view.indices(deleted, "deleted")))
    for i in idx:
        b = view.blocks[i]
        if not b.deletable:
            raise PathensError(f"pruned: block {i} ({b.name}) is a plain layer that changes the "
                               f"shape {b.in_shape} -> {b.out_shape}; it cannot be deleted")
    probe = example_input if example_input is not None else getattr(view, "probe", None)
    if probe is None:
        raise PathensError("pruned: the view keeps no probe batch; pass example_input=<a batch "
                           "of inputs> to check the pruned model on")
    probe = to_model(probe, view.param)
    model = copy.deepcopy(view.model)
    with eval_mode(model), torch.no_grad():
        _prune(view, model, idx, how, probe, wrap)
    _check(view, model, idx, probe, rtol)
    return model


# ---- what to do with each module ---------------------------------------------------------------

def _prune(view, model: nn.Module, idx: list, how: str, probe, wrap) -> None:
    from .proof import record
    try:
        # the copy's own blocks (their parts run its modules)
        twin = wrap(model, example_input=probe, allow_plain=not view.residual)
    except WrapError as err:
        raise PathensError(f"pruned: the copy of the model cannot be wrapped ({err})") from None
    if [b.name for b in twin.blocks] != [b.name for b in view.blocks]:
        raise PathensError("pruned: the copy of the model splits into other blocks than the view: "
                           "wrap the model again and prune that view")
    inputs, ctx = _block_inputs(twin, probe)
    names = {id(m): n for n, m in model.named_modules()}
    own = record(model, [twin.blocks[layer[0]].module for layer in twin.layers], probe).inputs
    remove, gone = [], set(idx)
    for layer in twin.layers:
        blocks = [twin.blocks[i] for i in layer]
        dead = [b for b in blocks if b.index in gone]
        if not dead:
            continue
        module = blocks[0].module
        whole = len(dead) == len(blocks)
        if how == "remove" and whole and _identity_when_deleted(module, own[id(module)]) and \
                _container(model, names[id(module)]) is not None:
            remove.append(names[id(module)])
        elif how == "remove" and whole and len(blocks) == 1 and \
                _bypass(model, names[id(module)], own[id(module)], remove):
            pass
        else:
            for b in dead:
                _zero(b, inputs[b.index], ctx)
    _remove(model, remove)


def _block_inputs(view, probe) -> tuple:
    """The stream entering each block of the (intact) view on the probe, and the context."""
    h, ctx = view.embed(probe)
    xs = []
    for b in view.blocks:
        xs.append(h)
        h = b(h, ctx)
    return xs, ctx


def _identity_when_deleted(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether the module, with every branch deleted, computes the identity: residual blocks,
    no post, shortcuts the identity (None, or returning the module's own input unchanged)."""
    parts = split_block(module)
    if not all(p.residual and p.post is None for p in parts):
        return False
    if all(p.shortcut is None for p in parts):
        return True
    if len(parts) > 1 or not torch.is_tensor(x):
        return False
    s = parts[0].shortcut(x)
    return torch.is_tensor(s) and s.shape == x.shape and torch.equal(s, x)


def _container(model: nn.Module, name: str):
    """(parent, attribute, index) when the module is an entry of an nn.ModuleList or
    nn.Sequential, else None."""
    parent_name, _, last = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, (nn.ModuleList, nn.Sequential)) or not last.isdigit():
        return None
    return parent


def _bypass(model: nn.Module, name: str, x, remove: list) -> bool:
    """Replace a one-block module by Bypass(shortcut, post) if its parts allow it (modules or
    ReLU, a branch without context), or list it in `remove` when that Bypass returns its input
    unchanged on the probe (a ReLU after the sum on a stream that a ReLU before made
    non-negative: the identity, as wrap finds identity shortcuts); False if neither."""
    module = model.get_submodule(name)
    (p,) = split_block(module)
    if p.context:
        return False
    if not p.residual:  # a plain layer that keeps the shape: deleted, it is the identity
        new = Bypass()
    else:
        if p.shortcut is not None and not isinstance(p.shortcut, nn.Module):
            return False
        if p.post is not None and not isinstance(p.post, nn.Module) and \
                not any(p.post is f for f in RELU_FUNCTIONS):
            return False
        new = Bypass(p.shortcut, p.post)
    parent_name, _, last = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    listed = isinstance(parent, (nn.ModuleList, nn.Sequential)) and last.isdigit()
    if listed and torch.is_tensor(x):
        y = new(x)
        if torch.is_tensor(y) and y.shape == x.shape and torch.equal(y, x):
            remove.append(name)
            return True
    if listed:
        parent[int(last)] = new
    else:
        setattr(parent, last, new)
    return True


register_block(Bypass, lambda m: BlockParts(branch=m, residual=False), builtin=True)


# ---- zeroing a branch ----------------------------------------------------------------------------

def _zero(block, x: torch.Tensor, ctx) -> None:
    """Make block's branch return exactly zero: its scale if that is a parameter of the block's
    module, else the parameters of the last layer it runs that then gives zero."""
    parts, module = block.parts, block.module

    def branch():
        return parts.branch(x, ctx) if parts.context else parts.branch(x)

    scale = parts.scale
    if torch.is_tensor(scale):
        for p in module.parameters():
            if p.data_ptr() == scale.data_ptr() and p.numel() == scale.numel():
                p.zero_()
                return
    order = _run_order(module, branch)
    for m in reversed(order[-4:]):  # the last layers first; a norm like Gemma's (1 + w) fails
        saved = [p.detach().clone() for p in m.parameters(recurse=False)]
        for p in m.parameters(recurse=False):
            p.zero_()
        r = branch()
        if torch.is_tensor(r) and torch.count_nonzero(r) == 0:
            return
        for p, s in zip(m.parameters(recurse=False), saved):
            p.copy_(s)
    raise PathensError(f"pruned: block {block.name} cannot be bypassed in the model's own class: "
                       f"no layer ending its branch gives zero with its parameters zeroed; delete "
                       f"the whole module ({block.name.rsplit('.', 1)[0]}) instead")


def _run_order(module: nn.Module, fn) -> list:
    """The submodules of `module` holding parameters of their own, in the order fn() last
    runs them (each once, at its last call)."""
    calls, handles = [], []
    for m in module.modules():
        if next(m.parameters(recurse=False), None) is not None:
            handles.append(m.register_forward_hook(lambda mod, a, o: calls.append(mod)))
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    last = {id(m): (t, m) for t, m in enumerate(calls)}
    return [m for _, m in sorted(last.values(), key=lambda tm: tm[0])]


# ---- removing modules from their lists -----------------------------------------------------------

def _remove(model: nn.Module, names: list) -> None:
    """Drop the named entries of their nn.ModuleList / nn.Sequential, then renumber what
    depends on a layer's position (Hugging Face configs and layer_idx; pathens's GPT depth)."""
    by_parent: dict[str, set] = {}
    for name in names:
        parent, _, last = name.rpartition(".")
        by_parent.setdefault(parent, set()).add(int(last))
    for parent_name, drop in by_parent.items():
        grand_name, _, attr = parent_name.rpartition(".")
        grand = model.get_submodule(grand_name) if grand_name else model
        old = model.get_submodule(parent_name)
        keep = [i for i in range(len(old)) if i not in drop]
        entries = [old[i] for i in keep]
        new = nn.Sequential(*entries) if isinstance(old, nn.Sequential) else nn.ModuleList(entries)
        if type(old) not in (nn.Sequential, nn.ModuleList):
            raise PathensError(f"pruned: {parent_name} is a {type(old).__name__}, a subclass of "
                               f"{type(new).__name__} that pathens cannot rebuild; use how='zero'")
        _renumber(model, old, keep)
        setattr(grand, attr, new)


def _renumber(model: nn.Module, old, keep: list) -> None:
    config = getattr(model, "config", None)
    n_old, n_new = len(old), len(keep)
    if isinstance(config, dict):  # pathens's GPT: depth = layers, rebuilt from it on load
        from ..models.transformer import GPT
        if isinstance(model, GPT) and old is model.h:
            config["depth"] = n_new
        return
    if config is None or getattr(config, "num_hidden_layers", None) != n_old:
        return  # a list the config does not count (a CNN stage, a ViT's blocks in timm)
    if getattr(config, "is_heterogeneous", False):
        raise PathensError("pruned: the model's config sets attributes per layer "
                           "(per_layer_config), which pathens does not renumber; use how='zero'")
    for key, value in list(vars(config).items()):
        if not isinstance(value, (list, tuple)) or "layer" not in key:
            continue
        if key in _LAYER_INDICES:  # indices of layers (Qwen2-MoE's mlp_only_layers)
            setattr(config, key, type(value)(keep.index(i) for i in value if i in keep))
        elif len(value) == n_old and (key in _PER_LAYER or all(isinstance(v, str)
                                                               for v in value)):
            setattr(config, key, type(value)(value[i] for i in keep))  # one entry per layer
    config.num_hidden_layers = n_new
    for new_i, old_i in enumerate(keep):
        for m in old[old_i].modules():
            for attr in _INDEX_NAMES:
                if getattr(m, attr, None) == old_i and isinstance(getattr(m, attr), int):
                    setattr(m, attr, new_i)


# ---- the proof ---------------------------------------------------------------------------------

@torch.no_grad()
def _check(view, model: nn.Module, idx: list, probe, rtol: Optional[float]) -> None:
    from .proof import close
    with eval_mode(view.model):
        want = view.run(probe, deleted=idx)
    with eval_mode(model):
        try:
            got = logits_of(call_model(model, probe))
        except Exception as err:  # noqa: BLE001 - whatever the edited model raises
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise PathensError(f"pruned: the pruned {type(model).__name__} fails on the probe "
                               f"({first[:200]}); use how='zero'") from None
    if rtol is None:
        rtol = 1e-12 if want.dtype == torch.float64 else 1e-5
    if not close(got, want, rtol):
        diff = (got.to(want.dtype) - want).abs().max().item() if got.shape == want.shape else None
        what = f"largest difference {diff:.3g}" if diff is not None else \
            f"shape {tuple(got.shape)} instead of {tuple(want.shape)}"
        raise PathensError(f"pruned: the pruned {type(model).__name__} does not reproduce the "
                           f"view with blocks {idx} deleted on the probe ({what}, largest logit "
                           f"{want.abs().max().item():.3g}); use how='zero', or report this model")
