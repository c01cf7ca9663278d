"""Gradient by path length, checked against independent computations:
brute-force enumeration of single-path gradients (autograd through detach masks) and the
plain autograd gradient."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pathens
from pathens import paths
from nets import VARIANTS, batch, small_resnet


def first_block_grad(view, x, y, path=None):
    """Autograd gradient of the mean CE at the first block's input (for one path if given)."""
    h0 = view.stem(x).detach().requires_grad_(True)
    loss = F.cross_entropy(view.run_from(h0, path=path), y)
    return torch.autograd.grad(loss, h0)[0]


def brute_force(view, x, y):
    """B[k] = sum of the gradients of all C(n, k) paths of length k (2^n autograd calls)."""
    n = view.num_blocks
    out = [torch.zeros_like(view.stem(x)) for _ in range(n + 1)]
    for mask in paths.enumerate_paths(n):
        out[int(mask.sum())] += first_block_grad(view, x, y, path=mask)
    return out


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_exact_equals_brute_force_and_autograd(name, kwargs):
    view = pathens.wrap(small_resnet(20, **kwargs))  # 9 blocks: 512 paths
    x, y = batch()
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    G = res.components
    assert G.dtype == torch.float64 and G.shape == (10, 4, 4, 8, 8)
    truth = first_block_grad(view, x, y)
    torch.testing.assert_close(G.sum(0), truth, rtol=1e-10, atol=1e-14)
    B = brute_force(view, x, y)
    for k in range(view.num_blocks + 1):
        torch.testing.assert_close(G[k], B[k], rtol=1e-9, atol=1e-14, msg=f"length {k}")
    np.testing.assert_allclose(res.norms, [float(b.norm()) for b in B], rtol=1e-9)
    assert res.residual < 1e-12
    assert res.gradient_norm == pytest.approx(float(truth.norm()), rel=1e-12)


def test_exact_on_torchvision_resnet():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=5).double().eval()  # 8 blocks: 256 paths
    view = pathens.wrap(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([1, 4])
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    B = brute_force(view, x, y)
    for k in range(view.num_blocks + 1):
        torch.testing.assert_close(res.components[k], B[k], rtol=1e-9, atol=1e-15)


def block_param_grads(view, i, x, y, path=None):
    """Autograd gradient of the loss w.r.t. block i's branch parameters."""
    params = [p for _, p in pathens.measure.linearize.branch_parameters(view.blocks[i])]
    loss = F.cross_entropy(view.run(x, path=path), y)
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("name,kwargs", [VARIANTS[0], VARIANTS[5]], ids=["post-A-bn", "pre-B-skipinit"])
def test_parameter_gradients_by_length(name, kwargs):
    view = pathens.wrap(small_resnet(20, **kwargs))
    x, y = batch(3)
    res = pathens.path_gradients(view, x, y, parameters=True, progress=False)
    n = view.num_blocks
    for i in (0, 4, n - 1):
        names = [nm for nm, _ in pathens.measure.linearize.branch_parameters(view.blocks[i])]
        parts = res.param_components[i]
        # Summed over lengths: autograd's gradient of block i's branch parameters.
        for nm, g in zip(names, block_param_grads(view, i, x, y)):
            torch.testing.assert_close(parts[nm].sum(0), g, rtol=1e-10, atol=1e-14)
        # Length k: paths through block i's branch and k-1 of the n-1-i later branches.
        later = n - 1 - i
        for k in range(n + 1):
            want = [torch.zeros_like(parts[nm][0]) for nm in names]
            if 1 <= k <= later + 1:
                for sub in paths.paths_of_length(later, k - 1):
                    mask = np.zeros(n, bool)
                    mask[i] = True
                    mask[i + 1:] = sub
                    for w, g in zip(want, block_param_grads(view, i, x, y, path=mask)):
                        w += g
            for nm, w in zip(names, want):
                torch.testing.assert_close(parts[nm][k], w, rtol=1e-9, atol=1e-14)
            norm = math.sqrt(sum(float(w.pow(2).sum()) for w in want))
            assert res.param_norms[i, k] == pytest.approx(norm, rel=1e-9, abs=1e-14)


def test_truncation_and_chunking():
    view = pathens.wrap(small_resnet(32, **VARIANTS[0][1]))  # 15 blocks
    x, y = batch(6)
    exact = pathens.path_gradients(view, x, y, components=True, progress=False)
    truth = first_block_grad(view, x, y)
    # Chunks of examples occupy disjoint rows: norms add in quadrature, nothing else changes.
    chunked = pathens.path_gradients(view, x, y, batch_size=4, components=True, progress=False)
    torch.testing.assert_close(chunked.components, exact.components, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(chunked.norms, exact.norms, rtol=1e-12)
    # A tiny tolerance changes nothing; a coarse one drops the weakest lengths, and the
    # reported residual is the truncation error measured against autograd.
    fine = pathens.path_gradients(view, x, y, tol=1e-14, progress=False)
    np.testing.assert_allclose(fine.norms, exact.norms, rtol=1e-9)
    coarse = pathens.path_gradients(view, x, y, tol=0.05, components=True, progress=False)
    dropped = coarse.norms == 0
    assert dropped.any() and not dropped.all()
    err = float((coarse.components.sum(0) - truth).norm() / truth.norm())
    assert coarse.residual == pytest.approx(err, rel=1e-9)
    assert 0 < coarse.residual < 0.5
    kept = ~dropped & (exact.norms > 0.2 * exact.norms.max())
    np.testing.assert_allclose(coarse.norms[kept], exact.norms[kept], rtol=0.2)


def test_sampled_estimates_exact_within_standard_error():
    view = pathens.wrap(small_resnet(20, **VARIANTS[1][1]))  # 9 blocks, projection shortcuts
    n = view.num_blocks
    x, y = batch(2)
    exact = pathens.path_gradients(view, x, y, components=True, progress=False)
    s = pathens.path_gradients(view, x, y, method="sampled", samples_per_length=300,
                               components=True, seed=1, progress=False)
    assert s.components.shape == exact.components.shape
    single = {}  # every path's own gradient norm: the exact expectation of per_path
    for mask in paths.enumerate_paths(n):
        single.setdefault(int(mask.sum()), []).append(float(first_block_grad(view, x, y, mask).norm()))
    for k in range(n + 1):
        c = math.comb(n, k)
        diff = float((c * s.components[k] - exact.components[k]).norm())
        se = float((c * s.components_se[k]).norm())  # E ||diff||^2 = ||c se||^2
        if c == 1:  # a single path: no sampling error at all
            assert diff < 1e-12 * float(exact.components[k].norm())
        else:
            assert diff < 2.0 * se, f"length {k}: {diff} vs se {se}"
        assert abs(s.per_path[k] - np.mean(single[k])) <= 4 * s.per_path_se[k] + 1e-12
    np.testing.assert_allclose(s.total, s.counts * s.per_path)
    assert (s.total >= exact.total * (1 - 1e-9)).sum() >= n  # sum of norms >= norm of sum


def test_sampled_random_batches_are_seeded():
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, y = batch(8)
    kw = dict(method="sampled", samples_per_length=5, batch_size=3, lengths=[0, 3, 9], progress=False)
    a = pathens.path_gradients(view, x, y, seed=7, **kw)
    b = pathens.path_gradients(view, x, y, seed=7, **kw)
    c = pathens.path_gradients(view, x, y, seed=8, **kw)
    assert list(a.lengths) == [0, 3, 9]
    np.testing.assert_array_equal(a.per_path, b.per_path)
    assert not np.array_equal(a.per_path[1], c.per_path[1])
    assert a.config["seed"] == 7 and a.config["samples_per_length"] == 5


def test_path_gradients_leave_the_model_untouched():
    model = small_resnet(20, **VARIANTS[0][1]).float().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch(4)
    pathens.path_gradients(model, x.float(), y, progress=False)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_result_files(tmp_path):
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, y = batch(2)
    res = pathens.path_gradients(view, x, y, progress=False)
    res.to_csv(tmp_path / "g.csv")
    lines = (tmp_path / "g.csv").read_text().splitlines()
    assert lines[0] == "length,paths,total,per_path,per_path_se,samples" and len(lines) == 11
    import json
    d = json.loads(res.to_json(tmp_path / "g.json"))
    assert d["method"] == "exact" and len(d["total"]) == 10 and d["config"]["tol"] == 0.0
    assert "components" not in d


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="fast"), "method must be"),
    (dict(tol=-1), "tol must be"),
    (dict(method="sampled", lengths=[12]), "lengths must lie"),
    (dict(method="sampled", batch_size=2, components=True), "components=True needs"),
    (dict(method="sampled", parameters=True), "parameters=True needs"),
    (dict(lengths=[1]), "lengths= applies"),
    (dict(batch_size=0), "batch_size must be"),
])
def test_bad_arguments(kwargs, match):
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, y = batch(4)
    with pytest.raises(pathens.PathensError, match=match):
        pathens.path_gradients(view, x, y, progress=False, **kwargs)


@pytest.mark.parametrize("change,match", [
    (lambda x, y: (x, y + 10), r"targets range over .* 10 classes"),
    (lambda x, y: (x, y[:2]), "targets must have shape"),
    (lambda x, y: (x, y.double()), "integer class indices"),
    (lambda x, y: (x[:, :1], y), "do not fit the model"),
    (lambda x, y: (x[0], y), "do not fit the model"),
    (lambda x, y: (x[:0], y[:0]), "empty"),
    (lambda x, y: (x * float("nan"), y), "NaN"),
])
def test_bad_batches(change, match):
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, y = change(*batch(4))
    with pytest.raises(pathens.PathensError, match=match):
        pathens.path_gradients(view, x, y, progress=False)


def test_nonfinite_loss_is_reported():
    model = small_resnet(20, **VARIANTS[0][1])
    with torch.no_grad():
        model.linear.weight.fill_(float("inf"))
    x, y = batch(2)
    with pytest.raises(pathens.PathensError, match="not finite"):
        pathens.path_gradients(model, x, y, progress=False)


@pytest.mark.parametrize("scale", [1.0, 1e-21, 1e25])
def test_float32_norms_equal_float64_ones(scale):
    """sweeps.norm of a large float32 tensor (channels_last, offset entries: one float32
    reduction of them is off by 4e-6) equals the float64 norm to 1e-7, also where squares
    underflow (1e-21) or overflow (1e25) in float32."""
    from pathens.measure.backward_sweep import norm
    g = torch.Generator().manual_seed(0)
    t = ((torch.randn(8, 64, 48, 48, generator=g) + 2.0) * scale).contiguous(
        memory_format=torch.channels_last)
    exact = torch.linalg.vector_norm(t.double())
    assert norm(t).dtype == torch.float64
    assert abs(float(norm(t)) / float(exact) - 1) < 1e-7
