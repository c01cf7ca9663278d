"""Paths of an unraveled residual network: counting, enumerating, sampling, length distributions.

A network of n residual blocks, x_{i+1} = shortcut_i(x_i) + branch_i(x_i), expands into 2^n
paths (Veit, Wilber & Belongie 2016). At every block a path goes either through the branch or
across the shortcut, so a path is the subset of blocks whose *branch* it passes through, stored
here as a bool mask of shape (n,); its length k is the size of that subset (mask.sum()).
Block i is index i (0-based, first block = 0).

Blocks with several parallel branches (`y = post(S(x) + sum_j a_j R_j(x))`, Pythia's and Phi's
attention and MLP): a path then takes, at each block, the shortcut or ONE of its b_i branches,
so block i has b_i + 1 routes and the network prod(b_i + 1) paths; the number of paths of
length k is the coefficient of t^k in prod(1 + b_i t). Every function below whose argument is
`n` also takes, in its place, the sequence (b_1, ..., b_n) of per-block branch counts; a path
is then an int route array of shape (n,): 0 = the shortcut, j = branch j (1-based) of that
block, its length the number of nonzero entries. Where every b_i is 1 the results are exactly
those for the integer n (bool masks, C(n, k)).

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


def _blocks(n, name: str = "n") -> tuple[int, "np.ndarray | None"]:
    """(number of blocks, per-block branch counts b (n,) int64, or None when every block has
    one branch). n: an int, or a 1-D sequence of branch counts b_i >= 1."""
    if checks.is_integer(n) or isinstance(n, bool):
        return checks.non_negative(name, n), None
    try:
        values = list(n)
    except TypeError:
        raise PathensError(f"{name} must be a number of blocks or a sequence of per-block branch "
                           f"counts, got {n!r}") from None
    if any(not checks.is_integer(v) or v < 1 for v in values):
        bad = next(v for v in values if not checks.is_integer(v) or v < 1)
        raise PathensError(f"per-block branch counts must be integers >= 1, got {bad!r}")
    b = np.asarray(values, dtype=np.int64).reshape(len(values))
    return len(b), (None if (b == 1).all() else b)


def _route_dtype(b: np.ndarray):
    """The smallest signed integer type that holds route values 0..max(b)."""
    return np.int8 if b.max() < 2**7 else np.int16 if b.max() < 2**15 else np.int64


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


def path_counts(n) -> list[int]:
    """Exact number of paths of each length: counts[k] = C(n, k), k = 0..n (sums to 2^n).
    With per-block branch counts b (a sequence): the coefficients of prod_i (1 + b_i t)
    (sums to prod_i (b_i + 1)): a path of length k picks k blocks and one branch of each.

    Python ints, so exact for any n (C(500, 250) has 150 digits).
    """
    n, b = _blocks(n)
    if b is None:
        return [math.comb(n, k) for k in range(n + 1)]
    counts = [1] + [0] * n  # coefficients of the product over the blocks seen so far
    for i, bi in enumerate(b.tolist()):
        for k in range(i + 1, 0, -1):  # multiply by (1 + bi t), in place, high k first
            counts[k] += bi * counts[k - 1]
    return counts


def num_paths(n) -> int:
    """All paths: 2^n, or prod_i (b_i + 1) for per-block branch counts b."""
    n, b = _blocks(n)
    return 2**n if b is None else math.prod(int(v) + 1 for v in b)


def distribution_mean(p) -> float:
    """Mean path length sum_k k * p[k] of a length distribution p of shape (n+1,)."""
    p = _check_vector(p, "p")
    return float(np.arange(len(p)) @ p)


# -----------------------------------------------------------------------------
# analytic path-length distributions, each (n+1,) float64 summing to 1


def binomial_distribution(n) -> np.ndarray:
    """Fraction of all 2^n paths that have length k: C(n, k) / 2^n = Binomial(n, 1/2).
    With per-block branch counts b: path_counts(b)[k] / prod(b_i + 1), the Poisson binomial
    of p_i = b_i / (b_i + 1) (a block is passed through a branch by b_i of its b_i + 1 routes).

    This is also the path-length mix of an unnormalised He-init network, where every branch
    carries as much variance as its shortcut. Stable for large n (no 2^n is formed).
    """
    n, b = _blocks(n)
    if b is not None:
        return poisson_binomial(b / (b + 1.0))
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
    (stable; e_k itself overflows for large n). A block with several branches: pass
    r_i = sum_j r_ij (its paths of one more length carry r_i1 + ... + r_ib in all).
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


def enumerate_paths(n) -> np.ndarray:
    """Every path, shape (2^n, n) bool: row j is the path through the branches of the blocks
    whose bit is set in j (block i <-> bit i), so row 0 is all-shortcut, row 2^n - 1 all-branch.
    With per-block branch counts b: shape (prod(b_i + 1), n) int routes, row j the digits of j
    in the mixed radix (b_0 + 1, b_1 + 1, ...), block 0 the lowest digit (the same order).

    Allowed up to 2^20 paths (about a million).
    """
    n, b = _blocks(n)
    if b is None:
        if 2**n > MAX_ENUMERATED_PATHS:
            raise _too_many(2**n, f"a network of n={n} blocks")
        j = np.arange(2**n, dtype=np.int64)[:, None]  # (2^n, 1)
        return ((j >> np.arange(n)) & 1).astype(bool)  # (2^n, n)
    total = num_paths(b)
    if total > MAX_ENUMERATED_PATHS:
        raise _too_many(total, f"a network of {n} blocks with {int(b.sum())} branches")
    radix = b + 1
    place = np.concatenate([[1], np.cumprod(radix)[:-1]])  # (n,) value of each digit
    j = np.arange(total, dtype=np.int64)[:, None]  # (total, 1)
    return ((j // place) % radix).astype(_route_dtype(b))  # (total, n)


def paths_of_length(n, k: int) -> np.ndarray:
    """All C(n, k) paths of length exactly k, shape (C(n, k), n) bool, in lexicographic order of
    their block sets (itertools.combinations). Allowed while C(n, k) <= 2^20.
    With per-block branch counts b: all path_counts(b)[k] int routes, by block set in the same
    order, then by branches (itertools.product over the chosen blocks, the last fastest)."""
    n, b = _blocks(n)
    k = _check_length(n, k)
    count = math.comb(n, k) if b is None else path_counts(b)[k]
    if count > MAX_ENUMERATED_PATHS:
        raise _too_many(count, f"length k={k} in a network of n={n} blocks")
    if b is not None:
        rows = np.zeros((count, n), dtype=_route_dtype(b))
        r = 0
        for blocks in itertools.combinations(range(n), k):
            for choice in itertools.product(*(range(1, int(b[i]) + 1) for i in blocks)):
                rows[r, list(blocks)] = choice
                r += 1
        return rows
    flat = itertools.chain.from_iterable(itertools.combinations(range(n), k))
    blocks = np.fromiter(flat, dtype=np.intp, count=count * k).reshape(count, k)  # (C, k)
    masks = np.zeros((count, n), dtype=bool)
    masks[np.arange(count)[:, None], blocks] = True
    return masks


def sample_paths(n, k: int, size: int, *, seed=None) -> np.ndarray:
    """`size` paths of length k drawn independently and uniformly among the C(n, k) of them,
    shape (size, n) bool, each row with exactly k True.
    With per-block branch counts b: uniformly among the path_counts(b)[k] paths of length k,
    (size, n) int routes with k nonzero entries. A block set S is drawn with probability
    proportional to prod_{i in S} b_i (the number of paths through it), then one branch of
    each block of S uniformly: every path has probability 1 / path_counts(b)[k]. Where all
    b_i are equal this is Veit et al.'s protocol as it reads (k blocks uniformly, then a
    branch of each uniformly); with unequal b_i a uniform block set would favour the paths
    through blocks with few branches.

    seed: None (fresh randomness), an int, or a np.random.Generator; the same int seed gives
    the same paths.
    """
    n, b = _blocks(n)
    k = _check_length(n, k)
    size = checks.non_negative("size", size)
    rng = np.random.default_rng(seed)
    if b is not None:
        return _sample_routes(b, k, size, rng)
    # a uniformly random permutation of the blocks per row (argsort of iid keys); its first k
    # entries are then a uniformly random k-subset
    order = rng.random((size, n)).argsort(axis=1)  # (size, n)
    masks = np.zeros((size, n), dtype=bool)
    masks[np.arange(size)[:, None], order[:, :k]] = True
    return masks


def _sample_routes(b: np.ndarray, k: int, size: int, rng) -> np.ndarray:
    """Uniform paths of length k of a network with branch counts b: (size, n) int routes.

    Block by block, with r blocks still to take among blocks i..n-1, block i is taken with
    probability b_i e_{r-1}(b_{i+1..}) / e_r(b_{i..}) (e the elementary symmetric polynomial,
    in exact integers): the chance that a uniform path of length k through those blocks passes
    through one of block i's branches. The rows are drawn all at once, block by block."""
    n = len(b)
    e = [[0] * (k + 1) for _ in range(n + 1)]  # e[i][r] = e_r(b_i, ..., b_{n-1}), exact
    e[n][0] = 1
    for i in range(n - 1, -1, -1):
        e[i][0] = 1
        for r in range(1, k + 1):
            e[i][r] = e[i + 1][r] + int(b[i]) * e[i + 1][r - 1]
    take = np.zeros((n, k + 1))  # take[i, r]: P(block i is on the path | r blocks still to take)
    for i in range(n):
        for r in range(1, k + 1):
            if e[i][r]:
                take[i, r] = int(b[i]) * e[i + 1][r - 1] / e[i][r]  # exact ints, one rounding
    routes = np.zeros((size, n), dtype=_route_dtype(b))
    need = np.full(size, k)
    for i in range(n):
        on = rng.random(size) < take[i, need]
        routes[on, i] = rng.integers(1, int(b[i]) + 1, size=int(on.sum()))
        need -= on
    return routes


# -----------------------------------------------------------------------------
# the unraveled graph


def unraveled_graph(n) -> nx.DiGraph:
    """The unraveled network as a DAG whose source-to-sink paths are exactly the 2^n paths.

    Nodes: ("x", i), i = 0..n, the signal entering block i (source ("x", 0), sink ("x", n));
    per block i, ("branch", i) and ("skip", i), with edges ("x", i) -> ("branch" | "skip", i)
    -> ("x", i+1). Edge attribute `length` is 1 on the edge into a branch node and 0 elsewhere,
    so the sum of `length` along a path is its length. Graph attributes: source, sink, n.
    With per-block branch counts b: a block with b_i > 1 branches has the nodes
    ("branch", i, j), j = 1..b_i, in place of ("branch", i) (prod(b_i + 1) source-to-sink
    paths), and the graph attribute `branches` holds b.
    """
    n, b = _blocks(n)
    g = nx.DiGraph(source=("x", 0), sink=("x", n), n=n)
    if b is not None:
        g.graph["branches"] = b.tolist()
    g.add_nodes_from(("x", i) for i in range(n + 1))
    for i in range(n):
        many = b is not None and b[i] > 1
        nodes = [("branch", i, j) for j in range(1, int(b[i]) + 1)] if many else [("branch", i)]
        for node in nodes + [("skip", i)]:
            g.add_edge(("x", i), node, length=int(node[0] == "branch"))
            g.add_edge(node, ("x", i + 1), length=0)
    return g


def path_length(graph_path) -> int:
    """Length of a path of unraveled_graph given as its node list: the number of branch nodes."""
    return sum(1 for node in graph_path if node[0] == "branch")


def path_mask(graph_path, n) -> np.ndarray:
    """The (n,) bool mask of a path of unraveled_graph(n) given as its node list (with per-block
    branch counts b: its (n,) int routes, as enumerate_paths(b) gives them)."""
    n, b = _blocks(n)
    mask = np.zeros(n, dtype=bool if b is None else _route_dtype(b))
    for node in graph_path:
        if node[0] == "branch":
            i = node[1]
            if not 0 <= i < n:
                raise PathensError(f"node {node!r} is not in a graph of n={n} blocks: pass the "
                                   f"graph's n")
            j = node[2] if len(node) > 2 else 1
            if b is not None and not 1 <= j <= b[i]:
                raise PathensError(f"node {node!r}: block {i} has {int(b[i])} branches")
            mask[i] = True if b is None else j
    return mask
