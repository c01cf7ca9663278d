"""Paths of an unraveled residual network: counting, enumerating, sampling, length distributions.

A network of n residual blocks, x_{i+1} = shortcut_i(x_i) + branch_i(x_i), expands into 2^n
paths (Veit, Wilber & Belongie 2016). At every block a path goes either through the branch or
across the shortcut, so a path is the subset of blocks whose *branch* it passes through, stored
here as a bool mask of shape (n,); its length k is the size of that subset (mask.sum()).
Block i is index i (0-based, first block = 0).

This module is pure combinatorics (numpy, scipy, networkx; no torch): how many paths of each
length there are, every path or a uniform sample of them, the unraveled graph, and the analytic
path-length distributions of DESIGN.md section 1 (He-init binomial, BN variance model, SkipInit,
and the measured variance-ratio model). Every distribution is an array p of shape (n+1,) with
p[k] = the probability (fraction) of path length k, k = 0..n.
"""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np
from scipy.stats import binom

from . import checks
from .errors import PathensError

MAX_ENUMERATED_PATHS = 2**20  # above this, enumerating masks is too big: sample instead

# -----------------------------------------------------------------------------
# argument checks (each error is one line that says what to do)


def _check_length(n: int, k) -> int:
    k = checks.non_negative("k", k)
    if k > n:
        raise PathensError(f"path length k={k} is impossible with n={n} blocks: use 0 <= k <= n")
    return k


def _check_vector(values, name: str) -> np.ndarray:
    """A finite 1-D float64 array (a list of per-block numbers)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise PathensError(f"{name} must be a 1-D sequence of per-block numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise PathensError(f"{name} must be finite, got {float(x[~np.isfinite(x)][0])}: drop or fix that block")
    return x


def _too_many(count: int, what: str) -> PathensError:
    return PathensError(
        f"{what} has {count} paths, too many to enumerate (limit {MAX_ENUMERATED_PATHS}): "
        f"use sample_paths(n, k, size) instead"
    )


# -----------------------------------------------------------------------------
# counting


def path_counts(n: int) -> list[int]:
    """Exact number of paths of each length: counts[k] = C(n, k), k = 0..n (sums to 2^n).

    Python ints, so exact for any n (C(500, 250) has 150 digits).
    """
    n = checks.non_negative("n", n)
    return [math.comb(n, k) for k in range(n + 1)]


def distribution_mean(p) -> float:
    """Mean path length sum_k k * p[k] of a length distribution p of shape (n+1,)."""
    p = _check_vector(p, "p")
    return float(np.arange(len(p)) @ p)


# -----------------------------------------------------------------------------
# analytic path-length distributions, each (n+1,) float64 summing to 1


def binomial_distribution(n: int) -> np.ndarray:
    """Fraction of all 2^n paths that have length k: C(n, k) / 2^n = Binomial(n, 1/2).

    This is also the path-length mix of an unnormalised He-init network, where every branch
    carries as much variance as its shortcut. Stable for large n (no 2^n is formed).
    """
    n = checks.non_negative("n", n)
    return binom.pmf(np.arange(n + 1), n, 0.5)


def poisson_binomial(p) -> np.ndarray:
    """P(K = k), k = 0..n, for K = the number of successes among independent Bernoulli(p_i).

    Multiplies the polynomials (1 - p_i) + p_i t one block at a time: every intermediate is a
    probability vector, so nothing overflows or cancels (O(n^2), fine for n in the thousands).
    """
    p = _check_vector(p, "p")
    if np.any((p < 0) | (p > 1)):
        raise PathensError("probabilities p must lie in [0, 1]: check the per-block values")
    dist = np.zeros(len(p) + 1)  # dist[k] = P(k successes among the blocks seen so far)
    dist[0] = 1.0
    for i, pi in enumerate(p):
        # blocks 0..i seen: counts 0..i+1 are possible
        dist[1 : i + 2] = dist[1 : i + 2] * (1 - pi) + dist[: i + 1] * pi
        dist[0] *= 1 - pi
    return dist


def variance_ratio_distribution(r) -> np.ndarray:
    """Path-length mix from each block's branch-to-skip variance ratio r_i >= 0, shape (n+1,).

    The measured variance model of DESIGN.md: a path through the branches of the blocks in S
    carries variance prod_{i in S} r_i (relative to the all-shortcut path), so the share of
    length k is P(k) = e_k(r_1..r_n) / prod_i (1 + r_i), with e_k the elementary symmetric
    polynomial. That is exactly poisson_binomial(r_i / (1 + r_i)), which is how it is computed
    (stable; e_k itself overflows for large n).
    """
    r = _check_vector(r, "r")
    if np.any(r < 0):
        raise PathensError(
            f"variance ratios r must be >= 0, got {float(r[r < 0][0])}: pass Var(branch) / Var(skip) per block"
        )
    return poisson_binomial(r / (1 + r))


def bn_variance_distribution(n: int) -> np.ndarray:
    """BatchNorm variance model: P(k) = e_k(1, 1/2, ..., 1/n) / (n+1), shape (n+1,).

    With BN on the branch Var(x_{l+1}) ~ Var(x_l) + 1, so block l (1-based) has branch-to-skip
    variance ratio 1/l: variance_ratio_distribution with r_l = 1/l (prod(1 + 1/l) = n+1).
    Mean path length H_{n+1} - 1 (harmonic number), about ln(n) - 0.42: shallow paths dominate.
    """
    n = checks.non_negative("n", n)
    return variance_ratio_distribution(1.0 / np.arange(1, n + 1))


def skipinit_distribution(n: int, alpha: float) -> np.ndarray:
    """SkipInit with branch scale alpha: Binomial(n, alpha^2 / (1 + alpha^2)), shape (n+1,).

    Every block has branch-to-skip variance ratio alpha^2; alpha = 1 gives binomial_distribution.
    """
    n = checks.non_negative("n", n)
    checks.alpha(alpha)
    q = (alpha / math.hypot(1.0, alpha)) ** 2  # = alpha^2 / (1 + alpha^2), no overflow for huge alpha
    return binom.pmf(np.arange(n + 1), n, q)


# -----------------------------------------------------------------------------
# paths as bool masks over blocks


def enumerate_paths(n: int) -> np.ndarray:
    """Every path, shape (2^n, n) bool: row j is the path through the branches of the blocks
    whose bit is set in j (block i <-> bit i), so row 0 is all-shortcut, row 2^n - 1 all-branch.

    Allowed for n <= 20 (about a million paths).
    """
    n = checks.non_negative("n", n)
    if 2**n > MAX_ENUMERATED_PATHS:
        raise _too_many(2**n, f"a network of n={n} blocks")
    j = np.arange(2**n, dtype=np.int64)[:, None]  # (2^n, 1)
    return ((j >> np.arange(n)) & 1).astype(bool)  # (2^n, n)


def paths_of_length(n: int, k: int) -> np.ndarray:
    """All C(n, k) paths of length exactly k, shape (C(n, k), n) bool, in lexicographic order of
    their block sets (itertools.combinations). Allowed while C(n, k) <= 2^20."""
    n = checks.non_negative("n", n)
    k = _check_length(n, k)
    count = math.comb(n, k)
    if count > MAX_ENUMERATED_PATHS:
        raise _too_many(count, f"length k={k} in a network of n={n} blocks")
    flat = itertools.chain.from_iterable(itertools.combinations(range(n), k))
    blocks = np.fromiter(flat, dtype=np.intp, count=count * k).reshape(count, k)  # (C, k)
    masks = np.zeros((count, n), dtype=bool)
    masks[np.arange(count)[:, None], blocks] = True
    return masks


def sample_paths(n: int, k: int, size: int, *, seed=None) -> np.ndarray:
    """`size` paths of length k drawn independently and uniformly among the C(n, k) of them,
    shape (size, n) bool, each row with exactly k True.

    seed: None (fresh randomness), an int, or a np.random.Generator; the same int seed gives
    the same paths.
    """
    n = checks.non_negative("n", n)
    k = _check_length(n, k)
    size = checks.non_negative("size", size)
    rng = np.random.default_rng(seed)
    # a uniformly random permutation of the blocks per row (argsort of iid keys); its first k
    # entries are then a uniformly random k-subset
    order = rng.random((size, n)).argsort(axis=1)  # (size, n)
    masks = np.zeros((size, n), dtype=bool)
    masks[np.arange(size)[:, None], order[:, :k]] = True
    return masks


# -----------------------------------------------------------------------------
# the unraveled graph


def unraveled_graph(n: int) -> nx.DiGraph:
    """The unraveled network as a DAG whose source-to-sink paths are exactly the 2^n paths.

    Nodes: ("x", i), i = 0..n, the signal entering block i (source ("x", 0), sink ("x", n));
    per block i, ("branch", i) and ("skip", i), with edges ("x", i) -> ("branch" | "skip", i)
    -> ("x", i+1). Edge attribute `length` is 1 on the edge into a branch node and 0 elsewhere,
    so the sum of `length` along a path is its length. Graph attributes: source, sink, n.
    """
    n = checks.non_negative("n", n)
    g = nx.DiGraph(source=("x", 0), sink=("x", n), n=n)
    g.add_nodes_from(("x", i) for i in range(n + 1))
    for i in range(n):
        for kind in ("branch", "skip"):
            g.add_edge(("x", i), (kind, i), length=int(kind == "branch"))
            g.add_edge((kind, i), ("x", i + 1), length=0)
    return g


def path_length(graph_path) -> int:
    """Length of a path of unraveled_graph given as its node list: the number of branch nodes."""
    return sum(1 for node in graph_path if node[0] == "branch")


def path_mask(graph_path, n: int) -> np.ndarray:
    """The (n,) bool mask of a path of unraveled_graph(n) given as its node list."""
    n = checks.non_negative("n", n)
    mask = np.zeros(n, dtype=bool)
    for kind, i in graph_path:
        if kind == "branch":
            if not 0 <= i < n:
                raise PathensError(f"node ('branch', {i}) is not in a graph of n={n} blocks: pass the graph's n")
            mask[i] = True
    return mask
