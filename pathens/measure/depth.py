"""Effective depth, three ways, each with the path-length distribution behind it.

1. gradient-based: from a PathGradients result, the distribution of gradient magnitude over
   path lengths: its mean, mode and the shortest interval of lengths holding `level` (90%) of
   it, with the fraction of all 2^n paths that interval contains (Veit et al.: 5-17 of 54
   blocks, 0.45% of the paths, carry almost all the gradient of ResNet-110).
2. lesion-based: from a delete_random result, the largest number k of random blocks that can
   be deleted together while the mean error over the trials stays within `margin` of the intact
   error (for that k and every smaller k tested), with a confidence interval from the per-k
   bands of the trials; given the delete_each result too, how many single blocks can each be
   deleted within the margin, and the exact error of one random deletion (every draw measured).
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

from .. import checks, distributed, combinatorics as paths
from ..errors import PathensError
from ..data.batches import Data
from ..models.modes import eval_mode
from ..results import Result
from ..view.residual_view import wrap


@dataclass(frozen=True)
class EffectiveDepth(Result):
    """Effective depth of a network, with the distribution over path lengths it comes from.

    source:        "gradients", "variance" or "lesion".
    mean, mode:    of `distribution` over lengths 0..n (lesion: NaN, not a distribution).
    interval:      (lo, hi), the shortest range of lengths holding at least `level` of the
                   distribution (ties: the one holding most); lesion: a `level` confidence
                   interval on `depth` (see _from_lesion).
    level:         the interval's mass (gradients, variance) or confidence (lesion).
    mass:          the share of the distribution inside the interval (>= level; lesion: NaN).
    path_fraction: the share of all 2^n paths whose length lies in the interval (lesion: NaN).
    depth:         the headline number: the mean length (gradients, variance) or the largest
                   tested k deletable within the margin (lesion).
    distribution:  weights over lengths 0..n (sums to 1); lesion: mean error per k tested.
    details:       what else the source says (e.g. the lesion margin and single-block counts,
                   the variance ratios).
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
        return f"EffectiveDepth({self.describe()})"

    def describe(self) -> str:
        """One line saying what the number is, with its interval (used by repr and reports)."""
        lo, hi = self.interval
        if self.source != "lesion":
            zero = self.details.get("zero_gradient")
            return (f"{self.source}: {self.depth:.2f} of {self.num_blocks} blocks; "
                    f"{self.level:.0%} in lengths {lo}..{hi}, {self.path_fraction:.3%} of paths"
                    + ("; every branch passes zero gradient back (zero-initialised branch ends)"
                       if zero else ""))
        d = self.details
        trials = "/".join(map(str, sorted(set(d["trials"]))))
        unit = d.get("unit", "block")
        text = (f"lesion: {int(self.depth)} of {self.num_blocks} {unit}s deletable at random with "
                f"the mean error within {100 * d['margin']:.3g} points of the intact "
                f"{d['intact_error']:.2%}; {self.level:.0%} CI {lo}..{hi} over the tested k "
                f"{_ks(d['ks'])} ({trials} trials each)")
        if d.get("single_tested") is not None:
            text += (f"; single {unit}s: {d['single_within']} of {d['single_tested']} each "
                     f"within the margin")
        return text


def shortest_interval(weights, level: float = 0.9) -> tuple[int, int, float]:
    """(lo, hi, mass): the shortest range lo..hi of indices whose weights sum to at least
    `level` of the total; among equally short ranges, the one holding the most."""
    w = np.asarray(weights, float)
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise PathensError("weights must be a non-empty vector of finite, non-negative numbers "
                           "with a positive sum")
    checks.level(level)
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
                      details: Optional[dict] = None, branches=None) -> EffectiveDepth:
    """Effective depth of a distribution of weights over path lengths 0..n. branches: the
    view's per-block branch counts where blocks have parallel branches (the share of paths
    inside the interval then counts prod(b_i + 1) paths)."""
    w = np.asarray(weights, float)
    lo, hi, mass = shortest_interval(w, level)
    p = w / w.sum()
    n = len(p) - 1
    counts = paths.path_counts(n if branches is None else branches)
    inside = sum(counts[lo:hi + 1]) / sum(counts)  # exact integers, then one division
    mean = float((np.arange(n + 1) * p).sum())
    return EffectiveDepth(source, n, mean, mean, int(np.argmax(p)), (lo, hi), level, mass,
                          float(inside), p, details or {})


def effective_depth(result, *, level: float = 0.9, quantity: str = "magnitude",
                    margin: float = 0.02, confidence: float = 0.95,
                    single=None) -> EffectiveDepth:
    """Effective depth from a PathGradients, BranchVariance or delete_random LesionResult.

    level (gradients, variance): the mass of the shortest interval of lengths.
    quantity (gradients): "magnitude" weighs length k by total[k] (Veit et al.), "energy" by
        total[k]^2 (for the exact method, the share of ||g||^2 when paths are uncorrelated:
        the quantity the analytic variance models predict).
    margin (lesion): the error increase over the intact network still counted as surviving
        (0.02 = 2 points).
    confidence (lesion): the level of the per-k bands the interval on k is built from.
    single (lesion): the delete_each result of the same network and data, for the single-block
        counts and the exact k = 1 (see _from_lesion).
    """
    from .path_gradients import PathGradients
    from .lesion import LesionResult

    if single is not None and not isinstance(result, LesionResult):
        raise PathensError("single= (a delete_each result) goes with a delete_random result only")

    if isinstance(result, PathGradients):
        if quantity not in ("magnitude", "energy"):
            raise PathensError(f"quantity must be 'magnitude' or 'energy', got {quantity!r}")
        n = result.num_blocks
        if len(result.lengths) != n + 1:
            raise PathensError("effective_depth needs every length 0..n measured; this sampled "
                               "result has only some (drop lengths= to measure all)")
        w = result.total ** 2 if quantity == "energy" else result.total
        zero = result.config.get("zero_gradient")  # a degenerate profile (zero_gradient.py)
        if np.isfinite(w).all() and not np.any(w):
            raise PathensError("no gradient-based effective depth: the gradient is zero at every "
                               "path length: " + (zero or "the loss gradient at the first "
                                                  "block's input is exactly zero"))
        details = dict(method=result.method, quantity=quantity)
        if zero:
            details["zero_gradient"] = zero
        return from_distribution(w, level=level, source="gradients", details=details,
                                 branches=result.config.get("branches"))
    if isinstance(result, BranchVariance):
        return from_distribution(result.distribution, level=level, source="variance",
                                 details=dict(ratios=result.ratios.tolist()))
    if isinstance(result, LesionResult):
        return _from_lesion(result, margin, confidence, single)
    raise PathensError(f"effective_depth takes a PathGradients, BranchVariance or LesionResult, "
                       f"got {type(result).__name__}")


def _from_lesion(result, margin: float, confidence: float = 0.95, single=None) -> EffectiveDepth:
    """Lesion-based effective depth of a delete_random result.

    depth: the largest tested k such that the mean error over the trials with k random blocks
        deleted stays within `margin` of the intact error, for that k and every smaller k
        tested (the means need not be monotone in k: a k back within the margin after one that
        failed does not count). Only tested ks can be the answer: with ks 1, 2, 4, 8 a depth
        of 4 means "4 passes, 8 fails", the untested 5..7 unknown.
    interval (a `confidence` interval on depth): the same rule applied to the upper ends of the
        per-k bands of result.summary() gives lo (every k up to lo is within the margin even
        at its band's top), applied to the lower ends gives hi (the largest k the trials cannot
        exclude). The bands are t intervals over the trials (a single trial: its Wilson
        interval); they measure the spread of the random draws on these examples, not the
        test set's own sampling error, which every condition and the intact error share.
    single: the delete_each result of the same network and data. It measures every possible
        single deletion, so at k = 1 it replaces the trials: the expected error of one random
        deletion is exactly its mean over the blocks delete_random draws from (band of zero
        width). details then count the single blocks each deletable within the margin.
    """
    if result.sweep != "delete_random":
        raise PathensError(f"a lesion-based effective depth needs a delete_random result, got "
                           f"{result.sweep}")
    checks.margin(margin)
    checks.number("confidence", confidence, low=0, high=1, open_low=True, open_high=True)
    rows = result.summary(level=confidence)
    threshold = result.intact_error + margin
    ks = [r["k"] for r in rows]
    means = [r["error_mean"] for r in rows]
    tops = [r["error_hi"] for r in rows]
    bottoms = [r["error_lo"] for r in rows]
    details = dict(margin=margin, intact_error=result.intact_error, threshold=threshold, ks=ks,
                   trials=[r["trials"] for r in rows], confidence=confidence,
                   band="t over trials (Wilson for one trial)")
    if single is not None:
        exact = _single_blocks(result, single, threshold, details)
        if 1 in ks:
            i = ks.index(1)
            means[i] = tops[i] = bottoms[i] = exact
        else:
            ks, means, tops, bottoms = [1] + ks, [exact] + means, [exact] + tops, [exact] + bottoms

    def largest(errors) -> int:
        survived = 0
        for k, e in zip(ks, errors):
            if not e <= threshold:  # NaN (every trial non-finite) counts as failed
                break
            survived = k
        return survived

    depth = largest(means)
    later = [k for k in ks if k > depth]
    details["next_tested_k"] = later[0] if later else None
    unit = result.config.get("unit", "block")
    details["unit"] = unit
    n = len(result.units(unit))  # blocks, or layers
    return EffectiveDepth("lesion", n, float(depth), math.nan, math.nan,
                          (largest(tops), largest(bottoms)), confidence, math.nan, math.nan,
                          np.array([r["error_mean"] for r in rows]), details)


def _single_blocks(result, single, threshold: float, details: dict) -> float:
    """Fill details with delete_each's single-block counts; return the exact mean error of
    one random deletion from delete_random's pool."""
    if getattr(single, "sweep", None) != "delete_each":
        raise PathensError(f"single must be a delete_each result, got "
                           f"{getattr(single, 'sweep', type(single).__name__)}")
    same = (single.block_names == result.block_names
            and single.num_examples == result.num_examples
            and single.config.get("data") == result.config.get("data"))
    if not same:
        raise PathensError("single must be delete_each on the same network and data as the "
                           "delete_random result (blocks, examples and data fingerprint differ)")
    rows = [r for r in single.rows if r["kind"] == "delete"]
    exclude = result.config.get("exclude_downsampling", True)
    pool = [r for r in rows if not (exclude and r["downsampling"])]
    within = [r["deleted"][0] for r in rows if r["error"] <= threshold]  # NaN: not within
    errors = np.array([r["error"] for r in pool], float)
    exact = float(errors.mean()) if len(errors) and np.isfinite(errors).all() else math.nan
    details.update(single_tested=len(rows), single_within=len(within), single_within_blocks=within,
                   single_pool=len(pool),
                   single_pool_within=sum(r["deleted"][0] in within for r in pool),
                   single_pool_mean_error=exact,
                   k1="delete_each: the mean over every block of the pool (exact)")
    return exact


def _ks(ks) -> str:
    return ", ".join(map(str, ks))


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
    n = view.num_blocks
    sums = [[0.0, 0.0, 0.0, 0.0] for _ in range(n)]  # per block: S(r), S(r^2), S(s), S(s^2) per feature
    count = 0
    with eval_mode(view.model):
        for x in Data(view, data, batch_size, labelled=False).inputs():
            h, ctx = view.embed(x)
            count += len(h)
            for i, b in enumerate(view.blocks):
                s, r = b.shortcut(h), b.branch(h, ctx)
                acc = sums[i]
                for j, t in enumerate((r, s)):
                    t = t.double()
                    acc[2 * j] = acc[2 * j] + t.sum(0)
                    acc[2 * j + 1] = acc[2 * j + 1] + t.pow(2).sum(0)
                h = b.post(s + r)
    # sums over disjoint examples: over the ranks of a torch.distributed run too
    count = int(distributed.all_sum([count])[0])
    sums = [[distributed.all_sum_tensor(t) if torch.is_tensor(t) else t for t in acc]
            for acc in sums]
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
