"""Effective depth and branch variance, against closed forms, brute force and direct
computation."""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import pathens
from pathens import paths
from pathens.measure.depth import branch_variance, effective_depth, from_distribution, shortest_interval
from pathens.measure.lesion import LesionResult
from pathens.models.modes import recalibrate_batchnorm
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
    # the interval is now a 95% CI on the depth (see test_lesion_depth_interval_...); with two
    # trials per k the t bands are wide: k = 1's top already exceeds the margin, and no k's
    # bottom does
    assert ed.depth == 2 and ed.interval == (0, 4)
    np.testing.assert_allclose(ed.distribution, [0.105, 0.115, 0.14, 0.11])
    assert effective_depth(r, margin=0.05).depth == 4
    assert effective_depth(r, margin=0.0).depth == 0
    with pytest.raises(pathens.PathensError, match="delete_random"):
        effective_depth(LesionResult("delete_each", r.rows, 0.1, 0.3, 100, (), (), {}))


def t_band(errors, level=0.95):
    """mean -+ t sd / sqrt(m), clipped to [0, 1]: the test's own band over trials."""
    e = np.asarray(errors, float)
    half = stats.t.ppf(0.5 + level / 2, len(e) - 1) * e.std(ddof=1) / math.sqrt(len(e))
    return max(0.0, e.mean() - half), min(1.0, e.mean() + half)


def prefix_max(ks, ok):
    """The largest k such that ok holds for it and every smaller k (0 if none)."""
    best = 0
    for k, good in zip(ks, ok):
        if not good:
            break
        best = k
    return best


def test_lesion_depth_interval_from_the_trials():
    """depth 2; the CI's low end is the last k whose whole band is within the margin (1), its
    high end the last k whose band reaches into it (3): computed here from the trials."""
    trials = [[0.10, 0.11, 0.10, 0.11], [0.10, 0.13, 0.11, 0.12], [0.12, 0.15, 0.11, 0.14],
              [0.20, 0.25, 0.22, 0.24]]
    r = lesion_result(trials)
    ed = effective_depth(r, margin=0.02)
    threshold = 0.12
    bands = [t_band(t) for t in trials]
    ks = [1, 2, 3, 4]
    want = (prefix_max(ks, [hi <= threshold for _, hi in bands]),
            prefix_max(ks, [lo <= threshold for lo, _ in bands]))
    assert want == (1, 3) and ed.depth == 2  # the data were chosen to separate the three
    assert ed.interval == want and ed.level == 0.95
    assert effective_depth(r, margin=0.02, confidence=0.5).interval[0] >= want[0]
    text = repr(ed)
    assert "nan" not in text.lower()
    assert "2 of 9 blocks" in text and "95% CI 1..3" in text and "2 points" in text
    assert "1, 2, 3, 4" in text and "4 trials" in text
    assert ed.details["next_tested_k"] == 3
    for bad in (dict(confidence=1.0), dict(confidence=0)):
        with pytest.raises(pathens.PathensError, match="confidence"):
            effective_depth(r, **bad)


def delete_each_result(errors, down=(3, 6), intact=0.10):
    rows = [dict(kind="intact", k=0, trial=0, deleted=[], downsampling=False, error=intact,
                 nonfinite=0, tau=math.nan, loss=0.3, error_lo=0, error_hi=1)]
    rows += [dict(kind="delete", k=1, trial=0, deleted=[i], downsampling=i in down, error=e,
                  nonfinite=int(math.isnan(e)), tau=math.nan, loss=1.0, error_lo=0, error_hi=1)
             for i, e in enumerate(errors)]
    return LesionResult("delete_each", rows, intact, 0.3, 100,
                        tuple("b%d" % i for i in range(9)), tuple(down), {})


def test_lesion_depth_uses_every_single_deletion():
    """delete_each measures all single deletions: it counts the blocks each deletable within
    the margin and replaces the k = 1 trials by the exact mean over the pool."""
    errors = [0.11, 0.30, 0.10, 0.60, 0.12, 0.13, 0.50, 0.115, math.nan]
    each = delete_each_result(errors)
    threshold = 0.12
    within = [i for i, e in enumerate(errors) if e <= threshold]
    pool = [i for i in range(9) if i not in (3, 6)]
    # the trials at k = 1 happen to miss the bad blocks: within the margin, depth 2 ...
    r = lesion_result([[0.10, 0.11, 0.10, 0.11], [0.11, 0.11, 0.11, 0.11], [0.2] * 4])
    assert effective_depth(r).depth == 2
    ed = effective_depth(r, single=each)
    d = ed.details
    assert d["single_tested"] == 9 and d["single_within"] == len(within) == 4
    assert d["single_within_blocks"] == within and d["single_pool"] == len(pool)
    # ... but a NaN block in the pool makes the exact mean undefined: k = 1 fails, depth 0
    assert math.isnan(d["single_pool_mean_error"]) and ed.depth == 0 and ed.interval == (0, 0)
    errors[8] = 0.11
    each = delete_each_result(errors)
    exact = float(np.mean([errors[i] for i in pool]))
    assert exact > threshold  # the blocks the trials missed push the true k = 1 mean over
    ed = effective_depth(r, single=each)
    assert ed.details["single_pool_mean_error"] == pytest.approx(exact)
    assert ed.depth == 0 and ed.interval == (0, 0)
    assert "single blocks: 5 of 9 each within the margin" in repr(ed)
    # with a looser margin the exact k = 1 passes and the trials decide from k = 2 on
    loose = effective_depth(r, margin=exact - 0.10 + 1e-9, single=each)
    assert loose.depth == 2
    # ks without 1: the single deletions supply it
    r2 = lesion_result([[0.10, 0.11, 0.10, 0.11], [0.11, 0.11, 0.11, 0.11]])
    r2 = dataclasses.replace(r2, rows=[row for row in r2.rows if row["k"] != 1])
    assert effective_depth(r2).depth == 2 and effective_depth(r2, single=each).depth == 0
    other = dataclasses.replace(each, block_names=tuple("c%d" % i for i in range(9)))
    with pytest.raises(pathens.PathensError, match="same network and data"):
        effective_depth(r, single=other)
    with pytest.raises(pathens.PathensError, match="delete_each"):
        effective_depth(r, single=r)
    with pytest.raises(pathens.PathensError, match="delete_random result only"):
        effective_depth(from_distribution_source(), single=each)


def from_distribution_source():
    view = pathens.wrap(small_resnet(8, **VARIANTS[0][1]))
    return branch_variance(view, batch(3)[0])


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
