"""The closed-form block VJPs (BN folded into the convolutions, ReLU as masks) against
autograd on the block itself, for every architecture variant and torchvision's blocks; and
the sweep on the autograd fallback against brute-force enumeration."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from pathens.adapters import chain
from pathens.measure.linearize import Autograd, Folded, linearize
from nets import VARIANTS, batch, small_resnet


def autograd_vjps(block, x, g):
    """(P^T g, S^T P^T g, R^T P^T g) by autograd through the block's own parts."""
    x = x.detach().requires_grad_(True)
    s = block.shortcut(x)
    r = block.branch(x)
    z = (s + r).detach().requires_grad_(True)
    u = torch.autograd.grad(block.post(z), z, g)[0]
    return (u, torch.autograd.grad(s, x, u, allow_unused=True)[0] if s is not x else u,
            torch.autograd.grad(r, x, u)[0])


def check_block(block, x):
    lin, out = linearize(block, x)
    assert isinstance(lin, Folded), f"{block.name} fell back to autograd"
    torch.testing.assert_close(out, block(x), rtol=1e-12, atol=1e-12)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    u, su, ru = autograd_vjps(block, x, g)
    torch.testing.assert_close(lin.post_t(g), u, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(lin.shortcut_t(u), su, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(lin.branch_t(u), ru, rtol=1e-11, atol=1e-13)


def block_inputs(view, x):
    with torch.no_grad():
        h, xs = view.stem(x), []
        for b in view.blocks:
            xs.append(h)
            h = b(h)
    return xs


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_folded_vjps_equal_autograd(name, kwargs):
    view = pathens.wrap(small_resnet(14, **kwargs))  # 6 blocks: both downsampling kinds
    x, _ = batch(3)
    for b, xb in zip(view.blocks, block_inputs(view, x)):
        check_block(b, xb)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_folded_vjps_on_torchvision_blocks(arch):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, arch)(num_classes=3).double().eval()
    with torch.no_grad():  # non-trivial BN statistics, so that no factor is the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    view = pathens.wrap(model)
    xs = block_inputs(view, torch.randn(2, 3, 32, 32, dtype=torch.float64))
    for i in (0, 1, 2, view.num_blocks - 1):  # includes a projection shortcut with stride
        check_block(view.blocks[i], xs[i])


def test_exact_sweep_on_the_autograd_fallback(monkeypatch):
    """With the closed forms disabled every block goes through autograd: same G_k."""
    view = pathens.wrap(small_resnet(14, preact=True, shortcut="B", norm="skipinit"))
    x, y = batch(3)
    folded = pathens.path_gradients(view, x, y, components=True, progress=False)
    monkeypatch.setattr(Folded, "build", classmethod(lambda cls, block, x: None))
    assert isinstance(linearize(view.blocks[0], block_inputs(view, x)[0])[0], Autograd)
    fallback = pathens.path_gradients(view, x, y, components=True, progress=False)
    torch.testing.assert_close(fallback.components, folded.components, rtol=1e-10, atol=1e-14)
    assert fallback.residual < 1e-12


def test_train_mode_batchnorm_is_not_folded():
    """BN on batch statistics is not a fixed linear map: the closed form must refuse it."""
    view = pathens.wrap(small_resnet(8))
    x = block_inputs(view, batch(3)[0])[0]
    view.model.train()
    try:
        assert isinstance(linearize(view.blocks[0], x)[0], Autograd)
    finally:
        view.model.eval()


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class TwoConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(TwoConv(), TwoConv())
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(self.blocks(x).mean((2, 3)))


def test_wrap_refuses_layers_that_do_not_compute_the_branch():
    branch = lambda b: (lambda x: b.conv2(F.relu(b.conv1(x))))
    pathens.register_block(TwoConv, lambda b: pathens.BlockParts(
        branch=branch(b), post=F.relu, layers=(b.conv1, b.conv2)))  # the ReLU is missing
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(pathens.WrapError, match="blocks.0.*layers"):
        pathens.wrap(TwoConvNet(), example_input=x)
    pathens.register_block(TwoConv, lambda b: pathens.BlockParts(
        branch=branch(b), post=F.relu, layers=(b.conv1, F.relu, b.conv2)))
    view = pathens.wrap(TwoConvNet().double(), example_input=x.double())
    check_block(view.blocks[1], x.double())


# ---- single layers and chains: grouped convolutions, average pooling, eval identities ------

def chain_vjp_check(layers, x, scale=None):
    """transpose_chain's output and transpose against autograd through the same layers;
    returns the transpose ops (for the caller to inspect)."""
    from pathens.measure.transposes import apply, transpose_chain
    out = transpose_chain(layers, x, scale)
    assert out is not None, "not folded"
    h, ops = out
    xg = x.detach().requires_grad_(True)
    want = chain(layers)(xg)
    want = want if scale is None else want * scale
    torch.testing.assert_close(h, want.detach(), rtol=1e-12, atol=1e-12)
    u = torch.randn(h.shape, dtype=h.dtype, generator=torch.Generator().manual_seed(2))
    for layout in (torch.contiguous_format, torch.channels_last):  # the sweep's CPU layout
        got = apply(ops, u.contiguous(memory_format=layout))
        torch.testing.assert_close(got, torch.autograd.grad(want, xg, u, retain_graph=True)[0],
                                   rtol=1e-11, atol=1e-13)
    return ops


def random_bn(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
        bn.weight.copy_(0.5 + torch.rand(c, generator=g))
        bn.bias.copy_(0.1 * torch.randn(c, generator=g))
    return bn


def test_grouped_convolutions_fold_channel_scales_on_both_sides():
    """A BN before a grouped conv with no conv ahead of it (a pre-activation ResNeXt) folds
    into the conv's input channels, group by group; a BN after it into its output channels;
    a per-channel scale (LayerScale) too. No channel scale is left as its own op."""
    from pathens.measure.transposes import ConvT, Diagonal
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    g1 = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4, bias=False).double()
    g2 = nn.Conv2d(12, 12, 3, padding=1, groups=3).double()
    gamma = 0.5 + torch.rand(12, 1, 1, dtype=torch.float64)  # as a block's scale broadcasts
    ops = chain_vjp_check((random_bn(8), F.relu, g1, random_bn(12, 1), F.relu, g2), x, gamma)
    assert sum(isinstance(op, ConvT) for op in ops) == 2
    assert not any(isinstance(op, Diagonal) and op.per_channel for op in ops)
    # the input-side fold alone, for each group count dividing the channels
    for groups in (1, 2, 4, 8):
        conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False).double()
        ops = chain_vjp_check((random_bn(8, groups), conv), x)
        assert len(ops) == 1 and isinstance(ops[0], ConvT)


@pytest.mark.parametrize("pool", [
    nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),  # timm's resnet*d shortcut
    nn.AvgPool2d(2),                                              # timm's aa layer
    nn.AvgPool2d(3, 2, padding=1, count_include_pad=True),
    nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
    nn.AvgPool2d(3, 2, padding=1, divisor_override=4)],
    ids=["2-ceil-exclude-pad", "2", "3-pad-include", "3-pad-ceil-exclude", "3-divisor"])
@pytest.mark.parametrize("size", [8, 7])  # odd: partial windows at a ceil_mode edge
def test_average_pooling_transposes(pool, size):
    torch.manual_seed(0)
    x = torch.randn(2, 4, size, size + 2, dtype=torch.float64)
    conv = nn.Conv2d(4, 6, 1, bias=False).double()
    chain_vjp_check((pool,), x)
    chain_vjp_check((pool, conv, random_bn(6)), x)  # Sequential(AvgPool2d, Conv2d, BN)


def test_layers_that_are_the_identity_in_eval_mode():
    from pathens.adapters.layers import IdentityInEval
    from pathens.measure.transposes import transpose_chain, why_not

    class DropSample(nn.Module):  # like timm's DropPath: random in training, x in eval
        def forward(self, x):
            return x * (torch.rand(x.shape[0], 1, 1, 1) > 0.5) if self.training else x

    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    conv = nn.Conv2d(4, 4, 3, padding=1).double()
    drop, dropout = IdentityInEval(DropSample().eval()), nn.Dropout(0.5).eval()
    assert len(chain_vjp_check((conv, dropout, F.relu, drop, conv), x)) == 3
    drop.module.train()
    dropout.train()
    assert why_not(drop) == "DropSample in training mode"
    assert why_not(dropout) == "Dropout in training mode"
    assert transpose_chain((conv, drop), x) is None
    assert why_not(DropSample()) == "DropSample"  # unwrapped: an unknown layer


def test_layers_computing_something_else_than_their_base_class_are_refused():
    """The closed form transposes a layer by its class: a subclass whose forward differs
    (weight standardisation, a BN that adds an activation), reflect padding, or a 'same'
    padding that torch makes asymmetric would be transposed wrongly, so they are refused."""
    from pathens.adapters.layers import BatchNormOf
    from pathens.measure.transposes import transpose_chain, why_not

    class StdConv(nn.Conv2d):
        def forward(self, x):
            w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True))
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class BNReLU(nn.BatchNorm2d):
        def forward(self, x):
            return F.relu(super().forward(x))

    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    bnrelu = BNReLU(4).double().eval()
    assert why_not(StdConv(4, 4, 3)) == "StdConv"
    assert why_not(bnrelu) == "BNReLU"
    assert why_not(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")) == \
        "Conv2d with reflect padding"
    assert why_not(nn.Conv2d(4, 4, 4, padding="same")) == "Conv2d with asymmetric 'same' padding"
    assert transpose_chain((StdConv(4, 4, 3).double(),), x) is None
    # split into parts the closed form knows, the same layer is transposed exactly
    chain_vjp_check((BatchNormOf(bnrelu), F.relu), x)
    chain_vjp_check((nn.Conv2d(4, 4, 3, padding="same").double(), ), x)
    chain_vjp_check((nn.Conv2d(4, 4, 3, padding="valid").double(), ), x)
