"""Blocks with several parallel branches, `y = post(S(x) + sum_j a_j R_j(x))`: Pythia /
GPT-NeoX (use_parallel_residual=True: x + attn(ln1(x)) + mlp(ln2(x))), Phi (one shared norm)
and a multi-branch CNN block registered here. A path takes, per block, the shortcut or ONE
branch: prod(b_i + 1) paths, prod(1 + b_i t) of them by length.

Oracles: brute-force enumeration (itertools.product over every block's routes; counting by
hand), every single path's gradient by autograd through the view with detach routes, summed
by length (against the exact sweep's G_k); the model's own autograd gradient (against
sum_k G_k); deep copies of the model edited by hand (forward hooks zeroing a sublayer's output)
against the view's deletions; the exact path counts against the sampled protocol's scaling."""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from torch import nn

import pathens
from pathens import lesion, paths as P

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---- combinatorics ---------------------------------------------------------------------------

BRANCHES = [[2, 1, 3], [2, 2, 2], [1, 4], [3]]


def by_hand(b):
    """Every path as a tuple of routes (0 shortcut, j branch j), by itertools.product."""
    return list(itertools.product(*[range(bi + 1) for bi in b]))


@pytest.mark.parametrize("b", BRANCHES)
def test_counts_and_enumeration_match_brute_force(b):
    every = by_hand(b)
    lengths = [sum(r > 0 for r in p) for p in every]
    counts = np.bincount(lengths, minlength=len(b) + 1).tolist()
    assert P.path_counts(b) == counts and P.num_paths(b) == len(every) == math.prod(
        v + 1 for v in b)
    routes = P.enumerate_paths(b)
    assert routes.shape == (len(every), len(b)) and routes.dtype.kind == "i"
    assert sorted(map(tuple, routes.tolist())) == sorted(every)
    for k in range(len(b) + 1):
        rows = P.paths_of_length(b, k)
        assert sorted(map(tuple, rows.tolist())) == sorted(p for p, n in zip(every, lengths)
                                                          if n == k)
    np.testing.assert_allclose(P.binomial_distribution(b), np.array(counts) / len(every),
                               rtol=1e-12)


def test_one_branch_everywhere_is_the_integer_case():
    """b = (1, ..., 1) gives exactly what n does: counts, bool masks, graph, samples."""
    n = 6
    assert P.path_counts([1] * n) == P.path_counts(n)
    assert np.array_equal(P.enumerate_paths([1] * n), P.enumerate_paths(n))
    assert P.enumerate_paths([1] * n).dtype == bool
    assert np.array_equal(P.sample_paths([1] * n, 3, 50, seed=4), P.sample_paths(n, 3, 50, seed=4))
    assert set(P.unraveled_graph([1] * n).nodes) == set(P.unraveled_graph(n).nodes)


@pytest.mark.parametrize("b,k", [([2, 1, 3], 2), ([1, 4, 1, 2], 2), ([2, 2, 2], 1)])
def test_sampled_paths_are_uniform_over_paths_of_their_length(b, k):
    """Chi-square against equal frequencies over the enumerated paths of length k (with
    unequal branch counts a uniform block set would fail it: the negative control)."""
    rows = P.sample_paths(b, k, 30000, seed=0)
    assert ((rows > 0).sum(1) == k).all()
    index = {tuple(r): i for i, r in enumerate(P.paths_of_length(b, k).tolist())}
    freq = np.bincount([index[tuple(r)] for r in rows.tolist()], minlength=len(index))
    assert chisquare(freq).pvalue > 1e-3
    if len(set(b)) > 1:  # the naive draw: k blocks uniformly, then a branch of each uniformly
        rng = np.random.default_rng(1)
        naive = []
        for _ in range(30000):
            r = [0] * len(b)
            for i in rng.choice(len(b), k, replace=False):
                r[i] = int(rng.integers(1, b[i] + 1))
            naive.append(index[tuple(r)])
        assert chisquare(np.bincount(naive, minlength=len(index))).pvalue < 1e-6


def test_unraveled_graph_with_branches():
    import networkx as nx
    b = [2, 1, 3]
    g = P.unraveled_graph(b)
    found = list(nx.all_simple_paths(g, g.graph["source"], g.graph["sink"]))
    assert len(found) == P.num_paths(b) and g.graph["branches"] == b
    assert np.bincount([P.path_length(p) for p in found]).tolist() == P.path_counts(b)
    assert sorted(tuple(P.path_mask(p, b).tolist()) for p in found) == sorted(by_hand(b))
    assert g.has_edge(("x", 0), ("branch", 0, 2)) and g.has_edge(("x", 1), ("branch", 1))


@pytest.mark.parametrize("call", [lambda: P.path_counts([2, 0]), lambda: P.path_counts([2, 1.5]),
                                  lambda: P.sample_paths([2, 2], 3, 1),
                                  lambda: P.enumerate_paths([3] * 11)])
def test_bad_branch_counts_are_one_line(call):
    with pytest.raises(pathens.PathensError) as e:
        call()
    assert "\n" not in str(e.value)
