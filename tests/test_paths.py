"""Oracles for pathens.paths: math.comb, brute-force enumeration, exact fractions, networkx."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import networkx as nx
import numpy as np
import pytest
from scipy.stats import chisquare

from pathens import paths as P

# -----------------------------------------------------------------------------
# counting and enumeration


@pytest.mark.parametrize("n", [0, 1, 5, 54, 500])
def test_path_counts_are_binomial_coefficients(n):
    counts = P.path_counts(n)
    assert counts == [math.comb(n, k) for k in range(n + 1)]
    assert all(type(c) is int for c in counts)
    assert sum(counts) == 2**n


@pytest.mark.parametrize("n", range(11))
def test_enumerate_paths_histogram_and_uniqueness(n):
    masks = P.enumerate_paths(n)
    assert masks.shape == (2**n, n) and masks.dtype == bool
    assert np.bincount(masks.sum(1), minlength=n + 1).tolist() == P.path_counts(n)
    assert len({row.tobytes() for row in masks}) == 2**n
    # row j = binary digits of j, block i <-> bit i
    j = np.arange(2**n)
    assert np.array_equal(masks.astype(np.int64) @ (1 << np.arange(n)), j)


@pytest.mark.parametrize("n", [0, 1, 4, 7, 10])
def test_paths_of_length_match_enumeration(n):
    everything = P.enumerate_paths(n)
    for k in range(n + 1):
        masks = P.paths_of_length(n, k)
        assert masks.shape == (math.comb(n, k), n) and masks.dtype == bool
        expected = {row.tobytes() for row in everything[everything.sum(1) == k]}
        got = [row.tobytes() for row in masks]
        assert len(set(got)) == len(got) and set(got) == expected


def test_paths_of_length_allows_large_n_when_few_paths():
    masks = P.paths_of_length(100, 2)
    assert masks.shape == (4950, 100) and (masks.sum(1) == 2).all()
    assert P.paths_of_length(300, 0).shape == (1, 300)


# -----------------------------------------------------------------------------
# unraveled graph


@pytest.mark.parametrize("n", range(9))
def test_unraveled_graph_paths_are_the_2n_paths(n):
    g = P.unraveled_graph(n)
    assert nx.is_directed_acyclic_graph(g)
    graph_paths = list(nx.all_simple_paths(g, g.graph["source"], g.graph["sink"])) if n else [[("x", 0)]]
    assert len(graph_paths) == 2**n
    lengths = [P.path_length(p) for p in graph_paths]
    assert np.bincount(lengths, minlength=n + 1).tolist() == P.path_counts(n)
    # the `length` edge attribute sums to the same length
    for p, k in zip(graph_paths, lengths):
        assert sum(g.edges[u, v]["length"] for u, v in zip(p, p[1:])) == k
    masks = {P.path_mask(p, n).tobytes() for p in graph_paths}
    assert masks == {row.tobytes() for row in P.enumerate_paths(n)}


def test_unraveled_graph_structure():
    g = P.unraveled_graph(3)
    assert g.graph["source"] == ("x", 0) and g.graph["sink"] == ("x", 3)
    assert g.number_of_nodes() == 4 + 2 * 3 and g.number_of_edges() == 4 * 3
    assert g.has_edge(("x", 1), ("branch", 1)) and g.has_edge(("skip", 2), ("x", 3))
    assert g.edges[("x", 0), ("branch", 0)]["length"] == 1
    assert g.edges[("branch", 0), ("x", 1)]["length"] == 0
    assert g.edges[("x", 0), ("skip", 0)]["length"] == 0


# -----------------------------------------------------------------------------
# sampling


def _uniformity_pvalue(masks, n, k):
    """Chi-square p-value of the hypothesis that `masks` are uniform over all C(n, k) paths."""
    index = {row.tobytes(): i for i, row in enumerate(P.paths_of_length(n, k))}
    freq = np.bincount([index[row.tobytes()] for row in masks], minlength=len(index))
    return chisquare(freq).pvalue  # expected: equal frequencies


def test_sample_paths_is_uniform():
    n, k = 6, 3
    masks = P.sample_paths(n, k, 20000, seed=0)
    assert masks.shape == (20000, n) and masks.dtype == bool
    assert (masks.sum(1) == k).all()
    assert _uniformity_pvalue(masks, n, k) > 1e-3


def test_uniformity_check_can_fail():
    # negative control: uniform over only the 10 paths through block 0 must be rejected
    n, k = 6, 3
    half = P.paths_of_length(n, k)
    half = half[half[:, 0]]
    assert len(half) == 10
    biased = half[np.random.default_rng(0).integers(len(half), size=20000)]
    assert _uniformity_pvalue(biased, n, k) < 1e-6


def test_sample_paths_seeding_and_edges():
    a = P.sample_paths(30, 7, 500, seed=123)
    assert np.array_equal(a, P.sample_paths(30, 7, 500, seed=123))
    assert not np.array_equal(a, P.sample_paths(30, 7, 500, seed=124))
    assert np.array_equal(a, P.sample_paths(30, 7, 500, seed=np.random.default_rng(123)))
    assert P.sample_paths(5, 0, 3, seed=0).sum() == 0
    assert P.sample_paths(5, 5, 3, seed=0).all()
    assert P.sample_paths(5, 2, 0).shape == (0, 5)


# -----------------------------------------------------------------------------
# distributions


def _elementary_symmetric(values, k):
    return sum((math.prod(c) for c in itertools.combinations(values, k)), Fraction(0))


def test_poisson_binomial_against_brute_force():
    p = np.random.default_rng(1).random(8)
    expected = np.zeros(9)
    for outcome in itertools.product([0, 1], repeat=8):
        o = np.array(outcome)
        expected[o.sum()] += np.prod(np.where(o == 1, p, 1 - p))
    np.testing.assert_allclose(P.poisson_binomial(p), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(P.poisson_binomial([]), [1.0])


def test_poisson_binomial_large_n_is_stable():
    p = np.random.default_rng(2).random(2000)
    dist = P.poisson_binomial(p)
    assert np.all(np.isfinite(dist)) and np.all(dist >= 0)
    assert abs(dist.sum() - 1) < 1e-12
    assert abs(P.distribution_mean(dist) - p.sum()) < 1e-8


def test_variance_ratio_distribution_is_normalised_e_k():
    r = [0.5, 2.0, 0.0, 1.5, 3.0]
    frac = [Fraction(x) for x in r]
    total = math.prod(1 + x for x in frac)
    expected = [float(_elementary_symmetric(frac, k) / total) for k in range(6)]
    np.testing.assert_allclose(P.variance_ratio_distribution(r), expected, rtol=1e-12, atol=1e-15)
    # r = 1 everywhere is the He-init binomial
    np.testing.assert_allclose(P.variance_ratio_distribution(np.ones(40)), P.binomial_distribution(40), atol=1e-15)


def test_bn_distribution_brute_force_n5():
    n = 5
    r = [Fraction(1, l) for l in range(1, n + 1)]
    expected = [float(_elementary_symmetric(r, k) / (n + 1)) for k in range(n + 1)]
    np.testing.assert_allclose(P.bn_variance_distribution(n), expected, rtol=1e-12)


def _stirling_first(m):
    """Unsigned Stirling numbers of the first kind c(m, j), j = 0..m, exact."""
    row = [1]
    for i in range(m):  # c(i+1, j) = c(i, j-1) + i c(i, j)
        row = [(row[j - 1] if j else 0) + (i * row[j] if j < len(row) else 0) for j in range(i + 2)]
    return row


def test_bn_distribution_equals_stirling_numbers():
    # e_k(1, 1/2, .., 1/n) / (n+1) = c(n+1, k+1) / (n+1)!: an independent exact oracle
    n = 54
    c = _stirling_first(n + 1)
    expected = [float(Fraction(c[k + 1], math.factorial(n + 1))) for k in range(n + 1)]
    np.testing.assert_allclose(P.bn_variance_distribution(n), expected, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("n", [3, 54, 500])
def test_bn_distribution_mean_is_harmonic(n):
    dist = P.bn_variance_distribution(n)
    assert dist.shape == (n + 1,)
    assert abs(dist.sum() - 1) < 1e-12
    harmonic = sum(1.0 / j for j in range(1, n + 2))
    assert abs(P.distribution_mean(dist) - (harmonic - 1)) < 1e-10


def test_binomial_distribution():
    n = 1000
    dist = P.binomial_distribution(n)
    assert dist.shape == (n + 1,) and abs(dist.sum() - 1) < 1e-12
    np.testing.assert_allclose(
        P.binomial_distribution(20), np.array(P.path_counts(20)) / 2**20, rtol=1e-12
    )


def test_design_claims_for_resnet110():
    # DESIGN.md: "for n = 54: 95% of paths have length 19-35". True as a lower bound (98.0%);
    # the shortest interval holding >= 95% is 20-34 (96.0%); 21-33 holds only 92.4%.
    dist = P.binomial_distribution(54)
    assert dist[19:36].sum() >= 0.98
    assert 0.95 <= dist[20:35].sum() < 0.96
    assert dist[21:34].sum() < 0.95
    # "paths 5-17 blocks long, 0.45% of all paths"
    assert abs(sum(P.path_counts(54)[5:18]) / 2**54 - 0.0045) < 0.0001


def test_skipinit_distribution():
    np.testing.assert_allclose(P.skipinit_distribution(30, 1.0), P.binomial_distribution(30), atol=1e-15)
    q = 0.3**2 / (1 + 0.3**2)
    expected = [math.comb(10, k) * q**k * (1 - q) ** (10 - k) for k in range(11)]
    np.testing.assert_allclose(P.skipinit_distribution(10, 0.3), expected, rtol=1e-12)
    np.testing.assert_array_equal(P.skipinit_distribution(4, 0.0), [1, 0, 0, 0, 0])
    # same as the variance-ratio model with r_i = alpha^2
    np.testing.assert_allclose(P.skipinit_distribution(50, 0.2), P.variance_ratio_distribution([0.04] * 50), atol=1e-15)


# -----------------------------------------------------------------------------
# errors


def test_enumerate_too_many_paths():
    assert P.enumerate_paths(20).shape == (2**20, 20)
    with pytest.raises(ValueError, match="sample_paths"):
        P.enumerate_paths(21)
    with pytest.raises(ValueError, match="sample_paths"):
        P.paths_of_length(40, 20)


@pytest.mark.parametrize("call", [
    lambda: P.paths_of_length(5, 6),
    lambda: P.paths_of_length(5, -1),
    lambda: P.sample_paths(5, 6, 10),
    lambda: P.sample_paths(5, 2, -1),
    lambda: P.sample_paths(5, 2.0, 10),
    lambda: P.path_counts(-1),
    lambda: P.path_counts(3.0),
    lambda: P.enumerate_paths(True),
    lambda: P.variance_ratio_distribution([1.0, -0.5]),
    lambda: P.variance_ratio_distribution([1.0, np.inf]),
    lambda: P.variance_ratio_distribution([1.0, np.nan]),
    lambda: P.variance_ratio_distribution([[1.0]]),
    lambda: P.poisson_binomial([0.5, 1.5]),
    lambda: P.skipinit_distribution(5, float("nan")),
])
def test_bad_arguments_raise_one_line_value_error(call):
    with pytest.raises(ValueError) as info:
        call()
    assert "\n" not in str(info.value)
