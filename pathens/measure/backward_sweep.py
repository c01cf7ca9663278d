"""Backward sweeps over a view's blocks that split the gradient by path length.

Both sweeps start from g = dL/dh_n (the loss gradient at the last block's output) and walk the
blocks from last to first, each block i given as its linearization at its forward input
(linearize.py: lins[i].post_t, .shortcut_t, .branch_t).

exact_sweep:   a stack of cotangents G[k], k = branches passed so far. At block i
               G[k] <- S^T P^T G[k] + R^T P^T G[k-1]. At the first block's input G[k] is the
               sum of the gradients of all C(n, k) paths of length k, and sum_k G[k] = g_0.
               A block with parallel branches (z = S(x) + sum_j a_j R_j(x)) passes a path
               through one of them: G[k] <- S^T P^T G[k] + sum_j R_j^T P^T G[k-1] (a_j inside
               R_j), and G[k] sums the path_counts(b)[k] paths of length k
               (coefficients of prod_i (1 + b_i t)).
sampled_sweep: one cotangent per sampled path, sent through the branch of the blocks in the
               path and the shortcut of the others (Veit et al.'s protocol, many paths at once).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .linearize import add


def exact_sweep(lins: list, g: torch.Tensor, *, tol: float = 0.0, with_params: bool = False,
                on_block=None):
    """Split g_0 = J_0^T ... J_{n-1}^T g by path length.

    lins[i]: block i's linearization at its input (with the branch parameters when
    with_params); g: (B, *out_shape) the gradient at the last block's output, which the sweep
    takes over (it works in place). Each lins[i] is released (set to None) once used, so
    memory falls as the sweep goes.
    tol: drop a component once its norm is below tol x the largest in the stack (0: exact).
    Returns (G, P): G a list of n+1 tensors (None where truncated) with G[k] the gradient at
    the first block's input carried by paths of length k; P[i][k] the list of block i's
    branch-parameter gradients carried by paths of length k (paths through block i's branch
    and k-1 later branches), or None without with_params. on_block(): called after each block
    (a progress bar).
    """
    n = len(lins)
    stack: list[Optional[torch.Tensor]] = [g]
    param_parts = [[None] * (n + 1) for _ in range(n)] if with_params else None
    for i in reversed(range(n)):
        lin, lins[i] = lins[i], None
        new: list[Optional[torch.Tensor]] = [None] * (len(stack) + 1)
        for k, gk in enumerate(stack):
            if gk is None:
                continue
            u = lin.post_t(gk, inplace=True)  # gk is ours: nothing else holds the stack
            if getattr(lin, "num_branches", 1) > 1:
                dx, dp = _parallel_t(lin, u, with_params)  # before u may be added into
                new[k] = add(new[k], lin.shortcut_t(u))
                if with_params:
                    param_parts[i][k + 1] = dp
                new[k + 1] = add(new[k + 1], dx)
                stack[k] = None
                continue
            new[k] = add(new[k], lin.shortcut_t(u))
            if with_params:
                dx, dp = lin.branch_t(u, with_params=True)
                param_parts[i][k + 1] = dp
            else:
                dx = lin.branch_t(u)
            if dx is u:  # an identity branch: new[k + 1] must not alias new[k] (in-place adds)
                dx = dx.clone()
            new[k + 1] = add(new[k + 1], dx)
            stack[k] = None  # free as we go: memory stays about one stack
        stack = truncate(new, tol) if tol > 0 else new
        del lin
        if on_block is not None:
            on_block()
    return stack + [None] * (n + 1 - len(stack)), param_parts


def _parallel_t(lin, u: torch.Tensor, with_params: bool):
    """(sum_j R_j^T u, per-parameter sum_j of branch j's parameter gradients or None) for a
    block with parallel branches: every path of one more length goes through exactly one of
    them. The sum is a tensor of its own (never u itself), so adding into it cannot alias u."""
    dx = dp = None
    for j in range(lin.num_branches):
        if with_params:
            dxj, dpj = lin.branch_t(u, j, with_params=True)
            dp = dpj if dp is None else [a + c for a, c in zip(dp, dpj)]
        else:
            dxj = lin.branch_t(u, j)
        if dx is None:  # R_0^T u is fresh, unless branch 0 is the identity (then u itself)
            dx = dxj.clone() if dxj is u else dxj
        else:
            dx.add_(dxj)
    return dx, dp


def norm(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over all elements, as a float64 0-d tensor, accurate and without underflow.

    float32 (and half) tensors: float32 norms of rows of 4096 entries, then the float64 norm
    of those (one float32 norm of 25 M entries is off by 1e-3, the rows by 2e-9, and a float64
    sum is 20x slower), used where no square can have overflowed and the squares that
    underflow (entries below ~1e-19) cannot move it by a relative 1e-7; else the squares are
    summed in float64, so that a gradient of 1e-24, whose square a float32 sum flushes to 0,
    keeps its size. float64 tensors are scaled by their largest entry first."""
    if t.dtype == torch.float64:
        top = t.abs().amax() if t.numel() else t.new_zeros(())
        if top == 0 or not torch.isfinite(top):
            return torch.linalg.vector_norm(t)
        return torch.linalg.vector_norm(t / top) * top
    flat = _flat(t)
    k = flat.numel() // _ROW
    rows = torch.linalg.vector_norm(flat[:k * _ROW].view(k, _ROW), dim=1, dtype=torch.float32)
    rest = torch.linalg.vector_norm(flat[k * _ROW:], dtype=torch.float32).view(1)
    fast = torch.linalg.vector_norm(torch.cat([rows, rest]).double())
    # each square below float32's smallest normal may be lost: numel x tiny at the most
    if torch.isfinite(fast) and fast ** 2 * 1e-7 >= t.numel() * torch.finfo(torch.float32).tiny:
        return fast
    return torch.linalg.vector_norm(t, dtype=torch.float64)


_ROW = 4096


def _flat(t: torch.Tensor) -> torch.Tensor:
    """t's entries as one vector, a view where t is contiguous or channels_last."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.reshape(-1)


def truncate(stack: list, tol: float) -> list:
    """Drop the components whose norm is below tol x the largest one."""
    norms = [None if c is None else float(norm(c)) for c in stack]
    top = max((v for v in norms if v is not None), default=0.0)
    return [c if c is not None and v >= tol * top else None for c, v in zip(stack, norms)]


def sampled_sweep(lins: list, g: torch.Tensor, masks: np.ndarray) -> list:
    """The single-path gradients at the first block's input of the paths in `masks`.

    lins: the blocks' linearizations (released as used, as in exact_sweep).
    masks: bool (m, n), row j a path (True: through block i's branch, False: its shortcut);
    or int routes (m, n) for blocks with parallel branches (0: the shortcut, r: branch r,
    1-based, as pathens.paths gives them).
    Returns a list of m tensors shaped like the first block's input.
    """
    cot = [g] * len(masks)
    for i in reversed(range(len(lins))):
        lin, lins[i] = lins[i], None
        cot = [lin.branch_t(lin.post_t(c), int(masks[j, i]) - 1) if masks[j, i]
               else lin.shortcut_t(lin.post_t(c)) for j, c in enumerate(cot)]
        del lin
    return cot
