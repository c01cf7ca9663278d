"""Fixup (Zhang, Dauphin & Ma 2019) as norm="fixup" of pathens's CIFAR ResNets: the initialisation
checked against its definition, the view against the model's own forward, and the path-gradient
split against autograd once the parameters are moved off the initialisation."""
import math

import pytest
import torch
import torch.nn.functional as F

import pathens
from pathens.models.checkpoints import load, save_checkpoint
from pathens.cli import main
from pathens.models.cifar import FixupBlock, cifar_resnet
from pathens.models.train import param_groups

try:
    from cli_helpers import refused
except ImportError:  # tests/ imported as a package
    from tests.cli_helpers import refused


def perturbed(model, seed=0, std=0.05):
    """Every parameter moved by N(0, std^2): branches, multipliers and head leave 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def images(n=6, seed=1, channels=3, size=32):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_at_init_every_branch_is_zero_and_the_network_is_its_shortcuts(shortcut):
    torch.manual_seed(0)
    model = cifar_resnet(14, norm="fixup", shortcut=shortcut, width=4).eval()
    view = pathens.wrap(model)
    x = images()
    # every block's branch (times its scale) is 0 on the inputs it really gets
    h = view.stem(x)
    for blk in view.blocks:
        assert torch.equal(blk.branch(h), torch.zeros_like(blk.shortcut(h))), blk.name
        h = blk(h)
    # the stream before the head is the shortcut-only path, computed here from the modules
    s = F.relu(model.conv1(x))  # the stem: relu(conv1(x) + 0)
    for b in model.blocks:
        s = F.relu(s if b.shortcut is None else b.shortcut(s))
    assert torch.equal(h, s)
    # the classifier starts at 0: give it weights (branches still 0) and the logits are the
    # shortcut-only path's, as the view computes them with every branch deleted
    with torch.no_grad():
        model.linear.weight.normal_()
    out = model(x)
    assert torch.allclose(out, model.linear(s.mean((2, 3))), atol=1e-6)
    assert torch.allclose(out, view.run(x, deleted=range(view.num_blocks)), atol=1e-6)
    assert out.abs().max() > 0.1


def test_init_matches_the_fixup_rules():
    model = cifar_resnet(110, norm="fixup")
    blocks = model.blocks
    L = len(blocks)
    assert L == 54 and all(type(b) is FixupBlock for b in blocks)
    # rule 2: the last layer of every branch and the classifier are 0; scalars at 0 and 1
    assert all(torch.count_nonzero(b.conv2.weight) == 0 for b in blocks)
    assert torch.count_nonzero(model.linear.weight) == torch.count_nonzero(model.linear.bias) == 0
    for b in blocks:
        assert b.alpha.shape == () and b.alpha.item() == 1.0
        assert all(getattr(b, n).shape == () and getattr(b, n).item() == 0.0
                   for n in ("bias1a", "bias1b", "bias2a", "bias2b"))
    assert model.bn1.bias.item() == 0.0 and model.bias2.item() == 0.0
    assert all(c.bias is None for c in (model.conv1, *[b.conv1 for b in blocks]))
    # rule 1: conv1 is He init (std sqrt(2 / fan_in)) times L^(-1/(2m-2)), m = 2 layers: each
    # weight over its conv's He std, pooled (~300k weights; the std within ~0.3% of its
    # expectation), and per stage (>= 37k weights), against the factor; unscaled would be 7x
    factor = L ** (-1 / (2 * 2 - 2))

    def he_units(convs):
        return torch.cat([c.weight.flatten().double() / math.sqrt(2 / c.weight[0].numel())
                          for c in convs])

    w = he_units([b.conv1 for b in blocks])
    assert w.std().item() == pytest.approx(factor, rel=0.01)
    assert abs(w.mean().item()) < 4 * w.std().item() / math.sqrt(w.numel())
    for stage in ("layer1", "layer2", "layer3"):
        ratio = he_units([b.conv1 for b in getattr(model, stage)]).std().item()
        assert ratio == pytest.approx(factor, rel=0.03), (stage, ratio, factor)
    # the stem is plain He init (not a branch layer): 432 weights, within ~3.4% (1 sd)
    assert he_units([model.conv1]).std().item() == pytest.approx(1.0, rel=0.15)


def test_wrap_proves_the_view_and_alpha_is_the_blocks_scale():
    torch.manual_seed(0)
    model = perturbed(cifar_resnet(20, norm="fixup", shortcut="B", width=4)).eval()
    view = pathens.wrap(model)
    assert view.num_blocks == 9 and [b.index for b in view.blocks if b.downsample] == [3, 6]
    for blk, b in zip(view.blocks, model.blocks):
        assert blk.parts.scale is b.alpha and blk.parts.post is not None
    x = images()
    assert torch.allclose(view(x), model(x), atol=1e-5)
    # the view's protocol, block by block, against the module's own forward
    h = view.stem(x)
    for blk in view.blocks:
        assert torch.allclose(blk(h), blk.module(h), atol=1e-6)
        h = blk(h)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = perturbed(cifar_resnet(14, norm="fixup", width=4, in_channels=1)).eval()
    path = save_checkpoint(tmp_path / "fixup.pt", model, dataset="digits", seed=0)
    loaded, meta = load(path)
    assert meta["arch"]["norm"] == "fixup" and type(loaded.blocks[0]) is FixupBlock
    x = images(channels=1, size=8)
    assert torch.equal(loaded(x), model(x))


def test_path_gradients_sum_to_autograd_after_perturbing():
    torch.manual_seed(0)
    model = perturbed(cifar_resnet(14, norm="fixup", width=4), std=0.1).double().eval()
    x, y = images().double(), torch.arange(6) % 10
    pg = pathens.path_gradients(model, x, y, parameters=True, progress=False)
    assert pg.residual < 1e-10 and pg.gradient_norm > 0
    assert (pg.total[1:] > 0).all()  # the branches carry gradient now
    # every branch parameter (alpha and the scalar biases included) split by length sums to
    # autograd's gradient of the mean loss
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    view = pathens.wrap(model)
    for blk, comps in zip(view.blocks, pg.param_components):
        assert {"alpha", "bias2b", "conv2.weight"} <= set(comps)
        params = dict(blk.module.named_parameters())
        for name, c in comps.items():
            g = params[name].grad
            assert torch.allclose(c.sum(0), g, rtol=1e-9, atol=1e-12), (blk.name, name)


def test_at_init_the_gradient_is_all_at_length_zero():
    # with the classifier at 0 no gradient reaches the stream; give it weights: then only the
    # shortcut path (length 0) carries gradient, every branch being 0
    torch.manual_seed(0)
    model = cifar_resnet(14, norm="fixup", width=4).double().eval()
    with torch.no_grad():
        model.linear.weight.normal_()
    x, y = images().double(), torch.arange(6) % 10
    pg = pathens.path_gradients(model, x, y, progress=False)
    assert pg.total[0] > 0 and (pg.total[1:] == 0).all() and pg.residual < 1e-12


def test_bad_fixup_options():
    with pytest.raises(ValueError, match="post-activation"):
        cifar_resnet(20, norm="fixup", preact=True)
    with pytest.raises(ValueError, match="post-activation"):
        cifar_resnet(20, norm="fixup", skip=False)
    with pytest.raises(ValueError, match="alpha_init"):
        cifar_resnet(20, norm="fixup", alpha_init=0.5)


def test_scalars_train_at_a_tenth_of_the_learning_rate():
    fixup, bn = cifar_resnet(8, norm="fixup", width=4), cifar_resnet(8, width=4)
    decay, scalars = param_groups(fixup, 5e-4)
    assert decay["lr_scale"] == 1.0 and scalars["lr_scale"] == 0.1
    assert {id(p) for p in scalars["params"]} == {id(p) for p in fixup.parameters() if p.ndim < 2}
    assert all(g["lr_scale"] == 1.0 for g in param_groups(bn, 5e-4))


def test_cli_trains_and_loads_fixup(tmp_path, capsys):
    ckpt = tmp_path / "fixup.pt"
    assert main(["train", "--data", "digits", "--depth", "8", "--width", "4", "--norm", "fixup",
                 "--epochs", "1", "--limit", "256", "--batch-size", "64", "--out", str(ckpt),
                 "--quiet"]) == 0
    model, meta = load(ckpt)
    assert meta["arch"]["norm"] == "fixup" and all(type(b) is FixupBlock for b in model.blocks)
    assert "--norm fixup" in meta["extra"]["command"]
    # trained (the classifier moves first, the branches from the second step on): the
    # branches' last convs left 0, and the view of the trained network holds
    assert all(torch.count_nonzero(b.conv2.weight) for b in model.blocks)
    pathens.wrap(model)
    capsys.readouterr()
    for flags, match in ((["--preact"], "post-activation"), (["--plain"], "post-activation"),
                         (["--arch", "gpt"], "not a gpt normalisation")):
        refused(capsys, "train", "--data", "digits", "--depth", "8", "--norm", "fixup", *flags,
                "--out", tmp_path / "x.pt", match=match)
