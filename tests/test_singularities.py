"""Singularities per layer (pathens.singularities), checked against numpy on activations the test
captures itself (forward hooks on the model's own modules), on layers built with known dead,
duplicated, negated and linearly dependent units."""
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from pathens.errors import PathensError
from pathens.measure.singularities import singularities

matplotlib.use("Agg")

try:
    from nets import randomize_bn
    from realdata import akamaster_checkpoint, load_cifar_npz, requires_realdata
except ImportError:  # tests/ imported as a package
    from tests.nets import randomize_bn
    from tests.realdata import akamaster_checkpoint, load_cifar_npz, requires_realdata


class MLPBlock(nn.Module):
    """x + fc2(act(fc1(x))): act an activation module (found by hooks) or a function (found
    as a functional call)."""

    def __init__(self, d, hidden, act):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.act = act

    def branch(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x):
        return x + self.branch(x)


pathens.register_block(MLPBlock, lambda b: pathens.BlockParts(branch=b.branch))


class MLPNet(nn.Module):
    def __init__(self, blocks, d_in=3, d=4, classes=5):
        super().__init__()
        self.stem, self.blocks, self.head = nn.Linear(d_in, d), nn.Sequential(*blocks), \
            nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def identity_act(x):
    # a functional activation that is the identity: the layer is linear in the block's input
    return F.leaky_relu(x, negative_slope=1.0)


def hand_built(seed=0):
    """Three blocks of 8 hidden units over a 4-dim stream fed by 3 inputs (so the stream
    entering block 0 has rank 3 of 4):
    block 0 (nn.ReLU): unit 0 dead (weights 0, bias -1); units 1, 2, 3: unit 1, an exact copy,
        twice unit 1 (ReLU is homogeneous): one triple of overlapping units;
    block 1 (nn.Tanh): unit 0 dead (weights 0, bias 0); unit 2 = -unit 1 (tanh is odd): a
        negated copy;
    block 2 (a functional leaky_relu of slope 1, the identity): 8 units linear in a 4-dim
        input: rank 4."""
    torch.manual_seed(seed)
    d, h = 4, 8
    blocks = [MLPBlock(d, h, nn.ReLU()), MLPBlock(d, h, nn.Tanh()), MLPBlock(d, h, identity_act)]
    model = MLPNet(blocks).double().eval()
    with torch.no_grad():
        for b in blocks:
            b.fc2.weight.mul_(0.3)
        w, bias = blocks[0].fc1.weight, blocks[0].fc1.bias
        w[0], bias[0] = 0.0, -1.0
        w[2], bias[2] = w[1], bias[1]
        w[3], bias[3] = 2 * w[1], 2 * bias[1]
        w, bias = blocks[1].fc1.weight, blocks[1].fc1.bias
        w[0], bias[0] = 0.0, 0.0
        w[2], bias[2] = -w[1], -bias[1]
    return model


def run(model, data, **kw):
    """singularities of a hand-built network (wrapped with a probe of its own inputs)."""
    view = pathens.wrap(model, example_input=inputs(n=4, seed=9))
    return singularities(view, data, **{"progress": False, **kw})


def inputs(n=400, d_in=3, seed=1):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def captured(model, x):
    """{name: (samples, units) numpy} by the model's own forward with hooks on its modules:
    every block's input, and its hidden layer (the act module's output, or act(fc1's output)
    for a functional act)."""
    out, handles = {}, []
    for i, b in enumerate(model.blocks):
        handles.append(b.register_forward_pre_hook(
            lambda m, args, i=i: out.__setitem__(f"blocks.{i}.input", args[0].clone())))
        if isinstance(b.act, nn.Module):
            handles.append(b.act.register_forward_hook(
                lambda m, a, o, i=i: out.__setitem__(f"blocks.{i}.act", o.clone())))
        else:
            handles.append(b.fc1.register_forward_hook(
                lambda m, a, o, i=i, f=b.act: out.__setitem__(f"blocks.{i}.leaky_relu", f(o))))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {k: v.numpy() for k, v in out.items()}


def oracle(A, eps=1e-3, share=1.0, delta=0.01, variance=0.99):
    """The module docstring's definitions, written directly in numpy."""
    u = A.shape[1]
    typical = np.abs(A).mean()
    eliminated = (np.abs(A) <= eps * typical).mean(0) >= share
    cov = np.cov(A, rowvar=False)
    sd = np.sqrt(np.diag(cov))
    constant = ~eliminated & (sd <= 1e-6 * typical)
    keep = np.flatnonzero(~eliminated & ~constant)
    pairs = [(a, b) for i, a in enumerate(keep) for b in keep[i + 1:]]
    corr = [abs(np.corrcoef(A[:, a], A[:, b])[0, 1]) for a, b in pairs]
    close = [p for p, c in zip(pairs, corr) if c >= 1 - delta]
    s = np.sort(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1]
    k = next(k for k in range(1, u + 1) if s[:k].sum() >= variance * s.sum() * (1 - 1e-12))
    return {"eliminated": eliminated.mean(), "constant": constant.mean(), "cov": cov,
            "overlapping": len(close) / len(pairs) if pairs else math.nan,
            "overlapping_units": len({v for p in close for v in p}) / u,
            "max_corr": max(corr) if corr else math.nan,
            "participation_ratio": s.sum() ** 2 / (s ** 2).sum() / u, "components": k / u,
            "eigenvalues": s}


def test_hand_built_layers_give_the_exact_fractions():
    model, x = hand_built(), inputs()
    s = run(model, (x, torch.zeros(len(x), dtype=torch.long)))
    assert s.names == ("blocks.0.input", "blocks.0.act", "blocks.1.input", "blocks.1.act",
                       "blocks.2.input", "blocks.2.leaky_relu")
    assert s.kinds == ("stream", "hidden") * 3 and list(s.blocks) == [0, 0, 1, 1, 2, 2]
    assert list(s.units) == [4, 8] * 3 and set(s.samples) == {400}
    rows = {n: r for n, r in zip(s.names, s.table())}
    # ReLU layer: 1 dead unit; units 1-3 are one unit and its copies: 3 of C(7, 2) pairs
    relu = rows["blocks.0.act"]
    assert relu["eliminated"] == 1 / 8 and relu["overlapping"] == pytest.approx(3 / 21)
    assert relu["overlapping_units"] == 3 / 8 and relu["max_corr"] == pytest.approx(1, abs=1e-12)
    # tanh layer: 1 dead unit, 1 negated pair
    tanh = rows["blocks.1.act"]
    assert tanh["eliminated"] == 1 / 8 and tanh["overlapping"] == pytest.approx(1 / 21)
    assert tanh["overlapping_units"] == 2 / 8
    # linear layer of 8 units over a 4-dim input: rank 4, so 4 components hold all the
    # variance (and 99% of it at most 4)
    lin = rows["blocks.2.leaky_relu"]
    assert lin["components"] <= 4 / 8 and lin["eliminated"] == 0
    spectrum = s.eigenvalues[5]
    assert spectrum[3] > 1e-6 * spectrum[0] and spectrum[4:].max() < 1e-12 * spectrum[0]
    # all the variance (variance=1) takes the rank: the stream entering block 0 is a linear
    # map of 3 inputs into 4 dims (3), later streams add the blocks' nonlinear branches (4);
    # the ReLU layer loses its dead unit and 2 copies (5 of 8), the tanh layer its dead unit
    # and the negated copy (6 of 8)
    full = run(model, x, variance=1.0)
    assert list(full.components) == [3 / 4, 5 / 8, 1.0, 6 / 8, 1.0, 4 / 8]
    assert full.config["variance"] == 1.0


def test_every_number_matches_numpy_on_the_captured_activations():
    model, x = hand_built(), inputs()
    s = run(model, x, covariances=True)
    acts = captured(model, x)
    assert set(acts) == set(s.names)
    for i, name in enumerate(s.names):
        want = oracle(acts[name])
        np.testing.assert_allclose(s.covariances[i], want["cov"], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(s.eigenvalues[i], want["eigenvalues"], rtol=1e-8,
                                   atol=1e-12 * want["eigenvalues"][0])
        for key in ("eliminated", "constant", "overlapping", "overlapping_units", "components"):
            assert s.table()[i][key] == pytest.approx(want[key], nan_ok=True), (name, key)
        for key in ("max_corr", "participation_ratio"):
            assert s.table()[i][key] == pytest.approx(want[key], rel=1e-10), (name, key)
        assert s.typical[i] == pytest.approx(np.abs(acts[name]).mean(), rel=1e-12)


def test_share_and_eps_thresholds():
    # each ReLU unit is 0 on part of the samples (its input's sign): eliminated for a share q
    # up to that part, not above it
    model, x = hand_built(), inputs()
    h = captured(model, x)["blocks.0.act"]
    below = (np.abs(h) <= 1e-3 * np.abs(h).mean()).mean(0)  # per unit
    assert len(set(below)) >= 5 and 0 < below[1:].min() < below[1:].max() < 1
    for q in sorted(set(below)):
        at = run(model, x, share=q)
        assert at.eliminated[1] == (below >= q).mean() and at.config["share"] == q
        if q < 1:
            assert run(model, x, share=q + 1e-3).eliminated[1] == (below > q).mean()
    # eps large enough puts every unit under the threshold on every sample
    big = run(model, x, eps=1e6)
    assert (big.eliminated == 1).all() and np.isnan(big.overlapping).all()
    assert (big.overlapping_units == 0).all()
    assert big.config["eps"] == 1e6 and big.config["share"] == 1.0


def test_streaming_batches_of_3_equal_one_batch_and_max_examples_caps():
    model, x = hand_built(), inputs(n=100)
    one = run(model, x, batch_size=100, covariances=True)
    small = run(model, x, batch_size=3, covariances=True)
    for key in ("eliminated", "overlapping", "overlapping_units", "components", "samples"):
        np.testing.assert_array_equal(getattr(one, key), getattr(small, key))
    for key in ("typical", "max_corr", "participation_ratio"):
        np.testing.assert_allclose(getattr(one, key), getattr(small, key), rtol=1e-12)
    for a, b in zip(one.covariances, small.covariances):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-15)
    capped = run(model, x, batch_size=7, max_examples=40, covariances=True,
                           progress=False)
    first = run(model, x[:40], covariances=True)
    assert capped.config["num_examples"] == 40 and capped.config["capped"] is True
    assert first.config["capped"] is False and set(capped.samples) == {40}
    for a, b in zip(capped.covariances, first.covariances):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-15)
    # a loader of (inputs, targets) batches gives the same numbers
    loader = [(x[i:i + 16], torch.zeros(len(x[i:i + 16]), dtype=torch.long))
              for i in range(0, 100, 16)]
    looped = run(model, loader)
    np.testing.assert_allclose(looped.participation_ratio, one.participation_ratio, rtol=1e-12)


class Changing:
    """A loader that draws new examples every pass."""

    def __init__(self):
        self.g = torch.Generator().manual_seed(0)

    def __iter__(self):
        return iter([torch.randn(20, 3, generator=self.g, dtype=torch.float64)])


def test_bad_input_is_a_one_line_error():
    model, x = hand_built(), inputs(n=10)
    cases = [({"eps": -1}, "eps"), ({"eps": float("nan")}, "eps"), ({"share": 0}, "share"),
             ({"share": 1.5}, "share"), ({"delta": 0}, "delta"), ({"delta": 1}, "delta"),
             ({"variance": 0}, "variance"), ({"variance": 1.1}, "variance"),
             ({"positions": "max"}, "positions"), ({"max_examples": 1}, "max_examples"),
             ({"batch_size": 0}, "batch_size")]
    for kwargs, word in cases:
        with pytest.raises(PathensError, match=word) as err:
            run(model, x, progress=False, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(PathensError, match="at least 2"):
        run(model, x[:1])
    with pytest.raises(PathensError, match="changed between the two passes"):
        run(model, Changing())
    narrow = MLPNet([MLPBlock(4, 1, nn.ReLU())]).double()
    with pytest.raises(PathensError, match=r"blocks\.0\.act has 1 unit"):
        run(narrow, x)


def test_a_pathens_resnet_against_its_own_modules():
    torch.manual_seed(0)
    model = randomize_bn(pathens.cifar_resnet(8, width=4).double())
    with torch.no_grad():  # kill channel 1 of the first block's hidden layer: relu(bn1(.)) = 0
        model.layer1[0].bn1.weight[1] = 0.0
        model.layer1[0].bn1.bias[1] = -1.0
    x = torch.randn(24, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got, bn1 = {}, []
    handles = [h for b in model.blocks for h in (
        b.register_forward_pre_hook(lambda m, a, b=b: got.__setitem__(b, a[0])),
        b.bn1.register_forward_hook(lambda m, a, o: bn1.append(o)))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    hidden = [F.relu(o) for o in bn1]  # the branch's hidden layer: relu(bn1(conv1(x)))
    for positions in ("mean", "all"):
        s = singularities(model, x, positions=positions, batch_size=5, covariances=True,
                          progress=False)
        names = [f"layer{i}.0.{k}" for i in (1, 2, 3) for k in ("input", "relu")]
        assert list(s.names) == names and s.config["positions"] == positions
        acts = [t for b, h in zip(model.blocks, hidden) for t in (got[b], h)]
        for i, a in enumerate(acts):
            a = a.movedim(1, -1)
            a = a.mean((1, 2)) if positions == "mean" else a.reshape(-1, a.shape[-1])
            want = oracle(a.numpy())
            np.testing.assert_allclose(s.covariances[i], want["cov"], rtol=1e-9, atol=1e-13)
            assert s.eliminated[i] == want["eliminated"]
            assert s.samples[i] == len(a)
        assert s.eliminated[1] == 1 / 4
    assert s.samples[0] == 24 * 64 and s.samples[5] == 24 * 4


@requires_realdata
def test_a_trained_resnet_on_real_images():
    # akamaster's trained ResNet-20 on 200 CIFAR-10 test images (float32): the layers the
    # model computes itself (each block's input and relu(bn1(conv1(.))) by hooks) against
    # numpy, and the dead ReLUs training leaves (the full 1000 images: 4.9% of hidden units)
    from pathens.models.checkpoints import load_weights
    x, _ = load_cifar_npz("cifar10_test_first1000")
    x = x[:200]
    model = load_weights(pathens.cifar_resnet(20), akamaster_checkpoint(20)).eval()
    acts, handles = [], []
    for b in model.blocks:
        handles.append(b.register_forward_pre_hook(lambda m, a: acts.append(a[0])))
        handles.append(b.bn1.register_forward_hook(lambda m, a, o: acts.append(o)))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    acts = [a if i % 2 == 0 else F.relu(a) for i, a in enumerate(acts)]
    s = singularities(model, x, batch_size=64, covariances=True, progress=False)
    assert len(s.names) == len(acts) == 18
    for i, a in enumerate(acts):
        want = oracle(a.double().mean((2, 3)).numpy())
        scale = np.abs(want["cov"]).max()
        np.testing.assert_allclose(s.covariances[i], want["cov"], atol=1e-5 * scale)
        assert s.eliminated[i] == want["eliminated"], s.names[i]
        assert s.overlapping_units[i] == want["overlapping_units"], s.names[i]
        assert s.participation_ratio[i] == pytest.approx(want["participation_ratio"], rel=1e-4)
    assert s.eliminated[s.rows("hidden")].max() > 0


def test_hidden_layers_of_other_families():
    from torchvision.models import resnet18
    from torchvision.models.resnet import Bottleneck
    # torchvision calls one nn.ReLU module in the branch and after the sum: only the branch's
    # calls are hidden layers (BasicBlock: one; Bottleneck: two)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s = singularities(resnet18(num_classes=10).eval(), x, progress=False)
    assert [n for n in s.names if not n.endswith(".input")][:2] == ["layer1.0.relu",
                                                                   "layer1.1.relu"]
    assert len(s.rows("hidden")) == len(s.rows("stream")) == 8
    bottlenecks = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), Bottleneck(16, 4),
                                Bottleneck(16, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(16, 10)).eval()
    s = singularities(pathens.wrap(bottlenecks, example_input=x), x, progress=False)
    assert s.names == ("1.input", "1.relu", "1.relu#2", "2.input", "2.relu", "2.relu#2")
    assert list(s.units) == [16, 4, 4] * 2
    # pathens's GPT: the MLP's F.gelu over 4 x width units, every token a sample with "all"
    gpt = pathens.gpt(depth=2, width=16, heads=2, context=8, vocab_size=20)
    ids = torch.randint(0, 20, (6, 8), generator=torch.Generator().manual_seed(0))
    s = singularities(gpt, ids, positions="all", progress=False)
    assert s.names == ("h.0.attn.input", "h.0.mlp.input", "h.0.mlp.gelu", "h.1.attn.input",
                       "h.1.mlp.input", "h.1.mlp.gelu")
    assert list(s.units) == [16, 16, 64] * 2 and set(s.samples) == {48}


def test_result_writes_and_plots(tmp_path):
    from pathens.report.plots.singularities import plot_singularities
    model, x = hand_built(), inputs(n=50)
    s = run(model, x)
    other = run(hand_built(seed=3), x)
    assert "eigenvalues" not in s.to_dict() and s.to_dict()["config"]["positions"] == "mean"
    assert s.to_csv().splitlines()[0].split(",")[:4] == ["index", "name", "block", "kind"]
    assert "Singularities(6 layers (3 hidden)" in repr(s)
    fig = plot_singularities({"a": s, "b": other})
    assert len(fig.axes) == 4
    ax = fig.axes[0]
    assert [ln.get_label() for ln in ax.lines] == ["a", "b"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), s.eliminated[s.rows("hidden")])
    import matplotlib.pyplot as plt
    _, one = plt.subplots()
    assert plot_singularities([s], one, metric="max_corr", kind="stream") is one.figure
    with pytest.raises(ValueError, match="metric"):
        plot_singularities(s, metric="dead")
    plt.close("all")
