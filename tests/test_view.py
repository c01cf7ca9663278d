"""The view: it reproduces every model, and its variants (deleted branches, reordered blocks)
equal the same change made by hand to a copy of the model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from nets import VARIANTS, batch, small_resnet


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_view_reproduces_pathens_models(name, kwargs):
    model = small_resnet(20, **kwargs)
    view = pathens.wrap(model)
    assert view.num_blocks == 9
    assert [b.name for b in view.blocks][:4] == ["layer1.0", "layer1.1", "layer1.2", "layer2.0"]
    assert [b.index for b in view.blocks if b.downsample] == [3, 6]
    x, _ = batch(3, size=16)
    torch.testing.assert_close(view(x), model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_view_reproduces_torchvision(arch):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, arch)(num_classes=7).eval()
    view = pathens.wrap(model)
    assert view.num_blocks == (8 if arch == "resnet18" else 16)
    assert view.blocks[0].name == "layer1.0" and view.num_classes == 7
    assert view.blocks[0].downsample == (arch == "resnet50")  # Bottleneck widens 64 -> 256
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x), rtol=1e-5, atol=1e-5)


def deleted_by_hand(model, name):
    """A copy of the model whose block `name` computes post(shortcut(x)) only."""
    model = copy.deepcopy(model)
    block = model.get_submodule(name)

    class Lesioned(nn.Module):
        def __init__(self, b):
            super().__init__()
            self.b = b

        def forward(self, x):
            return self.b.post(x if self.b.shortcut is None else self.b.shortcut(x))

    parent, child = name.rsplit(".", 1)
    setattr(model.get_submodule(parent), child, Lesioned(block))
    return model


@pytest.mark.parametrize("name,kwargs", [VARIANTS[0], VARIANTS[3], VARIANTS[4]],
                         ids=["post-A-bn", "pre-B-bn", "post-A-skipinit"])
def test_lesion_equals_deleting_by_hand(name, kwargs):
    model = small_resnet(20, **kwargs)
    view = pathens.wrap(model)
    x, _ = batch(3)
    for deleted in ([1], [3], [0, 4, 8]):
        by_hand = model
        for i in deleted:
            by_hand = deleted_by_hand(by_hand, view.blocks[i].name)
        torch.testing.assert_close(view.run(x, deleted=deleted), by_hand(x), rtol=0, atol=1e-12)
    assert not torch.allclose(view.run(x, deleted=[1]), model(x))


def test_reorder_equals_permuting_modules():
    model = small_resnet(20, **VARIANTS[0][1])
    view = pathens.wrap(model)
    x, _ = batch(3)
    order = [2, 0, 1, 3, 5, 4, 6, 8, 7]  # within stages only
    by_hand = copy.deepcopy(model)
    blocks = [copy.deepcopy(model.get_submodule(b.name)) for b in view.blocks]
    for pos, i in enumerate(order):
        parent, child = view.blocks[pos].name.rsplit(".", 1)
        setattr(by_hand.get_submodule(parent), child, blocks[i])
    torch.testing.assert_close(view.run(x, order=order), by_hand(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(view.run(x, order=list(range(9))), model(x), rtol=0, atol=1e-12)


def test_path_mask_keeps_values_and_routes_gradients():
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, _ = batch(2)
    torch.testing.assert_close(view.run(x, path={0, 5}), view(x), rtol=0, atol=0)
    mask = [False] * 9
    assert torch.equal(view.run(x, path=mask), view.run(x, path=[]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(deleted=[9]), "out of range: the view has 9 blocks"),
    (dict(deleted=[-1]), "out of range"),
    (dict(deleted=[1.5]), "must be integers"),
    (dict(order=[1, 0]), "permutation"),
    (dict(order=[0, 0, 1, 2, 3, 4, 5, 6, 7]), "permutation"),
    (dict(order=[3, 1, 2, 0, 4, 5, 6, 7, 8]), "only blocks of the same shape"),
    (dict(path=[True] * 3), "bool mask of length 9"),
])
def test_run_rejects_bad_arguments(kwargs, match):
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, _ = batch(1)
    with pytest.raises(ValueError, match=match):
        view.run(x, **kwargs)


def test_wrap_restores_training_state_and_buffers():
    model = small_resnet(20, **VARIANTS[0][1]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pathens.wrap(model)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---- user blocks and models pathens cannot wrap ---------------------------------------------

class MyBlock(nn.Module):
    """A user's residual block: x + gamma * mlp(x), then tanh."""

    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.gamma = nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        return torch.tanh(x + self.gamma * self.fc2(F.relu(self.fc1(x))))


class MyNet(nn.Module):
    def __init__(self, d=6, n=4, block=MyBlock):
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.blocks = nn.Sequential(*[block(d) for _ in range(n)])
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        return self.out(self.blocks(F.relu(self.inp(x))))


def my_parts(b):
    return pathens.BlockParts(branch=lambda x: b.fc2(F.relu(b.fc1(x))), shortcut=None,
                              post=torch.tanh, scale=b.gamma)


def test_user_registered_block():
    pathens.register_block(MyBlock, my_parts)
    torch.manual_seed(0)
    model = MyNet().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(pathens.WrapError, match="example_input"):
        pathens.wrap(model)
    view = pathens.wrap(model, example_input=x)
    assert view.num_blocks == 4 and [b.name for b in view.blocks] == [f"blocks.{i}" for i in range(4)]
    torch.testing.assert_close(view(x), model(x), rtol=0, atol=1e-12)
    # The exact decomposition works on any registered block: sum_k G_k == autograd.
    y = torch.tensor([0, 2, 1, 1])
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    h0 = F.relu(model.inp(x)).detach().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(model.out(model.blocks(h0)), y), h0)[0]
    torch.testing.assert_close(res.components.sum(0), g, rtol=1e-10, atol=1e-14)


def test_wrong_adapter_is_named():
    class BadBlock(MyBlock):
        pass

    pathens.register_block(BadBlock, lambda b: pathens.BlockParts(
        branch=lambda x: b.fc2(F.relu(b.fc1(x))), post=torch.tanh))  # forgets gamma
    model = MyNet(block=BadBlock)
    with pytest.raises(pathens.WrapError, match=r"block blocks\.0 \(BadBlock\).*fix the adapter"):
        pathens.wrap(model, example_input=torch.randn(2, 5))


def test_models_pathens_cannot_wrap():
    with pytest.raises(pathens.WrapError, match="no residual blocks pathens knows"):
        pathens.wrap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)))
    with pytest.raises(pathens.WrapError, match="plain network"):
        pathens.wrap(pathens.cifar_resnet(20, skip=False))
    with pytest.raises(pathens.WrapError, match="torch.nn.Module"):
        pathens.wrap("resnet56")

    class Branchy(MyNet):  # Python control flow on a tensor value
        def forward(self, x):
            h = self.blocks(self.inp(x))
            return self.out(h) if h.sum() > 0 else -self.out(h)

    pathens.register_block(MyBlock, my_parts)
    with pytest.raises(pathens.WrapError, match="cannot trace Branchy.forward"):
        pathens.wrap(Branchy(), example_input=torch.randn(2, 5))

    class HeadUsesInput(MyNet):
        def forward(self, x):
            h = self.inp(x)
            return self.out(self.blocks(h) + h)

    with pytest.raises(pathens.WrapError, match="head .* depend on the last block"):
        pathens.wrap(HeadUsesInput(), example_input=torch.randn(2, 5))

    class NotAChain(MyNet):
        def forward(self, x):
            h = self.inp(x)
            a = self.blocks[0](h)
            b = self.blocks[1](a) + a  # block 0's output used twice
            return self.out(self.blocks[3](self.blocks[2](b)))

    with pytest.raises(pathens.WrapError, match="blocks.0 and blocks.1 are not chained"):
        pathens.wrap(NotAChain(), example_input=torch.randn(2, 5))


def test_plain_network_lesion_replaces_a_layer_by_the_identity():
    torch.manual_seed(0)
    model = pathens.cifar_resnet(20, skip=False, width=4).double().eval()
    view = pathens.wrap(model, allow_plain=True)
    assert not view.residual and [b.index for b in view.blocks if not b.deletable] == [3, 6]
    x, _ = batch(2)
    torch.testing.assert_close(view(x), model(x), rtol=0, atol=1e-12)
    by_hand = copy.deepcopy(model)
    by_hand.layer1[1] = nn.Identity()
    torch.testing.assert_close(view.run(x, deleted=[1]), by_hand(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="plain layer that changes the shape"):
        view.run(x, deleted=[3])
    with pytest.raises(pathens.PathensError, match="needs a residual network"):
        pathens.path_gradients(view, x, torch.tensor([0, 1]), progress=False)
