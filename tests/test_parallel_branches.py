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


# ---- a hand-built CNN with multi-branch cells ------------------------------------------------

class Cell(nn.Module):
    """relu(S(x) + sum_j alpha_j conv-bn-relu-conv-bn_j(x)): `branches` parallel conv branches;
    stride 2 with a 1x1 conv-BN projection shortcut when the width changes."""

    def __init__(self, c_in, c_out, branches, stride=1):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
            for _ in range(branches)])
        self.alphas = nn.ParameterList([nn.Parameter(torch.tensor(0.6 + 0.3 * j))
                                        for j in range(branches)])
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out)) if c_in != c_out else None

    def forward(self, x):
        z = x if self.shortcut is None else self.shortcut(x)
        for a, conv in zip(self.alphas, self.convs):
            z = z + a * conv(x)
        return F.relu(z)


@pathens.register_block(Cell)
def cell_parts(cell):
    """One branch: BlockParts(branch=...); several: BlockParts(branches=...), each branch with
    its layers (closed-form transposes) and its scale."""
    if len(cell.convs) == 1:
        return pathens.BlockParts(branch=cell.convs[0], scale=cell.alphas[0], post=F.relu,
                                  shortcut=cell.shortcut, layers=tuple(cell.convs[0]))
    return pathens.BlockParts(post=F.relu, shortcut=cell.shortcut, branches=tuple(
        pathens.Branch(conv, scale=a, layers=tuple(conv), name=f"conv{j}")
        for j, (a, conv) in enumerate(zip(cell.alphas, cell.convs))))


class CellNet(nn.Module):
    """stem -> Cell(2 branches) -> Cell(1 branch) -> Cell(3 branches, stride 2) -> head:
    branch counts (2, 1, 3), 24 paths."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.cells = nn.Sequential(Cell(4, 4, 2), Cell(4, 4, 1), Cell(4, 8, 3, stride=2))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.cells(self.stem(x)).mean((2, 3)))


def cellnet():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = CellNet().double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # random statistics: no factor is the identity
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 3, 1][:n])


@pytest.fixture(scope="module")
def cnn():
    model = cellnet()
    return model, pathens.wrap(model, example_input=images()[0])


def stream_grad(model, first: str, loss_of):
    """d(loss)/d(stream entering the module `first`) by the model's own forward and backward
    (a pre-hook makes that input a leaf); loss_of(model) -> scalar."""
    leaf = {}

    def hook(module, args, kwargs):
        if args:
            leaf["h"] = args[0].detach().requires_grad_(True)
            return (leaf["h"], *args[1:]), kwargs
        key = next(iter(kwargs))
        leaf["h"] = kwargs[key].detach().requires_grad_(True)
        return args, {**kwargs, key: leaf["h"]}

    handle = model.get_submodule(first).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return torch.autograd.grad(loss_of(model), leaf["h"])[0]
    finally:
        handle.remove()


def single_paths(view, x, loss, params=None):
    """Every path's gradient at the first block's input, by autograd through the view with
    detach routes: [(routes, gradient, parameter gradients or None)]."""
    h, ctx = view.embed(x)
    out = []
    for r in P.enumerate_paths(view.branch_counts):
        h0 = h.detach().requires_grad_(True)
        value = loss(view.run_from(h0, 0, routes=r, ctx=ctx))
        grads = torch.autograd.grad(value, [h0] + (params or []), allow_unused=True)
        out.append((np.asarray(r).astype(int), grads[0], grads[1:]))
    return out


def by_length(view, singles):
    B = [0.0] * (view.num_blocks + 1)
    for r, g, _ in singles:
        B[int((r > 0).sum())] = B[int((r > 0).sum())] + g
    return B


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_cnn_wraps_with_its_branches(cnn):
    model, view = cnn
    x, _ = images()
    assert view.num_blocks == 3 and view.branch_counts == (2, 1, 3)
    assert view.blocks[0].branch_names == ["conv0", "conv1"] and view.blocks[2].downsample
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x), rtol=0, atol=1e-13)
    from pathens.measure.linearize import Folded, linearize
    with torch.no_grad():  # every cell's branches listed their layers: closed-form transposes
        h = view.stem(x)
        for b in view.blocks:
            lin, h = linearize(b, h)
            assert isinstance(lin, Folded) and lin.num_branches == b.num_branches


@pytest.mark.parametrize("form", ["folded", "autograd"])
def test_cnn_exact_components_equal_brute_force(cnn, form, monkeypatch):
    """G_k = the sum of the gradients of the path_counts(2, 1, 3)[k] single paths of length k
    (24 paths by autograd), sum_k G_k = the model's own gradient; closed-form transposes and
    the autograd fallback alike."""
    model, view = cnn
    if form == "autograd":
        from pathens.measure.linearize import Folded
        monkeypatch.setattr(Folded, "build", classmethod(lambda cls, block, x: None))
    x, y = images()
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    assert res.counts.tolist() == P.path_counts([2, 1, 3]) == [1, 6, 11, 6]
    B = by_length(view, single_paths(view, x, lambda z: F.cross_entropy(z, y)))
    for k in range(4):
        assert rel(res.components[k], B[k]) < 1e-12, f"length {k}"
    truth = stream_grad(model, "cells.0", lambda m: F.cross_entropy(m(x), y))
    assert rel(res.components.sum(0), truth) < 1e-12 and res.residual < 1e-12
    np.testing.assert_allclose(res.per_path, res.total / np.array([1, 6, 11, 6]))


def test_cnn_parameter_split_equals_brute_force(cnn):
    """P[i][k]: block i's branch-parameter gradient carried by paths through one of its
    branches and k - 1 later ones = the brute-force sum over those paths (taking the shortcut
    before block i: the blocks before it do not change that gradient); sum_k = autograd."""
    model, view = cnn
    x, y = images()
    res = pathens.path_gradients(view, x, y, parameters=True, progress=False)
    from pathens.measure.linearize import branch_parameters
    for i, block in enumerate(view.blocks):
        named = branch_parameters(block)
        singles = single_paths(view, x, lambda z: F.cross_entropy(z, y), [p for _, p in named])
        for j, (name, p) in enumerate(named):
            want = torch.zeros((view.num_blocks + 1, *p.shape), dtype=p.dtype)
            for r, _, grads in singles:
                if (r[:i] == 0).all() and r[i] > 0 and grads[j] is not None:
                    want[int((r[i:] > 0).sum())] += grads[j]
            got = res.param_components[i][name]
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
            truth = torch.autograd.grad(F.cross_entropy(model(x), y), p, allow_unused=True)[0]
            torch.testing.assert_close(got.sum(0), truth, rtol=1e-10, atol=1e-14)


def test_cnn_sampled_protocol_scales_by_the_path_count(cnn):
    """Veit's protocol on uniform paths of each length: per_path estimates the mean norm of the
    N_k single-path gradients (brute force), total = N_k x per_path, within 5 standard errors;
    length 0 (one path) exactly."""
    model, view = cnn
    x, y = images()
    res = pathens.path_gradients(view, x, y, method="sampled", samples_per_length=150, seed=3,
                                 progress=False)
    singles = single_paths(view, x, lambda z: F.cross_entropy(z, y))
    counts = np.array(P.path_counts(view.branch_counts), float)
    assert res.counts.tolist() == counts.tolist()
    for k in range(4):
        norms = [float(g.norm()) for r, g, _ in singles if (r > 0).sum() == k]
        assert len(norms) == counts[k]
        assert abs(res.per_path[k] - np.mean(norms)) <= 5 * res.per_path_se[k] + 1e-12, k
        assert res.total[k] == pytest.approx(counts[k] * res.per_path[k], rel=1e-12)
    assert res.per_path_se[0] == 0


def zeroed(model, modules):
    """A deep copy of the model whose `modules` output zeros (forward hooks)."""
    edited = copy.deepcopy(model)
    for path in modules:
        edited.get_submodule(path).register_forward_hook(
            lambda m, a, out: (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple)
            else torch.zeros_like(out))
    return edited


def test_cnn_deleting_a_branch_or_the_block_equals_the_edited_model(cnn):
    model, view = cnn
    x, y = images()
    cases = [([(0, 1)], ["cells.0.convs.1"]), (["cells.0.conv0"], ["cells.0.convs.0"]),
             ([(2, "conv2"), (2, 0)], ["cells.2.convs.2", "cells.2.convs.0"]),
             ([2], ["cells.2.convs.0", "cells.2.convs.1", "cells.2.convs.2"]),
             (["cells.1"], ["cells.1.convs.0"])]
    with torch.no_grad():
        for deleted, modules in cases:
            want = zeroed(model, modules)(x)
            assert not torch.allclose(want, model(x))
            torch.testing.assert_close(view.run(x, deleted=deleted), want, rtol=0, atol=1e-13)
            row = lesion.evaluate(view, (x, y), deleted=deleted)
            assert row["loss"] == pytest.approx(float(F.cross_entropy(want, y)), rel=1e-12)
    assert view.deletions([(2, 0), (2, 1), (2, 2)]) == (2,)  # every branch: the block
    assert view.deletions([(1, 0), (0, "conv1"), 2]) == ((0, 1), 1, 2)  # (1, 0): block 1
    row = lesion.evaluate(view, (x, y), deleted=["cells.0.conv1", 1])
    assert row["deleted"] == [[0, 1], 1] and row["k"] == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(deleted=[(0, 2)]), r"block 0 \(cells.0\) has 2 branches, numbered 0..1"),
    (dict(deleted=[(0, "conv9")]), "has no branch named 'conv9' .*conv0, conv1"),
    (dict(deleted=["cells.0.conv9"]), "no block or module is named 'cells.0.conv9'"),
    (dict(path={0}), r"block 0 \(cells.0\) has 2 parallel branches; give the path as routes="),
    (dict(routes=[3, 0, 0]), r"block 0 \(cells.0\) has routes 0..2"),
    (dict(routes=[1, 0]), "routes must be 3 integers"),
])
def test_bad_branch_arguments_are_one_line(cnn, kwargs, match):
    _, view = cnn
    with pytest.raises(pathens.PathensError, match=match) as e:
        view.run(images()[0], **kwargs)
    assert "\n" not in str(e.value)


def test_block_parts_refuse_a_mixed_or_single_branch_list():
    with pytest.raises(pathens.WrapError, match="two or more pathens.Branch .*got 1: Branch$"):
        pathens.BlockParts(branches=(pathens.Branch(F.relu),))
    with pytest.raises(pathens.WrapError, match="no branch, scale or layers of its own"):
        pathens.BlockParts(branch=F.relu, branches=(pathens.Branch(F.relu), pathens.Branch(F.relu)))
    with pytest.raises(pathens.WrapError, match="needs a branch"):
        pathens.BlockParts()


# ---- Pythia / GPT-NeoX (parallel residual), Phi, Cohere --------------------------------------

T = pytest.importorskip("transformers")
VOCAB = 100
DEC = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=VOCAB,
           max_position_embeddings=24, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
           eos_token_id=2)


def lm(cls, config_cls, layers=2, seed=0, **kw):
    """A tiny float64 causal LM with random norm weights and biases (no norm is the plain
    standardisation), in eval mode."""
    torch.manual_seed(seed)
    model = getattr(T, cls)(getattr(T, config_cls)(**DEC, num_hidden_layers=layers, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None:
                m.weight.copy_(0.7 + 0.6 * torch.rand(m.weight.shape, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.double().eval()


def tokens(n=2, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n, t), generator=g)


def next_token(z, ids):
    """The mean next-token loss of logits z (N, T, V): position t predicts token t + 1."""
    return F.cross_entropy(z[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


@pytest.fixture(scope="module")
def pythia(one_thread):
    """GPT-NeoX with use_parallel_residual=True (Pythia's layout), 3 layers: 27 paths."""
    model = lm("GPTNeoXForCausalLM", "GPTNeoXConfig", layers=3, use_parallel_residual=True)
    return model, pathens.wrap(model)


def test_pythia_wraps_as_one_block_of_two_branches_per_layer(pythia):
    model, view = pythia
    x = tokens()
    assert view.num_blocks == 3 and view.branch_counts == (2, 2, 2)
    assert [b.name for b in view.blocks] == [f"gpt_neox.layers.{i}" for i in range(3)]
    assert all(b.branch_names == ["attn", "mlp"] for b in view.blocks)
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x).logits, rtol=1e-12, atol=1e-12)


def test_pythia_exact_components_equal_brute_force_over_all_27_paths(pythia):
    model, view = pythia
    x = tokens()
    res = pathens.path_gradients(view, x, x, components=True, progress=False)
    assert res.counts.tolist() == P.path_counts((2, 2, 2)) == [1, 6, 12, 8]
    singles = single_paths(view, x, lambda z: next_token(z, x))
    assert len(singles) == 27
    B = by_length(view, singles)
    for k in range(4):
        assert rel(res.components[k], B[k]) < 1e-10, f"length {k}"
    truth = stream_grad(model, "gpt_neox.layers.0", lambda m: next_token(m(x).logits, x))
    assert rel(res.components.sum(0), truth) < 1e-12 and res.residual < 1e-12
    assert res.fraction()[2:].sum() > 1e-3  # long paths carry gradient: nothing trivial


def test_pythia_parameter_split_sums_to_autograd(pythia):
    """Each layer's parameters (both norms, attention, MLP): sum_k P[i][k] = the model's own
    gradient of them."""
    model, view = pythia
    x = tokens()
    res = pathens.path_gradients(view, x, x, parameters=True, progress=False)
    layer = model.gpt_neox.layers[1]
    truth = dict(zip([n for n, _ in layer.named_parameters()], torch.autograd.grad(
        next_token(model(x).logits, x), list(layer.parameters()))))
    got = res.param_components[1]
    assert set(got) == set(truth)
    for name, g in truth.items():
        torch.testing.assert_close(got[name].sum(0), g, rtol=1e-9, atol=1e-13)
    assert float(got["attention.dense.weight"][1].norm()) > 0  # paths of length 1 reach it


def test_pythia_deletions_equal_the_hand_edited_model(pythia):
    """One branch (attention or MLP of a layer) deleted = that sublayer's output zeroed by a
    forward hook; the whole block = both zeroed."""
    model, view = pythia
    x = tokens()
    cases = [(["gpt_neox.layers.1.attn"], ["gpt_neox.layers.1.attention"]),
             ([(0, "mlp")], ["gpt_neox.layers.0.mlp"]),
             ([(2, 0), 0], ["gpt_neox.layers.2.attention", "gpt_neox.layers.0.attention",
                            "gpt_neox.layers.0.mlp"]),
             (["gpt_neox.layers.1"], ["gpt_neox.layers.1.attention", "gpt_neox.layers.1.mlp"])]
    with torch.no_grad():
        intact = float(next_token(model(x).logits, x))
        for deleted, modules in cases:
            want = zeroed(model, modules)(x).logits
            torch.testing.assert_close(view.run(x, deleted=deleted), want, rtol=1e-12,
                                       atol=1e-12)
            row = lesion.evaluate(view, (x, x), deleted=deleted)
            assert row["loss"] == pytest.approx(float(next_token(want, x)), rel=1e-10)
            assert abs(row["loss"] - intact) > 1e-6, deleted


@pytest.mark.parametrize("cls,config,tol", [
    ("PhiForCausalLM", "PhiConfig", 1e-12),
    # Cohere's LayerNorm computes in float32 inside a float64 model: float32 rounding
    ("CohereForCausalLM", "CohereConfig", 1e-5)])
def test_shared_norm_families_wrap_and_sum_to_autograd(cls, config, tol):
    """Phi and Cohere, x + attn(ln(x)) + mlp(ln(x)) with ONE norm: a block of two branches per
    layer that reproduces the model, sums to its own gradient (the shared norm's parameters
    too: both branches reach them) and deletes like the hand-edited model."""
    kw = dict(logit_scale=0.5) if cls.startswith("Cohere") else {}
    model = lm(cls, config, layers=2, seed=5, **kw)
    view = pathens.wrap(model)
    x = tokens(seed=1)
    assert view.num_blocks == 2 and view.branch_counts == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x).logits, rtol=1e-12, atol=1e-12)
    res = pathens.path_gradients(view, x, x, components=True, parameters=True, progress=False)
    truth = stream_grad(model, "model.layers.0", lambda m: next_token(m(x).logits, x))
    assert rel(res.components.sum(0), truth) < tol
    norm = model.model.layers[0].input_layernorm.weight
    want = torch.autograd.grad(next_token(model(x).logits, x), norm)[0]
    assert rel(res.param_components[0]["input_layernorm.weight"].sum(0), want) < tol
    with torch.no_grad():
        edited = zeroed(model, ["model.layers.1.mlp"])(x).logits
        torch.testing.assert_close(view.run(x, deleted=["model.layers.1.mlp"]), edited,
                                   rtol=1e-12, atol=1e-12)


def test_pythia_effective_depth_and_figure_count_all_3_to_the_L_paths(pythia):
    """The share of paths inside the effective-depth interval counts the 27 paths (not 2^3),
    and the path-length figure draws their distribution, prod(1 + 2t) / 27."""
    import matplotlib
    matplotlib.use("Agg")
    _, view = pythia
    x = tokens()
    res = pathens.path_gradients(view, x, x, progress=False)
    assert res.config["branches"] == [2, 2, 2]
    d = pathens.effective_depth(res)
    lo, hi = d.interval
    assert d.path_fraction == pytest.approx(sum([1, 6, 12, 8][lo:hi + 1]) / 27, rel=1e-15)
    fig = pathens.plots.plot_path_length_distribution(view.branch_counts)
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), np.array([1, 6, 12, 8]) / 27, rtol=1e-12)
    assert "27 paths" in line.get_label()


def test_the_proof_refuses_a_wrong_parallel_adapter():
    """An adapter that leaves out one of three branches, or lists layers that do not compute a
    branch, is refused naming the block and its branches."""
    class LostBranch(Cell):
        pass

    class WrongLayers(Cell):
        pass

    pathens.register_block(LostBranch, lambda c: pathens.BlockParts(
        post=F.relu, shortcut=c.shortcut, branches=tuple(
            pathens.Branch(conv, scale=a, name=f"conv{j}")
            for j, (a, conv) in enumerate(zip(c.alphas[:2], c.convs[:2])))))
    pathens.register_block(WrongLayers, lambda c: pathens.BlockParts(
        post=F.relu, shortcut=c.shortcut, branches=tuple(
            pathens.Branch(conv, scale=a, layers=tuple(c.convs[0]), name=f"conv{j}")
            for j, (a, conv) in enumerate(zip(c.alphas, c.convs)))))
    for cls, match in [(LostBranch, r"block cells.2 \(LostBranch\) is not post\(shortcut\(x\) "
                                    r"\+ sum of its 2 parallel branches \(conv0, conv1\)\)"),
                       (WrongLayers, r"block cells.0 \(branch conv1\) \(WrongLayers\): the "
                                     r"layers its adapter lists do not compute its branch")]:
        model = cellnet()
        for cell in (model.cells[0], model.cells[2]):  # the cells of 2 and 3 branches
            cell.__class__ = cls
        with pytest.raises(pathens.WrapError, match=match) as e:
            pathens.wrap(model, example_input=images()[0])
        assert "\n" not in str(e.value)
