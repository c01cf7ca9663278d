"""The proof that a view reproduces its model, on a probe input.

The model runs once on the probe with hooks on its block modules, recording what each receives
and returns. Then, each against what the model computed: the stem's output is the first
module's input; each module's input is the previous one's output (the chain); the blocks a
module holds, composed, give its output (and a branch's listed `layers` give the branch); the
head gives the model's logits; and the whole view, composed, gives them too. The first check
that fails names the part at fault and the adapter to fix. Each block's shortcut is also found
to be the identity or not here, from what it does to the probe.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import nn

from ..adapters import chain
from ..errors import WrapError
from ..data.inputs import batch_len, call_model, describe, logits_of, tensors, to_model
from ..adapters.calls import block_call
from .block import Block, owner
from ..adapters.transitions import fold


def check_probe(model: nn.Module, probe, param: torch.Tensor):
    """The probe on the model's device and dtype, refused when it cannot prove anything."""
    if probe is None:
        probe = default_probe(model, param)
    if not (torch.is_tensor(probe) or (isinstance(probe, dict) and probe and
                                       all(torch.is_tensor(v) for v in probe.values()))):
        raise WrapError(f"example_input must be a batch: a tensor or a dict of tensors, got "
                        f"{type(probe).__name__}")
    if batch_len(probe) == 0 or any(t.numel() == 0 for t in tensors(probe)):
        raise WrapError("example_input is empty: the probe needs at least one example to prove "
                        "the view reproduces the model")
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors(probe)):
        raise WrapError("example_input contains NaN or infinite values: a probe must be finite "
                        "to prove the view reproduces the model")
    return to_model(probe, param)


def default_probe(model: nn.Module, param: torch.Tensor):
    """A probe batch for the families pathens knows (by what they carry), else a WrapError."""
    config = getattr(model, "config", None)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)  # timm
    if isinstance(config, dict) and "in_channels" in config:  # pathens CIFAR ResNet
        shape = (2, config["in_channels"], 32, 32)
    elif isinstance(cfg, dict) and len(cfg.get("input_size", ())) == 3:
        size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # a timm ViT's own
        shape = (2, cfg["input_size"][0], *size) if size else (2, *cfg["input_size"])
    elif isinstance(getattr(model, "image_size", None), int):  # torchvision VisionTransformer
        shape = (2, 3, model.image_size, model.image_size)
    elif type(model).__module__.startswith("torchvision.models"):  # image classifiers
        shape = (2, getattr(getattr(model, "conv1", None), "in_channels", 3), 64, 64)
    else:
        raise WrapError(f"pathens cannot guess an input for {type(model).__name__}; pass "
                        f"example_input=<a batch of inputs> to pathens.wrap")
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=param.dtype).to(param.device)


@dataclass
class Record:
    """What the model computed on the probe: per block module (by id), its stream input and
    output; the model's logits; and the block modules' ids in the order the model ran them."""
    inputs: dict
    outputs: dict
    output: torch.Tensor
    called: list = field(default_factory=list)


def record(model: nn.Module, modules: list, probe) -> Record:
    inputs, outputs, handles, called = {}, {}, [], []

    def hook(module, args, kwargs, out):
        if id(module) not in inputs:
            called.append(id(module))
        inputs[id(module)] = block_call(module, args, kwargs)[0]
        outputs[id(module)] = out if torch.is_tensor(out) else out[0]

    for m in modules:
        handles.append(m.register_forward_hook(hook, with_kwargs=True))
    try:
        raw = call_model(model, probe)
    except Exception as err:  # noqa: BLE001 - any failure of the user's model on the probe
        first = str(err).splitlines()[0] if str(err) else repr(err)
        raise WrapError(f"{type(model).__name__} fails on the probe input ({describe(probe)}: "
                        f"{first}); pass a valid example_input=") from None
    finally:
        for h in handles:
            h.remove()
    missing = [type(m).__name__ for m in modules if id(m) not in inputs]
    if missing:
        raise WrapError(f"{type(model).__name__}.forward did not call its block {missing[0]} on "
                        f"the probe")
    output = logits_of(raw)
    if not torch.isfinite(output).any():  # NaN compares equal to NaN below: nothing to prove
        raise WrapError(f"{type(model).__name__} gives outputs that are not finite (NaN or inf) "
                        f"on the probe: nothing can be proved on it; check the weights, or pass "
                        f"another example_input=")
    return Record(inputs, outputs, output, called)


def close(a: torch.Tensor, b: torch.Tensor, rtol: Optional[float]) -> bool:
    """a equals b up to rtol x the largest |b| (absolute); NaN where b has NaN counts as equal."""
    if not torch.is_tensor(a) or a.shape != b.shape:
        return False
    if rtol is None:
        rtol = 1e-10 if b.dtype == torch.float64 else 1e-4
    finite = b[torch.isfinite(b)]
    scale = 1 + (finite.abs().max() if finite.numel() else 0)
    return torch.allclose(a.to(b.dtype), b, rtol=0, atol=float(rtol * scale), equal_nan=True)


def _identity(parts, x: torch.Tensor) -> tuple[bool, str]:
    if not parts.residual:
        return False, "no shortcut: a plain layer"
    if parts.shortcut is None:
        return True, "no shortcut module"
    s = parts.shortcut(x)
    if torch.is_tensor(s) and s.shape == x.shape and torch.equal(s, x):
        return True, "the shortcut module returns its input on the probe"
    return False, "the shortcut module changes its input on the probe"


def build_blocks(model, modules: list, split: list, names: list, rec: Record, stem, probe,
                 rtol, transitions: Optional[dict] = None) -> list:
    """The view's blocks, each checked against what the model computed on the probe.
    transitions: {i: layer} computing module i's input from module i-1's output, folded into
    module i's first block (transitions.py)."""
    out = stem(probe)
    h, ctx = out if isinstance(out, tuple) else (out, None)
    cls = type(model).__name__
    _check_order(cls, modules, names, rec)
    if not close(h, rec.inputs[id(modules[0])], rtol):
        raise WrapError(f"the stem of {cls} (everything before {names[0]}) does not reproduce "
                        f"the model on the probe")
    blocks = []
    for li, (m, parts_list, name) in enumerate(zip(modules, split, names)):
        x = rec.inputs[id(m)]
        if li in (transitions or {}):
            prev = rec.outputs[id(modules[li - 1])]
            if not close(transitions[li](prev), x, rtol):
                raise WrapError(f"the transition the adapter names before {name} does not compute "
                                f"its input from the output of {names[li - 1]}; fix the model "
                                f"adapter for {cls}")
            parts_list = [fold(transitions[li], parts_list[0]), *parts_list[1:]]
            x = prev
        elif li and not close(x, rec.outputs[id(modules[li - 1])], rtol):
            raise WrapError(f"the blocks of {cls} do not form a chain: the chain breaks between "
                            f"{names[li - 1]} and {name} (the input of {name} is not the output of "
                            f"{names[li - 1]}); pathens needs stem -> block -> ... -> block -> head")
        x_in = x  # what the module's blocks read
        for j, p in enumerate(parts_list):
            sub = p.name or (str(j) if len(parts_list) > 1 else "")
            ident, how = _identity(p, x)
            b = Block(len(blocks), f"{name}.{sub}" if sub else name, m, p, tuple(x.shape[1:]), (),
                      layer=li, identity_shortcut=ident, identity_by=how)
            for j, br in enumerate(b.branches):  # parallel branches: each its own layers
                if br.layers is not None and not br.context and \
                        not close(chain(br.layers)(x), br.branch(x), rtol):
                    which = f" (branch {b.branch_names[j]})" if p.branches else ""
                    raise WrapError(
                        f"block {b.name}{which} ({type(m).__name__}): the layers its adapter "
                        f"lists do not compute its branch; fix `layers` in the adapter "
                        f"registered for {owner(m)} (or leave it None)")
            y = b(x, ctx)
            blocks.append(replace(b, out_shape=tuple(y.shape[1:])))
            x = y
        if not close(x, rec.outputs[id(m)], rtol):
            raise WrapError(_mismatch(m, name, parts_list, x_in, rec, ctx, rtol))
    return blocks


def _check_order(cls: str, modules: list, names: list, rec: Record) -> None:
    """Blocks listed in another order than the model runs them (a model adapter's mistake) are
    named as such, before the stem is compared with the first one listed."""
    listed = [id(m) for m in modules]
    if len(set(listed)) != len(listed) or rec.called == listed or \
            sorted(rec.called) != sorted(listed):
        return
    name_of = dict(zip(listed, names))
    i = next(i for i, (a, b) in enumerate(zip(listed, rec.called)) if a != b)
    raise WrapError(f"the blocks of {cls} are listed in another order than its forward runs "
                    f"them: {names[i]} is listed at position {i}, where the model runs "
                    f"{name_of[rec.called[i]]}; list the blocks in the order the model calls "
                    f"them (ModelParts(blocks=...) in the model adapter registered for {cls})")


def _mismatch(m, name: str, parts_list: list, x, rec: Record, ctx, rtol) -> str:

    fix = f"fix the adapter registered for {owner(m)}"
    if len(parts_list) > 1:
        subs = ", ".join(p.name or str(j) for j, p in enumerate(parts_list))
        return (f"module {name} ({type(m).__name__}): its {len(parts_list)} blocks ({subs}), "
                f"composed, do not reproduce its output; {fix}")
    p = parts_list[0]
    hint = ""
    if p.residual:
        r = p.branch(x, ctx) if p.context else p.branch(x)
        r = r if p.scale is None else p.scale * r
        plain = r if p.post is None else p.post(r)
        if close(plain, rec.outputs[id(m)], rtol):
            hint = (" (it computes post(branch(x)) with no shortcut: a plain layer; return "
                    "BlockParts(..., residual=False) and wrap with allow_plain=True)")
    form = (f"post(shortcut(x) + sum of its {len(p.branches)} parallel branches "
            f"({', '.join(b.name or str(j) for j, b in enumerate(p.branches))}))"
            if p.branches else "post(shortcut(x) + scale * branch(x))")
    return f"block {name} ({type(m).__name__}) is not {form} as its adapter says{hint}; {fix}"


def check_head(view, rec: Record, probe, rtol) -> None:
    cls = type(view.model).__name__
    last = view.blocks[-1]
    if not close(view.head(rec.outputs[id(last.module)]), rec.output, rtol):
        raise WrapError(f"the head of {cls} (everything after {last.name}) does not reproduce "
                        f"the model on the probe")
    if not close(view(probe), rec.output, rtol):  # the whole chain, composed
        raise WrapError(f"the view of {cls} does not reproduce its output")
