"""One block's input-Jacobian at a point, as the three transposed factors of J = P (S + R).

For block i at input x:  out = post(z),  z = shortcut(x) + scale * branch(x), so
    J^T g = S^T P^T g + R^T P^T g,
with P the Jacobian of post at z, S of the shortcut and R of the scaled branch at x.

`linearize(block, x)` runs the block forward once and returns the three transposed products
with the block's output (carrying autograd's graph when grad is enabled, so that one forward
serves both the sweep and the autograd gradient it is checked against), in one of two forms
that give the same numbers. A block with parallel branches, z = shortcut(x) + sum_j a_j
branch_j(x), has one R_j per branch: branch_t(u, j) = R_j^T u (`num_branches` of them):
- Folded: when the adapter lists the branch's layers and every part is made of convolutions
  (grouped too), eval-mode BatchNorm, ReLU and average pooling (pathens's CIFAR ResNets,
  torchvision's, timm's and Hugging Face's ResNets and ResNeXts), each product is a few
  conv_transpose2d and mask multiplies (folded.py); only the ReLU masks are kept.
- Autograd: any other block (`autograd_reason` says why, e.g. a squeeze-excitation gate,
  which depends on the input). The block's graph is built on first use (so that a forward pass
  can hold one linearization per block without holding n graphs) and each transposed product
  is one autograd call on it (retain_graph), which measured ~3x faster than torch.func.vmap
  over the VJP for ResNet branches on CPU. Parameter gradients (with_params) need this form.
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Optional, Sequence

import torch

from ..adapters.layers import Chain, is_relu
from .transposes import apply, chain_reason, relu_mask, transpose_chain


def linearize(block, x: torch.Tensor, params: Sequence[torch.Tensor] = (), ctx=None):
    """(the VJPs of `block` at input x (B, *in_shape), block(x, ctx)).

    params: branch parameters whose gradients branch_t(..., with_params=True) must return
    (autograd form only). ctx: the view's context for branches that take one."""
    if not params and not block.parts.context:
        folded = Folded.build(block, x)
        if folded is not None:
            return folded
    return Autograd(block, x, params, ctx), block(x, ctx)


def autograd_reason(block) -> Optional[str]:
    """Why linearize transposes `block` by autograd rather than in closed form, or None (closed
    form), read from the block's parts and its layers' modes without running anything:
    e.g. "SEModule in the branch", "BatchNorm2d on batch statistics in the branch"."""
    parts = block.parts
    if parts.context:
        return "its branch takes a context"
    if not parts.residual:
        return "a plain layer"
    if any(b.layers is None for b in block.branches):
        return "its adapter lists no layers"
    if parts.post is not None and not is_relu(parts.post):
        return f"{getattr(parts.post, '__name__', type(parts.post).__name__)} after the sum"
    why = next((w for b in block.branches if (w := chain_reason(b.layers)) is not None), None)
    if why is not None:
        return f"{why} in the branch"
    why = None if parts.shortcut is None else chain_reason((parts.shortcut,))
    return None if why is None else f"{why} in the shortcut"


class AutogradTransposes(UserWarning):
    """Some blocks of a view that its adapters meant for the closed form are transposed by
    autograd in the path-gradient sweeps (the same numbers, more time)."""


def autograd_blocks(view) -> dict[int, str]:
    """{block index: why} for the blocks whose adapter lists their layers (the closed form's
    input) but that linearize transposes by autograd, e.g. {0: "SEModule in the branch"}.
    Blocks whose adapter lists none (transformer sublayers) are left out: autograd is their
    only form, nothing to note. Decided in the model's current mode (analyses run in eval)."""
    return {b.index: why for b in view.blocks
            if all(br.layers is not None for br in b.branches)
            and (why := autograd_reason(b)) is not None}


def autograd_note(view) -> Optional[str]:
    """One line on the blocks of autograd_blocks(view), or None when there are none:
    "8 of 8 blocks (SEModule in the branch) use autograd transposes: same numbers, slower"."""
    why = Counter(autograd_blocks(view).values())
    if not why:
        return None
    n = sum(why.values())
    parts = ", ".join(r if len(why) == 1 else f"{c} with {r}" for r, c in why.most_common())
    return (f"{n} of {view.num_blocks} blocks ({parts}) use autograd transposes in the "
            f"path-gradient sweep: same numbers, slower")


def note_autograd_blocks(view, *, stacklevel: int = 1) -> Optional[str]:
    """Say autograd_note(view) once, as an AutogradTransposes warning; returns it (None:
    every block is closed form, nothing said). An analysis calls it once for the whole view,
    before its sweeps: linearize itself, called per block per batch, never warns.
    stacklevel: 1 points the warning at the caller of this function; an analysis function
    passes 2 to point it at its own caller."""
    note = autograd_note(view)
    if note is not None:
        warnings.warn(note, AutogradTransposes, stacklevel=stacklevel + 1)
    return note


class Folded:
    """Closed-form VJPs: post_t(g) = P^T g; shortcut_t(u) = S^T u; branch_t(u, j) = R_j^T u."""

    def __init__(self, post_mask, shortcut_ops, branch_ops):
        self.post_mask = post_mask  # None for an identity post
        self.shortcut_ops = shortcut_ops
        self.branch_ops = branch_ops  # one list of ops per branch
        self.num_branches = len(branch_ops)

    @classmethod
    def build(cls, block, x: torch.Tensor) -> Optional[tuple]:
        """(Folded, block(x)), or None when a part is not a chain folded.py can transpose."""
        if autograd_reason(block) is not None:
            return None
        parts = block.parts
        branches = [transpose_chain(b.layers, x, b.scale) for b in block.branches]
        shortcut = transpose_chain(() if parts.shortcut is None else (parts.shortcut,), x)
        if any(b is None for b in branches) or shortcut is None:
            return None
        z = shortcut[0] + branches[0][0]
        for b in branches[1:]:  # parallel branches, added in order as Block does
            z = z + b[0]
        out = z if parts.post is None else parts.post(z)
        mask = None if parts.post is None else relu_mask(out)
        return cls(mask, shortcut[1], [b[1] for b in branches]), out

    def post_t(self, g: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """P^T g; inplace=True may overwrite g (the caller owns it)."""
        if self.post_mask is None:
            return g
        return g.mul_(self.post_mask) if inplace else g * self.post_mask

    def shortcut_t(self, u: torch.Tensor) -> torch.Tensor:
        return apply(self.shortcut_ops, u)

    def branch_t(self, u: torch.Tensor, j: int = 0) -> torch.Tensor:
        """R_j^T u (j: which parallel branch; 0 for a one-branch block)."""
        return apply(self.branch_ops[j], u)


class Autograd:
    """The same VJPs by autograd on the block's graph; branch_t can also return the gradient
    of the branch's parameters for the same cotangent."""

    def __init__(self, block, x: torch.Tensor, params: Sequence[torch.Tensor] = (), ctx=None):
        self.block, self.x, self.params, self.ctx = block, x.detach(), list(params), ctx
        self.num_branches = block.num_branches
        self.graph = None

    def _build(self):
        # (x, s, r, z, out): out = post(z), z = s + sum_j r[j]; s is None for the identity
        # shortcut; r a list of the (scaled) branch outputs, one per parallel branch
        b = self.block
        with torch.enable_grad():
            x = self.x.requires_grad_(True)
            # the shortcut module's own Jacobian, even where it returned the probe unchanged
            s = b.shortcut(x) if b.parts.shortcut is not None else None
            if b.parts.branches:
                r = [b.branch(x, self.ctx, j) for j in range(b.num_branches)]
                z = x if s is None else s
                for rj in r:
                    z = z + rj
            else:
                r = [b.branch(x, self.ctx)]
                z = (x if s is None else s) + r[0]
            z = z.detach().requires_grad_(True)
            out = b.post(z) if b.parts.post is not None else None
        self.graph = (x, s, r, z, out)
        return self.graph

    def post_t(self, g: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        x, s, r, z, out = self.graph or self._build()
        return g if out is None else torch.autograd.grad(out, z, g, retain_graph=True)[0]

    def shortcut_t(self, u: torch.Tensor) -> torch.Tensor:
        x, s, r, z, out = self.graph or self._build()
        return u if s is None else torch.autograd.grad(s, x, u, retain_graph=True)[0]

    def branch_t(self, u: torch.Tensor, j: int = 0, with_params: bool = False):
        """R_j^T u (j: which parallel branch; 0 for a one-branch block), and with_params=True
        also the branch-parameter gradient (a list, zeros for parameters branch j does not
        use)."""
        x, s, r, z, out = self.graph or self._build()
        if not with_params:
            return torch.autograd.grad(r[j], x, u, retain_graph=True)[0]
        grads = torch.autograd.grad(r[j], [x] + self.params, u, retain_graph=True,
                                    allow_unused=True)
        return grads[0], [torch.zeros_like(p) if g is None else g
                          for p, g in zip(self.params, grads[1:])]


def branch_parameters(block) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) for every trainable parameter of the block outside its shortcut: the
    branch's weights (and its scale), whose gradients the branch alone carries. A layer the
    shortcut shares with the branch (the first norm of a pre-activation block with a
    projection, which feeds both) is left out with the shortcut's. Any the branch does not use
    get zero grads."""
    skip = _params(block.parts.shortcut)
    return [(n, p) for n, p in block.module.named_parameters()
            if p.requires_grad and id(p) not in skip]


def _params(obj) -> set:
    """ids of the parameters held by a shortcut: a module, or a Chain of layers (functions
    such as F.relu hold none)."""
    if isinstance(obj, torch.nn.Module):
        return {id(p) for p in obj.parameters()}
    return set().union(*map(_params, obj.layers)) if isinstance(obj, Chain) else set()


def add(a: Optional[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    """a + b, accumulating in place into a (a is always a tensor the sweep owns)."""
    return b if a is None else a.add_(b)
