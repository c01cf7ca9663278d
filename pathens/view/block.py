"""One residual block of a view: `post(shortcut(x) + scale * branch(x))`, with where it sits in
the model and what the probe showed about it (its shapes, whether its shortcut is the identity).
A block may have several parallel branches, `post(shortcut(x) + sum_j a_j branch_j(x))`
(Pythia, Phi: BlockParts.branches); a path then takes the shortcut or one of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Optional

import torch
from torch import nn

from ..adapters import BlockParts, Branch, adapter_class, qualname


@dataclass(frozen=True, eq=False)
class Block:
    """One residual block of a view.

    name:       the module path in the model, e.g. "layer2.0", with the sublayer's name for
                modules that hold several blocks, e.g. "transformer.h.3.attn".
    layer:      index of the module holding it (blocks of one transformer layer share it).
    identity_shortcut, identity_by: whether the shortcut is the identity and how wrap decided
                ("no shortcut module", "the shortcut module returns its input on the probe",
                or "the shortcut module changes its input on the probe": a downsampling block).
    in_shape, out_shape: per-sample shapes seen on the probe input, e.g. (16, 32, 32).
    """

    index: int
    name: str
    module: nn.Module
    parts: BlockParts
    in_shape: tuple
    out_shape: tuple
    layer: int = 0
    identity_shortcut: bool = True
    identity_by: str = "no shortcut module"

    @property
    def residual(self) -> bool:
        """False for a plain (VGG-like) layer with no shortcut (wrap(..., allow_plain=True))."""
        return self.parts.residual

    @property
    def sublayer(self) -> str:
        """The sublayer's name within its module ("attn", "mlp"), or "" for one-block modules."""
        return self.parts.name

    @property
    def downsample(self) -> bool:
        if not self.residual:
            return self.in_shape != self.out_shape
        return not self.identity_shortcut

    @property
    def deletable(self) -> bool:
        """A residual block always (its shortcut stays); a plain layer only if it keeps the
        shape (it is then replaced by the identity, as in Veit et al.'s plain-network lesion)."""
        return self.residual or self.in_shape == self.out_shape

    @property
    def branches(self) -> tuple:
        """The block's branches as pathens.Branch: BlockParts.branches, or its one branch."""
        p = self.parts
        return p.branches or (Branch(p.branch, p.scale, p.layers, p.name, p.context),)

    @property
    def num_branches(self) -> int:
        """b: how many parallel branches the block has (its routes: b + 1 with the shortcut)."""
        return len(self.parts.branches) or 1

    @property
    def branch_names(self) -> list:
        """Each branch's name within the block ("attn", "mlp"; its index where unnamed)."""
        return [b.name or str(j) for j, b in enumerate(self.branches)]

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.parts.shortcut is None else self.parts.shortcut(x)

    def branch(self, x: torch.Tensor, ctx=None, which: Optional[int] = None) -> torch.Tensor:
        """The branch times its scale; ctx: the context embed() returned ({} if None).
        which: one of a parallel block's branches (0-based), times its own scale; None: the
        block's whole branch (for parallel branches, the sum of them all)."""
        if which is not None and self.parts.branches:
            b = self.parts.branches[which]
            r = b.branch(x, {} if ctx is None else ctx) if b.context else b.branch(x)
            return r if b.scale is None else b.scale * r
        r = self.parts.branch(x, {} if ctx is None else ctx) if self.parts.context else \
            self.parts.branch(x)
        return r if self.parts.scale is None else self.parts.scale * r

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.parts.post is None else self.parts.post(z)

    def __call__(self, x: torch.Tensor, ctx=None, *, keep_branch: bool = True,
                 route: Optional[int] = None, drop: Collection[int] = ()):
        """Block output. keep_branch=False deletes the branch (lesion: post(shortcut(x))); drop:
        the parallel branches deleted (0-based indices), the others kept.

        route lets the gradient through one route only (the forward value is unchanged): one
        factor of a single path's gradient. True or 1: the branch only (parallel branches:
        route j, branch j - 1 only); False or 0: the shortcut only.
        """
        if not self.residual:  # a plain layer: no shortcut, no paths to route
            return self.post(self.branch(x, ctx)) if keep_branch else x
        s = self.shortcut(x)
        if not keep_branch:
            return self.post(s)
        if self.parts.branches:
            return self._parallel(x, s, ctx, route, drop)
        r = self.branch(x, ctx)
        if route is not None and route:  # True, or route 1
            s = s.detach()
        elif route is not None:  # False, or route 0
            r = r.detach()
        return self.post(s + r)

    def _parallel(self, x, s, ctx, route, drop):
        """post(s + sum over the kept branches j of a_j branch_j(x)), each term detached unless
        on `route` (0: the shortcut, j: branch j - 1)."""
        if route is not None and route != 0:
            s = s.detach()
        z = s
        for j in range(self.num_branches):
            if j in drop:
                continue
            r = self.branch(x, ctx, j)
            if route is not None and route != j + 1:
                r = r.detach()
            z = z + r
        return self.post(z)

    def __repr__(self) -> str:
        kind = ("plain" if not self.residual else
                "identity" if self.identity_shortcut else "downsample") + f" ({self.identity_by})"
        many = f", branches {self.branch_names}" if self.parts.branches else ""
        return (f"Block({self.index}, {self.name!r}, {kind}{many}, {self.in_shape} -> "
                f"{self.out_shape})")


def owner(module: nn.Module) -> str:
    """The registered class whose adapter a module uses, for messages."""
    cls = adapter_class(module)
    return qualname(cls) if cls is not None else type(module).__name__
