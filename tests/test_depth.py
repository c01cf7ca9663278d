"""Effective depth and branch variance, against closed forms, brute force and direct
computation."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import pathens
from pathens import paths
from pathens.depth import branch_variance, effective_depth, from_distribution, shortest_interval
from pathens.lesion import LesionResult
from pathens.modes import recalibrate_batchnorm
from nets import VARIANTS, batch, small_resnet


def brute_interval(w, level):
    """Shortest lo..hi with at least `level` of the mass; ties: most mass (O(n^3))."""
    p = np.asarray(w, float) / np.sum(w)
    best = None
    for lo, hi in itertools.combinations_with_replacement(range(len(p)), 2):
        m = p[lo:hi + 1].sum()
        if m >= level - 1e-12:
            key = (hi - lo, -m)
            if best is None or key < best[0]:
                best = (key, (lo, hi))
    return best[1]


@pytest.mark.parametrize("seed", range(5))
def test_shortest_interval_matches_brute_force(seed):
    w = np.random.default_rng(seed).exponential(size=15) ** 3
    for level in (0.5, 0.9, 0.99, 1.0):
        lo, hi, mass = shortest_interval(w, level)
        assert (lo, hi) == brute_interval(w, level)
        assert mass == pytest.approx(w[lo:hi + 1].sum() / w.sum())


def test_known_intervals_of_the_paper():
    # 95% of ResNet-110's 2^54 paths have lengths 20..34 (the shortest such range; 96.0%)
    ed = from_distribution(paths.binomial_distribution(54), level=0.95)
    assert ed.interval == (20, 34)
    assert ed.mass == pytest.approx(sum(math.comb(54, k) for k in range(20, 35)) / 2 ** 54)
    assert 0.95 <= ed.mass < 0.96
    assert ed.mean == pytest.approx(27) and ed.mode == 27
    assert ed.path_fraction == pytest.approx(ed.mass, rel=1e-9)
    # Veit et al.: lengths 5..17 are 0.45% of all paths
    w = np.zeros(55)
    w[5:18] = 1.0
    ed = from_distribution(w, level=1.0)
    assert ed.interval == (5, 17)
    assert ed.path_fraction == pytest.approx(sum(math.comb(54, k) for k in range(5, 18)) / 2 ** 54)
    assert ed.path_fraction == pytest.approx(0.004537, abs=1e-6)


def test_gradient_based_effective_depth():
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, y = batch(4)
    pg = pathens.path_gradients(view, x, y, progress=False)
    ed = effective_depth(pg)
    w = pg.total / pg.total.sum()
    assert ed.depth == pytest.approx(float((np.arange(10) * w).sum()))
    assert ed.mode == int(np.argmax(pg.total)) and ed.interval == brute_interval(pg.total, 0.9)
    energy = effective_depth(pg, quantity="energy", level=0.5)
    assert energy.interval == brute_interval(pg.total ** 2, 0.5)
    sampled = pathens.path_gradients(view, x, y, method="sampled", samples_per_length=2,
                                     lengths=[0, 1], progress=False)
    with pytest.raises(pathens.PathensError, match="every length"):
        effective_depth(sampled)


def lesion_result(means, intact=0.10):
    rows = [dict(kind="intact", k=0, error=intact, nonfinite=0, tau=math.nan, loss=0.3,
                 error_lo=0, error_hi=1)]
    for k, errs in enumerate(means, start=1):
        for t, e in enumerate(errs):
            rows.append(dict(kind="delete", k=k, trial=t, error=e, nonfinite=int(math.isnan(e)),
                             tau=math.nan, loss=1.0, error_lo=0, error_hi=1))
    return LesionResult("delete_random", rows, intact, 0.3, 100, tuple("b%d" % i for i in range(9)),
                        (), {})


def test_lesion_based_effective_depth():
    # mean errors per k: .105, .115, .14, .11 -> with a 2-point margin, k = 2 survives; k = 4
    # is back within the margin but k = 3 already failed, so it does not count.
    r = lesion_result([[0.10, 0.11], [0.11, 0.12], [0.13, 0.15], [0.11, 0.11]])
    ed = effective_depth(r, margin=0.02)
    assert ed.depth == 2 and ed.interval == (0, 2)
    np.testing.assert_allclose(ed.distribution, [0.105, 0.115, 0.14, 0.11])
    assert effective_depth(r, margin=0.05).depth == 4
    assert effective_depth(r, margin=0.0).depth == 0
    with pytest.raises(pathens.PathensError, match="delete_random"):
        effective_depth(LesionResult("delete_each", r.rows, 0.1, 0.3, 100, (), (), {}))


def test_branch_variance_equals_direct_computation():
    model = small_resnet(20, **VARIANTS[4][1])  # SkipInit with alphas in [0.3, 0.9]
    x, _ = batch(7)
    bv = branch_variance(model, x, batch_size=3)  # batches of 3 accumulate exactly
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0])))
             for b in model.modules() if isinstance(b, pathens.models.ResidualBlock)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    want = []
    for blk, h in inputs:
        h = h.detach()
        s = h if blk.shortcut is None else blk.shortcut(h)
        r = (blk.alpha * blk.branch(h)).detach()
        want.append(float(r.var(0).mean() / s.var(0).mean()))
    np.testing.assert_allclose(bv.ratios, want, rtol=1e-10)
    np.testing.assert_allclose(bv.distribution, paths.variance_ratio_distribution(bv.ratios))
    # Doubling block 0's alpha quadruples its ratio (its input and shortcut do not change).
    with torch.no_grad():
        model.layer1[0].alpha.mul_(2)
    assert branch_variance(model, x).ratios[0] == pytest.approx(4 * bv.ratios[0], rel=1e-10)
    ed = effective_depth(bv)
    assert ed.source == "variance" and ed.depth == pytest.approx(paths.distribution_mean(bv.distribution))


def test_batchnorm_branches_carry_about_one_over_l():
    # De & Smith: with BN on a pre-activation branch at initialisation, Var(x_{l+1}) ~
    # Var(x_l) + 1, so block l's ratio is about 1/(l+1) (first stage; measured 0.63-0.9 x).
    torch.manual_seed(0)
    model = pathens.cifar_resnet(56, preact=True)
    x = torch.randn(256, 3, 32, 32)
    recalibrate_batchnorm(model, x)
    r = branch_variance(model, x).ratios
    scaled = r[:9] * np.arange(2, 11)
    assert ((scaled > 0.5) & (scaled < 1.2)).all(), scaled


def test_branch_variance_bad_input():
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    with pytest.raises(pathens.PathensError, match="at least 2"):
        branch_variance(view, batch(1)[0])
    with pytest.raises(pathens.PathensError, match="empty"):
        branch_variance(view, batch(2)[0][:0])
    with pytest.raises(pathens.PathensError, match="takes a PathGradients"):
        effective_depth([1, 2, 3])
