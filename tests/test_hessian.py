"""The Hessian's eigenvalues, trace and spectral density against the dense Hessian of a small
float64 ResNet (torch.func: forward-over-reverse on a flat parameter vector, no double
backward, + torch.linalg.eigvalsh), and the top eigenvalue against PyHessian."""
from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from nets import batch, small_resnet
from torch.func import functional_call

import pathens
from pathens.measure import hessian as hs
from pathens.data.batches import Data
from pathens.errors import PathensError
from pathens.measure.hessian import Hessian, hessian, lanczos, select_parameters, spectral_density

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = dict(progress=False)


@pytest.fixture(scope="module")
def net(one_thread):
    """model, view, x, y, names and the dense H over all parameters (named_parameters
    order)."""
    model = small_resnet(8, width=2, shortcut="B")
    view = pathens.wrap(model)
    x, y = batch(12, size=6)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_loss(theta):
        parts = dict(zip(names, (t.view(s) for t, s in
                                 zip(torch.split(theta, [math.prod(s) for s in shapes]),
                                     shapes))))
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    H = torch.func.jacfwd(torch.func.grad(mean_loss))(flat)
    assert torch.allclose(H, H.T, atol=1e-12)
    return SimpleNamespace(model=model, view=view, x=x, y=y, names=names, H=H)


def offsets(model) -> dict:
    """name -> slice of the flat parameter vector (named_parameters order)."""
    out, start = {}, 0
    for n, p in model.named_parameters():
        out[n] = slice(start, start + p.numel())
        start += p.numel()
    return out


def sub_block(model, H, names) -> torch.Tensor:
    where = offsets(model)
    idx = torch.cat([torch.arange(where[n].start, where[n].stop) for n in names])
    return H[idx][:, idx]


def test_top_eigenvalues_match_the_dense_hessian(net):
    model, view, x, y, names, H = net.model, net.view, net.x, net.y, net.names, net.H
    ev = torch.linalg.eigvalsh(H).flip(0).numpy()
    r = hessian(view, (x, y), top_k=4, tol=1e-10, trace_probes=0, density_probes=0, **FAST)
    assert r.num_params == H.shape[0] == sum(p.numel() for p in model.parameters())
    assert list(r.param_names) == names
    np.testing.assert_allclose(r.eigenvalues, ev[:4], rtol=1e-6)
    assert (np.diff(r.eigenvalues) <= 0).all()
    # the bound: an eigenvalue of H lies within each residual of its Ritz value
    assert (np.abs(r.eigenvalues - ev[:4]) <= r.residuals + 1e-12 * ev[0]).all()
    assert r.config["converged"] and r.hvps == r.config["hvps"]["eigenvalues"] <= 100
    # Lanczos, not power iteration: far fewer products than the dimension
    assert r.hvps < 60
    # loss and gradient by the model's own autograd
    ps = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, ps)
    assert r.loss == pytest.approx(loss.item(), rel=1e-12)
    assert r.gradient_norm == pytest.approx(float(torch.cat([t.reshape(-1) for t in g]).norm()),
                                            rel=1e-10)


def test_trace_samples_are_exact_quadratic_forms_and_the_trace_within_3_se(net):
    view, x, y, H = net.view, net.x, net.y, net.H
    r = hessian(view, (x, y), top_k=0, trace_probes=60, density_probes=0, seed=3, **FAST)
    assert r.hvps == 60 and len(r.eigenvalues) == 0
    # every sample is z^T H z of a Rademacher z (regenerated from the seed)
    op = _Like(H)
    for i in (0, 17, 59):
        z = hs._rademacher(H.shape[0], op, 3, 2, i)
        assert set(z.unique().tolist()) == {-1.0, 1.0}
        assert r.trace_samples[i] == pytest.approx(float(z @ H @ z), rel=1e-10)
    dense = float(H.trace())
    assert abs(r.trace - dense) <= 3 * r.trace_se
    assert r.trace_se == pytest.approx(r.trace_samples.std(ddof=1) / math.sqrt(60))


class _Like:
    """What the vector generators need of the operator: dtype and device."""

    def __init__(self, H):
        self.dtype, self.device = H.dtype, H.device


def test_density_is_gauss_quadrature_of_each_probe(net):
    view, x, y, H = net.view, net.x, net.y, net.H
    P, m, probes = H.shape[0], 30, 3
    r = hessian(view, (x, y), top_k=1, tol=1e-10, trace_probes=0, density_probes=probes,
                lanczos_steps=m, seed=1, **FAST)
    ev = torch.linalg.eigvalsh(H).numpy()
    op = _Like(H)
    firsts = []
    for i, (t, w) in enumerate(zip(r.nodes, r.weights)):
        assert len(t) == len(w) == m
        assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
        assert ev[0] - 1e-8 <= t.min() and t.max() <= ev[-1] + 1e-8
        q = hs._rademacher(P, op, 1, 3, i)
        q = q / q.norm()
        Hq = q.clone()
        for p in range(5):  # Gauss quadrature with m nodes is exact for degrees < 2m
            assert float((w * t ** p).sum()) == pytest.approx(float(q @ Hq), rel=1e-8,
                                                             abs=1e-10 * ev[-1] ** p)
            Hq = H @ Hq
        firsts.append(float((w * t).sum()))
    # the first moment estimates tr(H) / P
    se = np.std(firsts, ddof=1) / math.sqrt(probes)
    assert abs(np.mean(firsts) - float(H.trace()) / P) <= 3 * se
    # masses: the quadrature weights in the ranges, directly
    lam, eps = r.lambda_max, r.config["eps"]
    assert lam == pytest.approx(ev[-1], rel=1e-8)
    assert r.degenerate_mass == pytest.approx(
        np.mean([w[np.abs(t) < eps * lam].sum() for t, w in zip(r.nodes, r.weights)]))
    assert r.negative_mass == pytest.approx(
        np.mean([w[t < -eps * lam].sum() for t, w in zip(r.nodes, r.weights)]))
    # ... which estimate the dense spectrum's shares (m nodes resolve it coarsely)
    assert r.degenerate_mass == pytest.approx(np.mean(np.abs(ev) < eps * ev[-1]), abs=0.1)
    assert r.negative_mass == pytest.approx(np.mean(ev < -eps * ev[-1]), abs=0.1)
    # the broadened density integrates to 1 and peaks near 0
    grid, values = r.density["grid"], r.density["values"]
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-6)
    assert abs(grid[np.argmax(values)]) < 0.05 * ev[-1]
    rows = r.density_table()
    assert len(rows) == len(grid) and set(rows[0]) == {"eigenvalue", "density"}
    g2, v2 = r.broadened(sigma=1e-3, points=4000)
    assert len(g2) == 4000 and np.trapezoid(v2, g2) == pytest.approx(1.0, abs=1e-6)
    assert len(r.quadrature_table()) == probes * m


def test_subsets_are_the_dense_sub_blocks(net):
    model, view, x, y, names, H = net.model, net.view, net.x, net.y, net.names, net.H
    where = offsets(model)
    block = [n for n in names if n.startswith("layer2.0.")]
    assert any("shortcut" in n for n in block)  # option B: a projection shortcut
    branches = [n for n in names if n.startswith("layer") and "shortcut" not in n]
    listed = ["linear.weight", "layer3.0.conv2.weight"]
    for params, expect in (("layer2.0", block), ("branches", branches), (listed, None)):
        expect = expect or [n for n in names if n in listed]  # model order
        r = hessian(view, (x, y), params=params, top_k=2, tol=1e-10, trace_probes=0,
                    density_probes=0, **FAST)
        assert list(r.param_names) == expect
        sub = sub_block(model, H, expect)
        assert r.num_params == sub.shape[0] == sum(where[n].stop - where[n].start
                                                   for n in expect)
        np.testing.assert_allclose(r.eigenvalues, torch.linalg.eigvalsh(sub).flip(0)[:2],
                                   rtol=1e-6)
    # a module name and a parameter name select what they hold
    assert select_parameters(view, "linear")[0] == ["linear.weight", "linear.bias"]
    assert select_parameters(view, ["bn1.bias"])[0] == ["bn1.bias"]


def test_batching_and_loaders_give_the_same_numbers(net):
    view, x, y = net.view, net.x, net.y
    kw = dict(top_k=2, tol=1e-10, trace_probes=4, density_probes=1, lanczos_steps=12, **FAST)
    whole = hessian(view, (x, y), batch_size=None, **kw)
    assert whole.config["hvp"].endswith("graph kept")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    for data, bs in (((x, y), 3), (loader, None)):
        r = hessian(view, data, batch_size=bs, **kw)
        assert r.config["hvp"].endswith("per batch") and r.num_examples == 12
        np.testing.assert_allclose(r.eigenvalues, whole.eigenvalues, rtol=1e-10)
        np.testing.assert_allclose(r.trace_samples, whole.trace_samples, rtol=1e-10)
        np.testing.assert_allclose(r.nodes[0], whole.nodes[0], rtol=0, atol=1e-10 * r.lambda_max)
        np.testing.assert_allclose(r.weights[0], whole.weights[0], atol=1e-10)
        assert r.loss == pytest.approx(whole.loss, rel=1e-12)


def test_deterministic_under_seed(net):
    view, x, y = net.view, net.x, net.y
    kw = dict(top_k=1, trace_probes=3, density_probes=1, lanczos_steps=8, **FAST)
    a, b = hessian(view, (x, y), seed=5, **kw), hessian(view, (x, y), seed=5, **kw)
    c = hessian(view, (x, y), seed=6, **kw)
    da, db = a.to_dict(), b.to_dict()
    da["config"].pop("seconds"), db["config"].pop("seconds")
    assert da == db
    assert np.array_equal(a.trace_samples, b.trace_samples)
    assert np.array_equal(a.nodes[0], b.nodes[0]) and np.array_equal(a.eigenvalues,
                                                                      b.eigenvalues)
    assert not np.array_equal(a.trace_samples, c.trace_samples)


def test_top_eigenvalue_agrees_with_pyhessian(net):
    pyhessian = pytest.importorskip("pyhessian")
    model, view, x, y, H = net.model, net.view, net.x, net.y, net.H
    r = hessian(view, (x, y), top_k=1, tol=1e-8, trace_probes=0, density_probes=0, **FAST)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors in the default dtype
    torch.manual_seed(0)
    try:
        h = pyhessian.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        theirs, _ = h.eigenvalues(maxIter=500, tol=1e-7, top_n=1)
    finally:
        torch.set_default_dtype(before)
        model.zero_grad(set_to_none=True)  # PyHessian's backward(create_graph=True) left grads
    assert r.eigenvalues[0] == pytest.approx(theirs[0], rel=1e-3)
    assert r.eigenvalues[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-9)


def test_result_tables_json_and_plot(net):
    view, x, y = net.view, net.x, net.y
    r = hessian(view, (x, y), top_k=2, trace_probes=4, density_probes=2, lanczos_steps=10,
                **FAST)
    assert isinstance(r, Hessian) and "top" in repr(r)
    [row] = r.table()
    for key in ("eigenvalue_1", "eigenvalue_2", "trace", "trace_se", "degenerate_mass",
                "negative_mass", "hvps", "num_params"):
        assert key in row
    assert r.hvps == sum(r.config["hvps"].values())
    d = r.to_dict()
    assert d["density"]["grid"] and len(d["nodes"]) == 2
    assert "eigenvalue_1" in r.to_csv().splitlines()[0]
    from pathens.report.plots.hessian import plot_hessian_density
    fig = plot_hessian_density(r)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert any(np.allclose(line.get_xdata(), r.eigenvalues[0]) for line in ax.get_lines()[1:])
    fig2 = plot_hessian_density(r, sigma=1e-3)
    assert fig2 is not fig
    import matplotlib.pyplot as plt
    plt.close("all")
    no_density = hessian(view, (x, y), top_k=1, trace_probes=0, density_probes=0, **FAST)
    assert math.isnan(no_density.degenerate_mass)
    with pytest.raises(PathensError, match="density_probes"):
        plot_hessian_density(no_density)


def one_line(fn, match: str):
    with pytest.raises(PathensError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_bad_inputs_one_line_each(net, monkeypatch):
    model, view, x, y = net.model, net.view, net.x, net.y
    go = lambda **kw: hessian(view, (x, y), **{**dict(trace_probes=0, density_probes=0,
                                                      **FAST), **kw})
    one_line(lambda: go(params="layer9.0"), "nothing is named 'layer9.0'")
    one_line(lambda: go(params=[]), "empty list")
    one_line(lambda: go(params=3), "params must be")
    one_line(lambda: go(top_k=0), "nothing to compute")
    one_line(lambda: go(trace_probes=1), "at least 2")
    one_line(lambda: go(tol=0), "tol must be")
    one_line(lambda: go(eps=1.5), "eps must be")
    one_line(lambda: go(top_k=3, max_iter=2), "max_iter")
    one_line(lambda: go(params="linear.bias", top_k=11), "exceeds the number of parameters")
    one_line(lambda: go(lanczos_steps=1, density_probes=1), "lanczos_steps")
    one_line(lambda: hessian(view, (x[:0], y[:0]), **FAST), "empty")
    one_line(lambda: hessian(view, x, **FAST), "pair or a DataLoader")
    monkeypatch.setattr(hs, "MAX_PARAMS", 1000)
    one_line(lambda: go(), "limit of 1,000")
    assert go(params="layer2.0").num_params < 1000  # a subset gets through
    monkeypatch.undo()
    model.linear.bias.requires_grad_(False)
    try:
        one_line(lambda: go(params="linear.bias"), "frozen")
        assert "linear.bias" not in go().param_names
    finally:
        model.linear.bias.requires_grad_(True)
    bad = small_resnet(8, width=2, shortcut="B")
    with torch.no_grad():
        bad.linear.weight[0, 0] = float("nan")
    one_line(lambda: hessian(bad, (x, y), **FAST), "not finite")


def test_lanczos_on_a_matrix_with_a_repeated_spectrum():
    """Few distinct eigenvalues: the Krylov space closes early; the quadrature is then exact
    and the top-k run restarts to find the rest (each distinct value once)."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    lam = torch.tensor([5.0, 3.0, 3.0, 1.0] + [0.0] * 36, dtype=torch.float64)
    A = Q @ torch.diag(lam) @ Q.T
    start = torch.randn(40, generator=g, dtype=torch.float64)
    slq = lanczos(lambda v: A @ v, start, 20)
    assert len(slq["theta"]) == 4  # 4 distinct eigenvalues: closed after 4 steps
    np.testing.assert_allclose(np.sort(slq["theta"]), [0, 1, 3, 5], atol=1e-12)
    q = start / start.norm()
    exact = {v: float(((Q.T @ q)[lam == v] ** 2).sum()) for v in (0.0, 1.0, 3.0, 5.0)}
    for t, w in zip(slq["theta"], slq["weights"]):
        assert w == pytest.approx(exact[round(float(t))], abs=1e-12)
    top = lanczos(lambda v: A @ v, start, 40, top_k=3, tol=1e-12)
    np.testing.assert_allclose(top["top"], [5, 3, 1], atol=1e-10)  # 3 twice, found once
    assert top["converged"] and top["restarts"] == 0
    # asking for more than the distinct values: restarts in the orthogonal complement find
    # the second copy of 3 (and more zeros)
    top = lanczos(lambda v: A @ v, start, 40, top_k=5, tol=1e-12,
                  restart=lambda i: torch.randn(40, generator=g, dtype=torch.float64))
    np.testing.assert_allclose(top["top"], [5, 3, 3, 1, 0], atol=1e-10)
    assert top["converged"] and top["restarts"] >= 1


def test_spectral_density_checks():
    with pytest.raises(PathensError):
        spectral_density([], [])
    grid, values = spectral_density([np.array([0.0, 1.0])], [np.array([0.5, 0.5])], sigma=0.05)
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-6)  # tails past 5 sigma
    assert values[np.argmin(np.abs(grid - 1.0))] == pytest.approx(
        0.5 / (0.05 * math.sqrt(2 * math.pi)), rel=1e-3)


def test_a_transformer_sublayer_and_the_next_token_loss():
    """GPT-2: a sublayer's parameters are those its branch uses (ln_2 and the MLP for "mlp"),
    and the Hessian of the next-token loss over them is the dense one."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=16,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    view = pathens.wrap(model)
    ids = torch.randint(0, 16, (3, 8), generator=torch.Generator().manual_seed(0))
    r = hessian(view, (ids, ids), params="transformer.h.1.mlp", top_k=2, tol=1e-10,
                trace_probes=0, density_probes=0, **FAST)
    names = list(r.param_names)
    assert names == [f"transformer.h.1.{n}" for n in
                     ("ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                      "mlp.c_proj.weight", "mlp.c_proj.bias")]
    attn = select_parameters(view, "transformer.h.1.attn", Data(view, (ids, ids)))
    assert [n.split("h.1.")[1].split(".")[0] for n in attn[0]] == ["ln_1"] * 2 + ["attn"] * 4
    full = dict(model.named_parameters())
    shapes = [full[n].shape for n in names]

    def mean_loss(theta):
        parts = dict(zip(names, (t.view(s) for t, s in
                                 zip(torch.split(theta, [math.prod(s) for s in shapes]),
                                     shapes))))
        logits = functional_call(model, parts, (ids,)).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, 16), ids[:, 1:].reshape(-1))

    H = torch.func.jacfwd(torch.func.grad(mean_loss))(
        torch.cat([full[n].detach().reshape(-1) for n in names])).detach()
    np.testing.assert_allclose(r.eigenvalues, torch.linalg.eigvalsh(H).flip(0)[:2], rtol=1e-6)
    assert r.num_items == 3 * 7 and r.config["loss"] == "mean next_token over tokens"


# ---- torch.distributed: two processes give the numbers of one ---------------------------------

def _two_ranks_measure() -> dict:
    torch.set_num_threads(1)
    view = pathens.wrap(small_resnet(8, width=2, shortcut="B"))
    x, y = batch(11, size=6, seed=3)  # odd: the ranks hold 5 and 6 examples
    r = hessian(view, (x, y), top_k=2, tol=1e-10, trace_probes=3, density_probes=1,
                lanczos_steps=8, batch_size=4, progress=False)
    return dict(eigenvalues=r.eigenvalues.tolist(), trace=r.trace_samples.tolist(),
                nodes=r.nodes[0].tolist(), weights=r.weights[0].tolist(), loss=r.loss,
                examples=r.num_examples, norm=r.gradient_norm)


def _two_ranks_worker(rank, world, init, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                                         world_size=world, timeout=timedelta(seconds=60))
    Path(out, f"rank{rank}.json").write_text(json.dumps(_two_ranks_measure()))
    torch.distributed.destroy_process_group()


def test_two_processes_give_the_numbers_of_one(tmp_path):
    one = _two_ranks_measure()
    mp.spawn(_two_ranks_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
             join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["examples"] == one["examples"] == 11
        for key in ("eigenvalues", "trace", "nodes", "weights", "loss", "norm"):
            np.testing.assert_allclose(got[key], one[key], rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {rank} {key}")
