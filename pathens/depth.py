"""Effective depth, three ways, each with the path-length distribution behind it.

1. gradient-based: from a PathGradients result, the distribution of gradient magnitude over
   path lengths: its mean, mode and the shortest interval of lengths holding `level` (90%) of
   it, with the fraction of all 2^n paths that interval contains (Veit et al.: 5-17 of 54
   blocks, 0.45% of the paths, carry almost all the gradient of ResNet-110).
2. lesion-based: from a delete_random result, the largest number of random blocks that can be
   deleted while the mean error stays within `margin` of the intact error.
3. variance-based: from `branch_variance(view, data)`, each block's branch-to-shortcut variance
   ratio r_i and the path-length distribution P(k) proportional to e_k(r_1, ..., r_n) they
   imply (DESIGN.md; a forward-only estimate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from . import paths
from .errors import PathensError
from .modes import eval_mode
from .results import Result
from .view import wrap


@dataclass(frozen=True)
class EffectiveDepth(Result):
    """Effective depth of a network, with the distribution over path lengths it comes from.

    source:        "gradients", "variance" or "lesion".
    mean, mode:    of `distribution` over lengths 0..n (lesion: NaN).
    interval:      (lo, hi), the shortest range of lengths holding at least `level` of the
                   distribution (ties: the one holding most); lesion: (0, k).
    mass:          the share of the distribution inside the interval (>= level).
    path_fraction: the share of all 2^n paths whose length lies in the interval.
    depth:         the headline number: the mean length (gradients, variance) or the largest
                   k deletable within the margin (lesion).
    distribution:  weights over lengths 0..n (sums to 1); lesion: mean error per k tested.
    details:       what else the source says (e.g. the lesion margin, the variance ratios).
    """

    source: str
    num_blocks: int
    depth: float
    mean: float
    mode: float
    interval: tuple
    level: float
    mass: float
    path_fraction: float
    distribution: np.ndarray
    details: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        return [dict(source=self.source, num_blocks=self.num_blocks, depth=self.depth,
                     mean=self.mean, mode=self.mode, interval_lo=self.interval[0],
                     interval_hi=self.interval[1], level=self.level, mass=self.mass,
                     path_fraction=self.path_fraction)]

    def __repr__(self) -> str:
        lo, hi = self.interval
        return (f"EffectiveDepth({self.source}: {self.depth:.2f} of {self.num_blocks} blocks; "
                f"{self.level:.0%} in lengths {lo}..{hi}, {self.path_fraction:.3%} of paths)")


def shortest_interval(weights, level: float = 0.9) -> tuple[int, int, float]:
    """(lo, hi, mass): the shortest range lo..hi of indices whose weights sum to at least
    `level` of the total; among equally short ranges, the one holding the most."""
    w = np.asarray(weights, float)
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise PathensError("weights must be a non-empty vector of finite, non-negative numbers "
                           "with a positive sum")
    if not 0 < level <= 1:
        raise PathensError(f"level must lie in (0, 1], got {level}")
    p = w / w.sum()
    cum = np.concatenate([[0.0], np.cumsum(p)])
    best = None
    for width in range(1, len(p) + 1):
        mass = cum[width:] - cum[:-width]  # mass[lo] = sum p[lo : lo + width]
        lo = int(np.argmax(mass))
        if mass[lo] >= level - 1e-12:
            best = (lo, lo + width - 1, float(mass[lo]))
            break
    return best


def from_distribution(weights, *, level: float = 0.9, source: str = "gradients",
                      details: Optional[dict] = None) -> EffectiveDepth:
    """Effective depth of a distribution of weights over path lengths 0..n."""
    w = np.asarray(weights, float)
    lo, hi, mass = shortest_interval(w, level)
    p = w / w.sum()
    n = len(p) - 1
    counts = paths.path_counts(n)
    inside = sum(counts[lo:hi + 1]) / 2 ** n  # exact integers, then one division
    mean = float((np.arange(n + 1) * p).sum())
    return EffectiveDepth(source, n, mean, mean, int(np.argmax(p)), (lo, hi), level, mass,
                          float(inside), p, details or {})


def effective_depth(result, *, level: float = 0.9, quantity: str = "magnitude",
                    margin: float = 0.02) -> EffectiveDepth:
    """Effective depth from a PathGradients, BranchVariance or delete_random LesionResult.

    quantity (gradients): "magnitude" weighs length k by total[k] (Veit et al.), "energy" by
        total[k]^2 (for the exact method, the share of ||g||^2 when paths are uncorrelated:
        the quantity the analytic variance models predict).
    margin (lesion): the error increase over the intact network still counted as surviving
        (0.02 = 2 points).
    """
    from .gradients import PathGradients
    from .lesion import LesionResult

    if isinstance(result, PathGradients):
        if quantity not in ("magnitude", "energy"):
            raise PathensError(f"quantity must be 'magnitude' or 'energy', got {quantity!r}")
        n = result.num_blocks
        if len(result.lengths) != n + 1:
            raise PathensError("effective_depth needs every length 0..n measured; this sampled "
                               "result has only some (drop lengths= to measure all)")
        w = result.total ** 2 if quantity == "energy" else result.total
        return from_distribution(w, level=level, source="gradients",
                                 details=dict(method=result.method, quantity=quantity))
    if isinstance(result, BranchVariance):
        return from_distribution(result.distribution, level=level, source="variance",
                                 details=dict(ratios=result.ratios.tolist()))
    if isinstance(result, LesionResult):
        return _from_lesion(result, margin)
    raise PathensError(f"effective_depth takes a PathGradients, BranchVariance or LesionResult, "
                       f"got {type(result).__name__}")


def _from_lesion(result, margin: float) -> EffectiveDepth:
    """The largest k such that the mean error with k random blocks deleted, and with every
    smaller k tested, stays within margin of the intact error."""
    if result.sweep != "delete_random":
        raise PathensError(f"a lesion-based effective depth needs a delete_random result, got "
                           f"{result.sweep}")
    if not margin >= 0:
        raise PathensError(f"margin must be >= 0, got {margin}")
    rows = result.summary()
    survived = 0
    for r in rows:
        if not (r["error_mean"] <= result.intact_error + margin):  # NaN counts as failed
            break
        survived = r["k"]
    n = len(result.block_names)
    means = np.array([r["error_mean"] for r in rows])
    return EffectiveDepth("lesion", n, float(survived), math.nan, math.nan, (0, survived),
                          math.nan, math.nan, math.nan, means,
                          dict(margin=margin, intact_error=result.intact_error,
                               ks=[r["k"] for r in rows]))


# ---- branch variance -----------------------------------------------------------------------

@dataclass(frozen=True)
class BranchVariance(Result):
    """Per block, Var(scale * branch(x)) / Var(shortcut(x)) at the block's input x.

    Variances are taken over the examples for every feature (channel and position), then
    averaged over features. ratios: (n,); distribution: (n+1,) the implied path-length
    distribution P(k) proportional to e_k(ratios); branch_var, shortcut_var: the two terms.
    """

    block_names: tuple
    ratios: np.ndarray
    branch_var: np.ndarray
    shortcut_var: np.ndarray
    distribution: np.ndarray
    num_examples: int
    config: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        return [dict(block=i, name=nm, ratio=r, branch_var=b, shortcut_var=s)
                for i, (nm, r, b, s) in enumerate(zip(self.block_names, self.ratios,
                                                       self.branch_var, self.shortcut_var))]


@torch.no_grad()
def branch_variance(view, data, *, batch_size: int = 256) -> BranchVariance:
    """Measure each block's branch-to-shortcut variance ratio on `data` (inputs, or an
    (inputs, targets) pair, or a DataLoader of batches), BatchNorm in eval mode.

    Variances are accumulated over batches exactly (sums of x and x^2 per feature).
    """
    view = wrap(view)
    if not view.residual:
        raise PathensError("branch_variance needs a residual network: this view has plain layers")
    batches = _input_batches(data, batch_size)
    p = view.param
    n = view.num_blocks
    sums = [[0.0, 0.0, 0.0, 0.0] for _ in range(n)]  # per block: S(r), S(r^2), S(s), S(s^2) per feature
    count = 0
    with eval_mode(view.model):
        for x in batches:
            h = view.stem(x.to(device=p.device, dtype=p.dtype))
            count += len(h)
            for i, b in enumerate(view.blocks):
                s, r = b.shortcut(h), b.branch(h)
                acc = sums[i]
                for j, t in enumerate((r, s)):
                    t = t.double()
                    acc[2 * j] = acc[2 * j] + t.sum(0)
                    acc[2 * j + 1] = acc[2 * j + 1] + t.pow(2).sum(0)
                h = b.post(s + r)
    if count < 2:
        raise PathensError("branch_variance needs at least 2 examples")

    def var(s1, s2):  # unbiased per-feature variance from sums, averaged over features
        return float(((s2 - s1 ** 2 / count) / (count - 1)).mean())

    bv = np.array([var(a[0], a[1]) for a in sums])
    sv = np.array([var(a[2], a[3]) for a in sums])
    if (sv <= 0).any():
        i = int(np.argmin(sv))
        raise PathensError(f"the shortcut of block {i} ({view.blocks[i].name}) has zero variance "
                           f"on these inputs; the ratio is undefined")
    ratios = bv / sv
    return BranchVariance(tuple(b.name for b in view.blocks), ratios, bv, sv,
                          paths.variance_ratio_distribution(ratios), count,
                          dict(batchnorm="eval (running statistics)", num_examples=count))


def _input_batches(data, batch_size: int):
    if torch.is_tensor(data):
        x = data
    elif isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        x = data[0]
    elif hasattr(data, "__iter__"):
        return [b[0] if isinstance(b, (tuple, list)) else b for b in data]
    else:
        raise PathensError(f"data must be inputs, an (inputs, targets) pair or a DataLoader, "
                           f"got {type(data).__name__}")
    if len(x) == 0:
        raise PathensError("data is empty: pass at least two examples")
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
