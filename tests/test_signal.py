"""Signal propagation (pathens.signal) against direct computations on the MODEL itself:
forward hooks on its block modules capture the residual stream and the branch outputs (the
statistics then computed with torch directly), and autograd with retain_grad on the model's
own activations gives the gradient at each block's input. float64 networks with random
BatchNorm statistics and SkipInit / ReZero scales, so that no factor is trivial."""
from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import batch, randomize_bn, small_resnet

import pathens
from pathens.errors import PathensError
from pathens.measure.signal_propagation import SignalPropagation, signal_propagation

matplotlib.use("Agg")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TOL = 1e-10


def stats(t: torch.Tensor, channel_dim: int) -> tuple:
    """(mean_c m_c^2, mean_c v_c), per channel over every other axis, population variance."""
    dims = [d for d in range(t.ndim) if d != channel_dim]
    m = t.mean(dims)
    v = t.var(dims, unbiased=False)
    return float((m ** 2).mean()), float(v.mean())


def cnn_reference(model, x, y):
    """From the model's own forward with hooks: the stream entering each block and leaving the
    last, the scaled and unscaled branch outputs (the module that ends each branch), and the
    gradient of the mean cross-entropy at each of those stream tensors (retain_grad)."""
    blocks = model.blocks
    stream, branch = [], []
    hooks = []
    for blk in blocks:
        def pre(m, args):
            args[0].retain_grad()
            stream.append(args[0])
        hooks.append(blk.register_forward_pre_hook(pre))
        end = blk.conv2 if model.preact else blk.bn2  # the last module of the branch
        hooks.append(end.register_forward_hook(
            lambda m, a, out, blk=blk: branch.append(
                (out.detach(), out.detach() * (1.0 if blk.alpha is None else blk.alpha.detach())))
            if blk.skip else None))

    def last(m, a, out):
        out.retain_grad()
        stream.append(out)
    hooks.append(blocks[-1].register_forward_hook(last))
    try:
        loss = F.cross_entropy(model(x), y)  # the mean over examples
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    return stream, branch


def check_cnn(r: SignalPropagation, model, x, y):
    stream, branch = cnn_reference(model, x, y)
    n = len(model.blocks)
    assert len(stream) == n + 1 and r.channel_variance.shape == (n + 1,)
    for i, s in enumerate(stream):
        msq, var = stats(s.detach(), 1)
        assert r.channel_mean_sq[i] == pytest.approx(msq, rel=TOL), i
        assert r.channel_variance[i] == pytest.approx(var, rel=TOL), i
        assert r.grad_norm[i] == pytest.approx(float(s.grad.norm()), rel=TOL), i
        assert r.channels[i] == s.shape[1]
        assert r.num_positions[i] == s.shape[0] * s.shape[2] * s.shape[3]
    for i, (raw, scaled) in enumerate(branch):
        assert r.branch_variance[i] == pytest.approx(stats(scaled, 1)[1], rel=TOL), i
        assert r.branch_mean_sq[i] == pytest.approx(stats(scaled, 1)[0], rel=TOL), i
        assert r.branch_variance_unscaled[i] == pytest.approx(stats(raw, 1)[1], rel=TOL), i
    np.testing.assert_allclose(r.norm_ratio, r.grad_norm[:-1] / r.grad_norm[1:], rtol=1e-14)


@pytest.mark.parametrize("kwargs", [{}, {"preact": True, "shortcut": "B", "norm": "skipinit"}],
                         ids=["post-A-bn", "pre-B-skipinit"])
def test_cnn_statistics_and_gradients_match_hooks_on_the_model(kwargs):
    model = small_resnet(14, **kwargs)
    x, y = batch(7, seed=1)
    r = signal_propagation(model, (x, y), batch_size=3, progress=False)
    check_cnn(r, model, x, y)
    assert r.downsample == (False, False, True, False, True, False)
    assert r.num_examples == 7 and r.num_items == 7
    if kwargs.get("norm") == "skipinit":  # alpha in [0.3, 0.9] scales the branch's variance
        assert (r.branch_variance < r.branch_variance_unscaled).all()
    else:
        np.testing.assert_array_equal(r.branch_variance, r.branch_variance_unscaled)


class LayerScaled(torch.nn.Module):
    """x + gamma * conv(x), gamma per channel (C, 1, 1): a branch scale that is not a scalar."""

    def __init__(self, c: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.gamma = torch.nn.Parameter(0.2 + torch.rand(c, 1, 1, generator=g))

    def forward(self, x):
        return x + self.gamma * self.conv(x)


@pathens.register_block(LayerScaled)
def _layer_scaled(block):
    return pathens.BlockParts(branch=block.conv, scale=block.gamma)


def test_per_channel_branch_scale():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), LayerScaled(4, 1),
                                LayerScaled(4, 2), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 10)).double().eval()
    x, y = batch(4, seed=6)
    raw, hooks = [], [model[i].conv.register_forward_hook(lambda m, a, out: raw.append(out))
                      for i in (1, 2)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    r = signal_propagation(pathens.wrap(model, example_input=x), (x, y), progress=False)
    for i in range(2):
        scaled = model[i + 1].gamma.detach() * raw[i]
        assert r.branch_variance[i] == pytest.approx(stats(scaled, 1)[1], rel=TOL)
        assert r.branch_mean_sq[i] == pytest.approx(stats(scaled, 1)[0], rel=TOL)
        assert r.branch_variance_unscaled[i] == pytest.approx(stats(raw[i], 1)[1], rel=TOL)


def test_grad_norm_is_path_gradients_gradient_norm():
    """The same loss and normalisation as pathens.gradients: grad_norm[0] = its norm."""
    model = small_resnet(14)
    x, y = batch(5, seed=2)
    r = signal_propagation(model, (x, y), progress=False)
    pg = pathens.path_gradients(model, x, y, progress=False)
    assert r.grad_norm[0] == pytest.approx(pg.gradient_norm, rel=TOL)


def test_batching_invariance_and_loader():
    model = small_resnet(14, norm="skipinit")
    x, y = batch(7, seed=3)
    whole = signal_propagation(model, (x, y), batch_size=7, progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    for other in (signal_propagation(model, (x, y), batch_size=3, progress=False),
                  signal_propagation(model, loader, progress=False)):
        for key in ("channel_mean_sq", "channel_variance", "branch_mean_sq", "branch_variance",
                    "branch_variance_unscaled", "grad_norm", "norm_ratio"):
            np.testing.assert_allclose(getattr(other, key), getattr(whole, key), rtol=TOL,
                                       err_msg=key)


def test_transformer_stream_tokens_are_positions():
    """pathens.gpt, ReZero (scales 0.4 and 0.7): blocks are the attention and MLP sublayers;
    the stream (N, T, d) has d channels and N x T positions; next-token loss."""
    torch.manual_seed(0)
    model = pathens.gpt(depth=2, width=16, heads=2, context=16, vocab_size=32, norm="rezero",
                        alpha_init=0.4).double().eval()
    with torch.no_grad():
        model.h[1].scale_mlp.alpha.fill_(0.7)
    ids = torch.randint(0, 32, (3, 9), generator=torch.Generator().manual_seed(1))
    r = signal_propagation(model, (ids, ids), batch_size=2, progress=False)
    # the model itself: the stream before each sublayer, after the last; the branch outputs
    stream, raw, scaled, hooks = [], [], [], []

    def keep(out):
        out.retain_grad()
        stream.append(out)
    for layer in model.h:
        hooks.append(layer.register_forward_pre_hook(lambda m, a: keep(a[0])))
        hooks.append(layer.post_attn.register_forward_hook(lambda m, a, out: keep(out)))
        for name in ("attn", "mlp"):
            hooks.append(getattr(layer, name).register_forward_hook(
                lambda m, a, out: raw.append(out.detach())))
            hooks.append(getattr(layer, f"scale_{name}").register_forward_hook(
                lambda m, a, out: scaled.append(out.detach())))
    hooks.append(model.h[-1].register_forward_hook(lambda m, a, out: keep(out)))
    logits = model(ids)
    for h in hooks:
        h.remove()
    F.cross_entropy(logits[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1)).backward()
    assert r.block_names == ("h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp")
    assert len(stream) == 5 and r.num_items == 3 * 8
    for i, s in enumerate(stream):
        msq, var = stats(s.detach(), 2)
        assert r.channel_mean_sq[i] == pytest.approx(msq, rel=TOL)
        assert r.channel_variance[i] == pytest.approx(var, rel=TOL)
        assert r.grad_norm[i] == pytest.approx(float(s.grad.norm()), rel=TOL)
        assert r.channels[i] == 16 and r.num_positions[i] == 27
    for i in range(4):
        assert r.branch_variance[i] == pytest.approx(stats(scaled[i], 2)[1], rel=TOL)
        assert r.branch_variance_unscaled[i] == pytest.approx(stats(raw[i], 2)[1], rel=TOL)
    assert r.branch_variance[3] == pytest.approx(0.49 * r.branch_variance_unscaled[3], rel=TOL)


def test_plain_network_per_layer_without_branch_statistics():
    torch.manual_seed(0)
    model = randomize_bn(pathens.cifar_resnet(8, skip=False, width=4).double(), seed=1)
    view = pathens.wrap(model, allow_plain=True)
    x, y = batch(5, seed=4)
    r = signal_propagation(view, (x, y), batch_size=2, progress=False)
    stream, branch = cnn_reference(model, x, y)
    assert branch == [] and r.residual == (False, False, False)
    assert np.isnan(r.branch_variance).all() and np.isnan(r.branch_mean_sq).all()
    for i, s in enumerate(stream):
        assert r.channel_variance[i] == pytest.approx(stats(s.detach(), 1)[1], rel=TOL)
        assert r.grad_norm[i] == pytest.approx(float(s.grad.norm()), rel=TOL)
    assert np.prod(r.norm_ratio) == pytest.approx(r.grad_norm[0] / r.grad_norm[-1], rel=1e-12)
    table = r.table()
    assert len(table) == 4 and table[-1]["name"] == "output" and math.isnan(table[-1]["norm_ratio"])
    assert json.loads(r.to_json())["branch_variance"] == [None, None, None]


def test_attention_mask_leaves_padding_out():
    """Dict inputs with an attention_mask: the statistics run over the real tokens only, as
    the same tokens without padding give."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding: the real tokens see what they would see alone
    r = signal_propagation(model, ({"input_ids": ids, "attention_mask": mask}, ids),
                           progress=False)
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    real = torch.cat([h[0][0], h[0][1, :4]])  # (10, 16): the real positions of the stream
    assert r.num_positions[0] == 10
    assert r.channel_variance[0] == pytest.approx(stats(real, 1)[1], rel=TOL)
    assert r.channel_mean_sq[0] == pytest.approx(stats(real, 1)[0], rel=TOL)


def test_bad_input_one_line():
    model = small_resnet(8)
    x, y = batch(3)
    with pytest.raises(PathensError, match="at least 2 examples"):
        signal_propagation(model, (x[:1], y[:1]), progress=False)
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(PathensError, match="NaN or infinite"):
        signal_propagation(model, (bad, y), progress=False)
    with pytest.raises(PathensError, match="no residual blocks"):
        signal_propagation(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10)),
                           (x, y), progress=False)
    with pytest.raises(PathensError, match="channel_dim"):
        signal_propagation(model, (x, y), channel_dim=0, progress=False)
    with pytest.raises(PathensError, match="pair or a DataLoader"):
        signal_propagation(model, x, progress=False)
    huge = small_resnet(8, norm="none")
    with torch.no_grad():
        huge.linear.weight.mul_(1e300)
    with pytest.raises(PathensError, match="not finite"):
        signal_propagation(huge, (x * 1e10, y), progress=False)


def test_plot_several_networks_marks_transitions():
    from pathens.report.plots.signal import plot_signal_propagation
    x, y = batch(4)
    a = signal_propagation(small_resnet(14), (x, y), progress=False)
    b = signal_propagation(small_resnet(14, norm="skipinit"), (x, y), progress=False)
    fig = plot_signal_propagation({"BN": a, "SkipInit": b}, title="t")
    assert len(fig.axes) == 4
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert {"BN", "SkipInit", "downsampling block"} <= set(labels)
        vertical = {float(line.get_xdata()[0]) for line in ax.get_lines()
                    if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]}
        assert vertical == {2.0, 4.0}  # the downsampling blocks of a CIFAR ResNet-14
    assert fig.axes[0].get_yscale() in ("linear", "log")
    fig2 = plot_signal_propagation([a], panels=("grad",), ax=fig.axes[0])
    assert fig2 is fig
    with pytest.raises(PathensError, match="panels"):
        plot_signal_propagation(a, panels=("nope",))
    with pytest.raises(PathensError, match="one Axes per panel"):
        plot_signal_propagation(a, ax=fig.axes[0])
    matplotlib.pyplot.close("all")


# ---- torch.distributed: the sums are all-reduced -----------------------------------------------

def test_sums_are_all_reduced_across_ranks(monkeypatch):
    """Two ranks holding the same examples (all_sum doubles every sum, as the reduction of two
    equal shards does) give the numbers of one process on the examples twice over: the
    per-channel sums, counts and squared gradient norms all go through the reduction."""
    from pathens import distributed
    model = small_resnet(14, norm="skipinit")
    x, y = batch(5, seed=5)
    twice = signal_propagation(model, (torch.cat([x, x]), torch.cat([y, y])), batch_size=4,
                               progress=False)
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "describe", lambda: "2 processes (test)")
    monkeypatch.setattr(distributed, "shard", lambda n: slice(0, n))
    monkeypatch.setattr(distributed, "all_sum", lambda v: 2 * np.asarray(v, dtype=np.float64))
    monkeypatch.setattr(distributed, "all_sum_tensor", lambda t: t.mul_(2))
    r = signal_propagation(model, (x, y), batch_size=2, progress=False)
    assert r.num_examples == 10 and r.num_items == 10 and r.channels == twice.channels
    np.testing.assert_array_equal(r.num_positions, twice.num_positions)
    for key in ("channel_mean_sq", "channel_variance", "branch_variance",
                "branch_variance_unscaled", "grad_norm"):
        np.testing.assert_allclose(getattr(r, key), getattr(twice, key), rtol=TOL, err_msg=key)
