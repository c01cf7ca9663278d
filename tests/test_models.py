import itertools

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from pathens.models.cifar import BasicBlock, CifarResNet, PreActBlock, ResidualBlock, ZeroPadShortcut, cifar_resnet

try:
    from realdata import akamaster_checkpoint, requires_realdata
except ImportError:  # tests/ imported as a package
    from tests.realdata import akamaster_checkpoint, requires_realdata

VARIANTS = [dict(preact=p, shortcut=s, norm=n, skip=k)
            for p, s, n, k in itertools.product((False, True), ("A", "B"), ("bn", "skipinit", "none"), (True, False))]


def vid(v):
    return f"{'pre' if v['preact'] else 'post'}-{v['shortcut']}-{v['norm']}-{'res' if v['skip'] else 'plain'}"


def block_inputs(model, x):
    """Each block's actual input during model(x), in call order."""
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in model.blocks]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def hand_branch(b, x):
    if isinstance(b, PreActBlock):
        return b.conv2(F.relu(b.bn2(b.conv1(F.relu(b.bn1(x))))))
    return b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x)))))


def hand_shortcut(b, x):
    if isinstance(b.shortcut, ZeroPadShortcut):
        planes = b.conv2.out_channels
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))  # akamaster's lambda
    return x if b.shortcut is None else b.shortcut(x)


# --- building ------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [20, 56])
@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
def test_every_variant_builds_and_runs(depth, variant):
    torch.manual_seed(0)
    model = cifar_resnet(depth, **variant, alpha_init=0.5 if variant["norm"] == "skipinit" else 0.0)
    n = (depth - 2) // 6
    assert isinstance(model, CifarResNet)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [n, n, n]
    assert len(model.blocks) == 3 * n
    block_cls = PreActBlock if variant["preact"] else BasicBlock
    assert all(type(b) is block_cls for b in model.blocks)
    assert model.config == dict(depth=depth, width=16, num_classes=10, in_channels=3,
                                alpha_init=0.5 if variant["norm"] == "skipinit" else 0.0, **variant)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_config_rebuilds_the_same_architecture():
    model = cifar_resnet(32, norm="skipinit", shortcut="B", preact=True, width=8, num_classes=7,
                         in_channels=1, alpha_init=0.1)
    twin = cifar_resnet(**model.config)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in twin.state_dict().items()}
    assert twin(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("depth", [0, 7, 19, 21, 33, -4, 20.0, "20", True])
def test_invalid_depth_names_the_valid_ones(depth):
    with pytest.raises(ValueError, match=r"6n\+2.*20, 32, 44, 56, 110"):
        cifar_resnet(depth)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(norm="batchnorm"), "norm"),
    (dict(norm="BN"), "norm"),
    (dict(shortcut="C"), "shortcut"),
    (dict(shortcut="a"), "shortcut"),
    (dict(preact="yes"), "preact"),
    (dict(skip=1), "skip"),
    (dict(width=0), "width"),
    (dict(num_classes=2.5), "num_classes"),
    (dict(in_channels=-1), "in_channels"),
    (dict(alpha_init="0"), "alpha_init"),
    (dict(norm="bn", alpha_init=0.5), "alpha_init.*skipinit"),
    (dict(norm="none", alpha_init=1.0), "alpha_init.*skipinit"),
])
def test_invalid_options_raise_one_line_value_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        cifar_resnet(20, **kwargs)
    assert "\n" not in str(info.value)


# --- the block protocol ----------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
def test_block_forward_is_post_of_shortcut_plus_alpha_branch(variant):
    torch.manual_seed(1)
    model = cifar_resnet(20, **variant, alpha_init=0.7 if variant["norm"] == "skipinit" else 0.0)
    # give BN non-trivial statistics and affine parameters, then use them (eval)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, ResidualBlock) and m.alpha is not None:
                m.alpha.fill_(torch.empty(()).uniform_(0.2, 1.0).item())
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for b, xb in zip(model.blocks, block_inputs(model, x)):
            assert b.skip is variant["skip"]
            branch = hand_branch(b, xb)
            torch.testing.assert_close(b.branch(xb), branch, rtol=0, atol=0)
            if variant["norm"] == "skipinit":
                assert isinstance(b.alpha, nn.Parameter) and b.alpha.shape == ()
                branch = b.alpha * branch
            else:
                assert b.alpha is None
            z = hand_shortcut(b, xb) + branch if variant["skip"] else branch
            expected = z if variant["preact"] else F.relu(z)
            torch.testing.assert_close(b(xb), expected, rtol=0, atol=1e-6)
            torch.testing.assert_close(b.post(z), expected, rtol=0, atol=0)


@pytest.mark.parametrize("preact", [False, True])
def test_post_does_not_modify_its_input(preact):
    block = cifar_resnet(20, preact=preact).layer1[0]
    z = torch.randn(2, 16, 8, 8)
    z0 = z.clone()
    block.post(z)
    assert torch.equal(z, z0)
    assert block.post(z) is not z or preact


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("preact", [False, True])
def test_skipinit_with_alpha_zero_blocks_are_their_shortcut(shortcut, preact):
    torch.manual_seed(2)
    model = cifar_resnet(56, norm="skipinit", shortcut=shortcut, preact=preact)  # alpha_init=0
    assert all(b.alpha.item() == 0.0 for b in model.blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for b, xb in zip(model.blocks, block_inputs(model, x)):
            s = hand_shortcut(b, xb)
            assert torch.equal(b(xb), s if preact else F.relu(s))
            assert b.branch(xb).abs().max() > 0  # the branch itself is not dead, only scaled away


def test_skipinit_alpha_init_is_used():
    model = cifar_resnet(20, norm="skipinit", alpha_init=0.25)
    alphas = [b.alpha for b in model.blocks]
    assert all(a.requires_grad and a.shape == () and a.item() == 0.25 for a in alphas)
    assert sum(1 for name, _ in model.named_parameters() if name.endswith("alpha")) == 9


@pytest.mark.parametrize("norm", ["bn", "skipinit", "none"])
@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_conv_biases_and_norm_layers(norm, preact, shortcut):
    model = cifar_resnet(20, norm=norm, preact=preact, shortcut=shortcut)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 18 + (2 if shortcut == "B" else 0)
    assert all((c.bias is not None) == (norm != "bn") for c in convs)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # stem/final BN + 2 per block + 1 per option-B projection
    assert n_bn == (1 + 18 + (2 if shortcut == "B" else 0) if norm == "bn" else 0)
    if preact:
        assert not hasattr(model, "bn1") and hasattr(model, "bn_final")
    else:
        assert hasattr(model, "bn1") and not hasattr(model, "bn_final")


@pytest.mark.parametrize("depth", [20, 56])
def test_option_a_shortcuts_are_parameter_free_zero_pads_where_the_shape_changes(depth):
    model = cifar_resnet(depth, shortcut="A")
    n = (depth - 2) // 6
    for i, b in enumerate(model.blocks):
        if i in (n, 2 * n):  # first block of stages 2 and 3
            assert isinstance(b.shortcut, ZeroPadShortcut)
            assert list(b.shortcut.parameters()) == [] and list(b.shortcut.buffers()) == []
            assert b.conv1.stride == (2, 2)
        else:
            assert b.shortcut is None
            assert b.conv1.stride == (1, 1)
    x = torch.randn(2, 16, 32, 32)
    y = model.layer2[0].shortcut(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


def test_option_a_handles_widths_not_divisible_by_four():
    model = cifar_resnet(20, width=5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.layer2[0].shortcut(torch.randn(1, 5, 8, 8)).shape == (1, 10, 4, 4)


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_option_b_shortcuts_are_strided_1x1_projections(norm):
    model = cifar_resnet(20, shortcut="B", norm=norm)
    proj = [b.shortcut for b in model.blocks if b.shortcut is not None]
    assert len(proj) == 2 and all(isinstance(p, nn.Sequential) for p in proj)
    conv = proj[0][0]
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    assert (conv.in_channels, conv.out_channels) == (16, 32)
    assert len(proj[0]) == (2 if norm == "bn" else 1)
    names = {k for k in model.state_dict() if ".shortcut." in k}
    assert "layer2.0.shortcut.0.weight" in names and "layer3.0.shortcut.0.weight" in names


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_plain_network_has_no_shortcuts_at_all(shortcut):
    model = cifar_resnet(20, skip=False, shortcut=shortcut)
    assert all(b.skip is False and b.shortcut is None for b in model.blocks)
    assert not any(".shortcut" in k for k in model.state_dict())
    assert all(b.skip is True for b in cifar_resnet(20, shortcut=shortcut).blocks)


def test_conv_init_is_kaiming_normal_fan_in():
    torch.manual_seed(3)
    model = cifar_resnet(20, norm="none")
    w = model.layer3[1].conv1.weight  # 64 x 64 x 3 x 3, fan_in 576
    assert abs(w.std().item() / (2 / 576) ** 0.5 - 1) < 0.05
    assert abs(w.mean().item()) < 0.005
    w = model.layer3[0].conv1.weight  # 64 x 32 x 3 x 3: fan_in 288, fan_out 576
    assert abs(w.std().item() / (2 / 288) ** 0.5 - 1) < 0.05
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    bn = cifar_resnet(20)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0
               for m in bn.modules() if isinstance(m, nn.BatchNorm2d))


# --- the akamaster layout ------------------------------------------------------------------

@requires_realdata
@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_state_dict_keys_match_the_akamaster_checkpoints(depth):
    raw = torch.load(akamaster_checkpoint(depth), map_location="cpu", weights_only=True)["state_dict"]
    theirs = {k.removeprefix("module."): tuple(v.shape) for k, v in raw.items()}
    assert all(k.startswith("module.") for k in raw)
    ours = {k: tuple(v.shape) for k, v in cifar_resnet(depth).state_dict().items()}
    tracked = {k for k in ours if k.endswith("num_batches_tracked")}
    assert tracked == {k[: -len("running_mean")] + "num_batches_tracked" for k in theirs if k.endswith("running_mean")}
    assert set(ours) - tracked == set(theirs)
    assert {k: ours[k] for k in theirs} == theirs
    # same order too, so a model printed beside the checkpoint reads the same
    assert [k for k in ours if k not in tracked] == list(theirs)


# --- torch.fx ------------------------------------------------------------------------------

class BlockLeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, ResidualBlock) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("variant", [dict(), dict(preact=True, shortcut="B"), dict(norm="skipinit", skip=False)],
                         ids=["post-A-bn", "pre-B-bn", "post-skipinit-plain"])
@pytest.mark.parametrize("depth", [20, 56])
def test_fx_traces_with_blocks_as_leaves_in_order(depth, variant):
    model = cifar_resnet(depth, **variant).eval()
    graph = BlockLeafTracer().trace(model)
    gm = torch.fx.GraphModule(model, graph)
    n = (depth - 2) // 6
    called = [node.target for node in graph.nodes
              if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ResidualBlock)]
    assert called == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(n)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
