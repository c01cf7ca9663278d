"""The closed-form block VJPs (BN folded into the convolutions, ReLU as masks) against
autograd on the block itself, for every architecture variant and torchvision's blocks; and
the sweep on the autograd fallback against brute-force enumeration."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from pathens.linearize import Autograd, Folded, linearize
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
