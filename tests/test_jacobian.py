"""Block Jacobian spectra (pathens.jacobian) against the dense Jacobian: torch.func.jacrev of
the model's own block module (or branch method) at each example's input, captured with a
forward hook on the model, and torch.linalg.svdvals, in float64 on small blocks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nets import batch, randomize_bn, small_resnet
from torch.nn.attention import SDPBackend, sdpa_kernel

import pathens
from pathens.errors import PathensError
from pathens.measure.jacobian_spectra import block_jacobian_spectra

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def block_inputs(model, modules, x):
    """The input each module receives in the model's own forward (forward pre-hooks)."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, i=i: seen.setdefault(i, a[0].detach()))
             for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [seen[i] for i in range(len(modules))]


def dense_svd(fn, h):
    """Per example e, the singular values (descending) of d fn / d input at h[e]: the
    min(d_in, d_out) of them."""
    out = []
    for e in range(len(h)):
        J = torch.func.jacrev(fn)(h[e:e + 1])
        J = J.reshape(-1, h[e:e + 1].numel())
        out.append(torch.linalg.svdvals(J.detach()).numpy())
    return out


def cnn_dense(model, x):
    """[(block's spectra, branch's spectra)] from the model's own modules."""
    blocks = model.blocks
    ins = block_inputs(model, blocks, x)
    out = []
    for blk, h in zip(blocks, ins):
        def branch(z, blk=blk):
            r = blk.branch(z)
            return r if blk.alpha is None else blk.alpha * r
        out.append((dense_svd(blk, h), dense_svd(branch, h) if blk.skip else None))
    return out


@pytest.fixture(scope="module")
def resnet(one_thread):
    model = small_resnet(14, width=2)  # blocks of 2x6x6 = 72, 4x3x3 = 36 and 8x2x2 = 32 values
    x = batch(2, size=6, seed=1)[0]
    return model, x, cnn_dense(model, x)


def test_exact_when_iters_reach_the_dimension(resnet):
    model, x, dense = resnet
    js = block_jacobian_spectra(model, x, k=3, iters=100)
    assert js.top.shape == (6, 2, 3) and js.converged.all()
    np.testing.assert_array_equal(js.iterations, [72, 72, 36, 36, 32, 32])
    np.testing.assert_array_equal(js.in_dim, [72, 72, 72, 36, 36, 32])
    np.testing.assert_array_equal(js.out_dim, [72, 72, 36, 36, 32, 32])
    for i, (full, branch) in enumerate(dense):
        for e in range(2):
            for got_top, got_bottom, s in ((js.top, js.bottom, full[e]),
                                           (js.branch_top, js.branch_bottom, branch[e])):
                np.testing.assert_allclose(got_top[i, e], s[:3], rtol=1e-10, atol=1e-12)
                np.testing.assert_allclose(got_bottom[i, e], s[::-1][:3], atol=1e-10 * s[0])
    gap = [max(max(abs(f[e][0] - 1), abs(f[e][-1] - 1)) for e in range(2)) for f, _ in dense]
    np.testing.assert_allclose(js.isometry_gap, gap, rtol=1e-10)


def test_lanczos_top_to_1e6_bottom_within_its_residual(resnet):
    """iters below the dimension: the bidiagonalisation proper. Top-k to 1e-6; every value
    (top or bottom) within its residual of a true singular value; top never above the true
    largest, bottom never below the true smallest; converged values to tol."""
    model, x, dense = resnet
    js = block_jacobian_spectra(model, x, k=3, iters=30, tol=1e-9, seed=3)
    assert (js.iterations <= 30).all() and (js.iterations[:2] == 30).all()
    assert not js.converged[:2].all()  # 30 of 72 cannot resolve both ends of the first blocks
    for i, (full, branch) in enumerate(dense):
        for e in range(2):
            for top, bottom, top_res, bottom_res, s, conv in (
                    (js.top, js.bottom, js.top_residual, js.bottom_residual, full[e],
                     js.converged[i]),
                    (js.branch_top, js.branch_bottom, js.branch_top_residual,
                     js.branch_bottom_residual, branch[e], js.branch_converged[i])):
                np.testing.assert_allclose(top[i, e], s[:3], rtol=1e-6)
                assert top[i, e, 0] <= s[0] * (1 + 1e-12)
                assert bottom[i, e, 0] >= s[-1] - 1e-12 * s[0]
                for v, r in zip(np.r_[top[i, e], bottom[i, e]],
                                np.r_[top_res[i, e], bottom_res[i, e]]):
                    assert np.min(np.abs(s - v)) <= r + 1e-12 * s[0]
                if conv:
                    np.testing.assert_allclose(bottom[i, e], s[::-1][:3], atol=1e-8 * s[0])


def test_repeated_zeros_of_a_relu_after_the_sum_fill_bottom():
    """A post-activation block's Jacobian has a zero singular value per inactive output unit
    (169 of 256 here, 87 non-zero): blocks of k vectors find k of them once the Krylov space
    has spanned the non-zero part, short of the full dimension."""
    model = small_resnet(8, width=4)
    x = batch(1, size=8, seed=2)[0]  # the block maps 4x8x8 = 256 values
    (full, _), = cnn_dense(model, x)[:1]
    zeros = int((full[0] < 1e-12 * full[0][0]).sum())
    assert zeros >= 100
    js = block_jacobian_spectra(model, x, k=4, blocks=[0], iters=120)
    assert js.iterations[0] <= 120 and js.converged[0]
    np.testing.assert_allclose(js.bottom[0, 0], 0.0, atol=1e-9 * full[0][0])
    np.testing.assert_allclose(js.top[0, 0], full[0][:4], rtol=1e-6)


def test_identity_block_is_an_isometry():
    """A pre-activation SkipInit block at alpha = 0 computes x + 0 * R(x): J = I (every
    singular value 1, found through restarts on an invariant subspace), the branch's J = 0."""
    model = pathens.cifar_resnet(14, norm="skipinit", preact=True, width=2).double().eval()
    x = batch(2, size=6)[0]
    js = block_jacobian_spectra(model, x, k=3, blocks=["layer1.1", 3], iters=20)
    assert js.blocks == (1, 3) and js.converged.all() and js.branch_converged.all()
    np.testing.assert_allclose(js.top, 1.0, rtol=1e-12)
    np.testing.assert_allclose(js.bottom, 1.0, rtol=1e-12)
    np.testing.assert_allclose(js.isometry_gap, 0.0, atol=1e-12)
    np.testing.assert_array_equal(js.branch_top, 0.0)


def test_per_example_map_does_not_depend_on_the_batch(resnet):
    """Eval mode: the batch's map is block-diagonal, each example's spectrum its own."""
    model, x, _ = resnet
    both = block_jacobian_spectra(model, x, k=2, blocks=[2], iters=100)
    one = block_jacobian_spectra(model, x[1:], k=2, blocks=[2], iters=100)
    np.testing.assert_allclose(one.top[0, 0], both.top[0, 1], rtol=1e-12)
    np.testing.assert_allclose(one.bottom[0, 0], both.bottom[0, 1], atol=1e-12)


def test_transformer_sublayers():
    """pathens.gpt (post-LN, so that post is a LayerNorm): per sequence, the (T, d) -> (T, d)
    Jacobian of each sublayer, attention mixing the positions. 40 values: exact with iters=40;
    with iters=24 (Lanczos; at initialisation the top values are clustered near 1/std of the
    stream, so that they converge slowly), every value within its residual of a true one."""
    torch.manual_seed(0)
    model = pathens.gpt(depth=1, width=8, heads=2, context=8, vocab_size=16,
                        norm="post").double().eval()
    ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))
    exact = block_jacobian_spectra(model, ids, k=2, iters=40)
    partial = block_jacobian_spectra(model, ids, k=2, iters=24, tol=1e-12)
    layer = model.h[0]
    x0 = block_inputs(model, [layer], ids)[0]
    with torch.no_grad():
        x1 = layer.post_attn(x0 + layer.attn(x0))

    def attn(z):  # the model's own modules, in Layer.forward's order
        return layer.post_attn(z + layer.attn(z))

    def mlp(z):
        return layer.post_mlp(z + layer.mlp(z))

    with sdpa_kernel([SDPBackend.MATH]):
        dense = [dense_svd(attn, x0), dense_svd(mlp, x1)]
    assert exact.block_names == ("h.0.attn", "h.0.mlp") and (partial.iterations == 24).all()
    for i in range(2):
        for e in range(2):
            s = dense[i][e]
            np.testing.assert_allclose(exact.top[i, e], s[:2], rtol=1e-10)
            np.testing.assert_allclose(exact.bottom[i, e], s[::-1][:2], atol=1e-10 * s[0])
            assert partial.top[i, e, 0] <= s[0] * (1 + 1e-12)
            assert partial.bottom[i, e, 0] >= s[-1] - 1e-12 * s[0]
            for v, r in zip(np.r_[partial.top[i, e], partial.bottom[i, e]],
                            np.r_[partial.top_residual[i, e], partial.bottom_residual[i, e]]):
                assert np.min(np.abs(s - v)) <= r + 1e-12 * s[0]


def test_plain_layers_have_no_branch_spectrum():
    model = randomize_bn(pathens.cifar_resnet(8, skip=False, width=2).double(), seed=1)
    view = pathens.wrap(model, allow_plain=True)
    x = batch(1, size=6)[0]
    js = block_jacobian_spectra(view, x, k=2, iters=100)
    (full, branch), *_ = cnn_dense(model, x)
    assert branch is None and js.residual == (False, False, False)
    np.testing.assert_allclose(js.top[0, 0], full[0][:2], rtol=1e-10)
    assert np.isnan(js.branch_top).all() and not js.branch_converged.any()
    rows = js.table()
    assert len(rows) == 3 and math.isnan(rows[0]["branch_sigma_max"])
    assert js.to_json()


def test_bad_input_one_line(resnet):
    model, x, _ = resnet
    for kwargs, match in (({"k": 0}, "k must be"), ({"iters": 0}, "iters must be"),
                          ({"tol": 0.0}, "tol must be"), ({"blocks": []}, "blocks is empty"),
                          ({"blocks": [99]}, "out of range"), ({"seed": -1}, "seed")):
        with pytest.raises(PathensError, match=match):
            block_jacobian_spectra(model, x, **kwargs)
    bad = x.clone()
    bad[0, 0, 0, 0] = math.inf
    with pytest.raises(PathensError, match="NaN or infinite"):
        block_jacobian_spectra(model, bad)
    with pytest.raises(PathensError, match="do not fit the model"):
        block_jacobian_spectra(model, x[:, :2])
