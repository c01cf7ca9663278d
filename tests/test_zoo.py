"""The model zoo: timm, Hugging Face and torchvision ResNets (random weights, small configs,
float64), each against independent computations: the model's own forward (the view
reproduces it), brute-force enumeration of every path's gradient by autograd and the model's
own autograd gradient (the exact decomposition), a hand-edited copy of the model (lesions),
autograd on the block itself (the closed-form transposes of grouped convolutions and average
pooling); and the note that SE blocks are transposed by autograd, said once."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from nets import randomize_bn
from pathens import paths
from pathens.measure.linearize import (Autograd, AutogradTransposes, autograd_blocks, autograd_note,
                                      linearize, note_autograd_blocks)
from test_linearize import block_inputs, check_block

timm = pytest.importorskip("timm")
tv = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")
from timm.models import resnet as timm_resnet, resnetv2 as timm_v2  # noqa: E402
from torchvision.models import resnet as tv_resnet  # noqa: E402
from transformers.models.resnet import modeling_resnet as hf_resnet  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """float64, eval mode, random BN statistics and affines (timm's zero_init_last and HF's init
    set the last BN's weight to 0 or 1 and the statistics to 0 / 1)."""
    return randomize_bn(model.double(), seed)


def timm_model(name: str, **kwargs) -> nn.Module:
    # 5 blocks: stage 1 has two (the second with an identity shortcut), stages 2-4 one each
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, layers=[2, 1, 1, 1],
                             **kwargs)


def timm_v2_postact() -> nn.Module:
    from timm.layers import BatchNormAct2d, create_conv2d
    torch.manual_seed(0)
    return timm_v2.ResNetV2(layers=[2, 1, 1, 1], channels=(16, 32, 32, 64), stem_chs=8,
                            preact=False, conv_layer=create_conv2d, norm_layer=BatchNormAct2d,
                            num_classes=5)


def hf_model(layer_type: str) -> nn.Module:
    torch.manual_seed(0)
    sizes = [8, 16, 16, 32] if layer_type == "basic" else [16, 32, 32, 64]
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=sizes, depths=[2, 1, 1, 1],
                                       layer_type=layer_type, num_labels=5)
    return hf_resnet.ResNetForImageClassification(config)


def tv_model(block, layers=(2, 1, 1, 1), **kwargs) -> nn.Module:
    # torchvision's widths are fixed (64 .. 512 x expansion); fewer blocks keep it small
    torch.manual_seed(0)
    return tv_resnet.ResNet(block, list(layers), num_classes=5, **kwargs)


SMALL = dict(channels=(8, 16, 16, 32))
# name -> (builder, blocks, how many of them the sweep transposes by autograd)
FAMILIES = {
    "timm-basic": (lambda: timm_model("resnet18", **SMALL), 5, 0),
    "timm-bottleneck": (lambda: timm_model("resnet50", **SMALL), 5, 0),
    "timm-seresnet": (lambda: timm_model("seresnet50", **SMALL), 5, 5),
    "timm-resnext": (lambda: timm_model("resnext50_32x4d", cardinality=4, base_width=32,
                                        **SMALL), 5, 0),
    # avg-pool shortcuts, deep stem; DropPath and DropBlock (the identity in eval mode)
    "timm-resnet-d": (lambda: timm_model("resnet26d", stem_width=8, drop_path_rate=0.2,
                                         drop_block_rate=0.2, **SMALL), 5, 0),
    "timm-resnetaa": (lambda: timm_model("resnetaa50d", stem_width=8, **SMALL), 5, 0),  # aa pool
    "timm-preact-basic": (lambda: timm_model("resnetv2_18", stem_chs=8, **SMALL), 5, 0),
    "timm-preact-bottleneck": (lambda: timm_model("resnetv2_50d", stem_chs=8,
                                                  channels=(16, 32, 32, 64)), 5, 0),
    # resnetv2's post-activation Bottleneck (hybrid ViT backbones), here with BatchNormAct2d
    "timm-v2-postact": (lambda: timm_v2_postact(), 5, 0),
    "hf-basic": (lambda: hf_model("basic"), 5, 0),
    "hf-bottleneck": (lambda: hf_model("bottleneck"), 5, 0),
    # 4 blocks: torchvision's stages are 64 .. 512 (x4) channels wide whatever we ask
    "tv-basic": (lambda: tv_model(tv_resnet.BasicBlock, (1, 1, 1, 1)), 4, 0),
    "tv-resnext": (lambda: tv_model(tv_resnet.Bottleneck, (1, 1, 1, 1), groups=4,
                                    width_per_group=4), 4, 0),
    "tv-wide": (lambda: tv_model(tv_resnet.Bottleneck, (1, 1, 1, 1), width_per_group=128), 4, 0),
}
# 18M parameters in float64 (~20 ms a convolution on one core): its Bottleneck class, the
# same as tv-resnext's twice as wide, is enumerated and lesioned there; here the view and the
# decomposition's sum are checked against the model itself
HEAVY = {"tv-wide"}
_built: dict = {}


def family(name: str):
    """(model, view) of a family, built once per session (tests only read them)."""
    if name not in _built:
        model = randomize(FAMILIES[name][0]())
        _built[name] = model, pathens.wrap(model, example_input=images(2))
    return _built[name]


def images(n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)


def logits(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def model_gradient(model, view, x, y):
    """Gradient of the mean CE at the first block's input by the model's own forward and
    autograd (a pre-hook makes that input a leaf)."""
    leaf = {}

    def hook(module, args):
        leaf["h"] = args[0].detach().requires_grad_(True)
        return (leaf["h"], *args[1:])

    handle = view.blocks[0].module.register_forward_pre_hook(hook)
    try:
        loss = F.cross_entropy(logits(model, x), y)
    finally:
        handle.remove()
    return torch.autograd.grad(loss, leaf["h"])[0]


def brute_force(view, x, y):
    """B[k] = sum over all C(n, k) paths of length k of that path's gradient, each by autograd
    through the view with the other blocks' branches detached (2^n backward passes)."""
    h0 = view.stem(x).detach()
    out = [torch.zeros_like(h0) for _ in range(view.num_blocks + 1)]
    for mask in paths.enumerate_paths(view.num_blocks):
        h = h0.clone().requires_grad_(True)
        loss = F.cross_entropy(view.run_from(h, path=mask), y)
        out[int(mask.sum())] += torch.autograd.grad(loss, h)[0]
    return out


# ---- hand-edited lesions: each written from the library's own forward -------------------

def shortcut_only(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `block` computes with its residual branch removed, read off its class's forward."""
    if isinstance(block, (timm_resnet.BasicBlock, timm_resnet.Bottleneck, timm_v2.Bottleneck,
                          tv_resnet.BasicBlock, tv_resnet.Bottleneck)):
        # out = act(branch + shortcut), shortcut = downsample(x) or x; act is ReLU here
        return torch.relu(x if block.downsample is None else block.downsample(x))
    if isinstance(block, (timm_v2.PreActBasic, timm_v2.PreActBottleneck)):
        # out = branch(norm1(x)) + shortcut, shortcut = downsample(norm1(x)) or x; no act
        return x if block.downsample is None else block.downsample(block.norm1(x))
    if isinstance(block, (hf_resnet.ResNetBasicLayer, hf_resnet.ResNetBottleNeckLayer)):
        return block.activation(block.shortcut(x))  # shortcut: nn.Identity or ResNetShortCut
    raise AssertionError(f"no hand-edit for {type(block).__name__}")


class ShortcutOnly(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return shortcut_only(self.block, x)


def lesioned_by_hand(model, names):
    model = copy.deepcopy(model)
    for name in names:
        parent, child = name.rsplit(".", 1)
        holder = model.get_submodule(parent)
        setattr(holder, child, ShortcutOnly(getattr(holder, child)))
    return model


# ---- the tests ----------------------------------------------------------------------------

def has_projection(block: nn.Module) -> bool:
    """Whether the block's own forward projects its shortcut, read off the module."""
    if isinstance(block, (hf_resnet.ResNetBasicLayer, hf_resnet.ResNetBottleNeckLayer)):
        return not isinstance(block.shortcut, nn.Identity)
    return block.downsample is not None


@pytest.mark.parametrize("name", FAMILIES)
def test_view_reproduces_the_model(name):
    model, view = family(name)
    _, n, autograd = FAMILIES[name]
    assert view.num_blocks == n
    x = images(3, seed=2)  # not the probe
    with torch.no_grad():
        torch.testing.assert_close(view(x), logits(model, x), rtol=0, atol=1e-12)
    # identity shortcuts where (and only where) the module has no projection
    assert [b.identity_shortcut for b in view.blocks] == [not has_projection(b.module)
                                                         for b in view.blocks]
    assert all(b.downsample for b in view.blocks[n - 3:])  # stages 2-4 begin with one
    assert len(autograd_blocks(view)) == autograd


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_decomposition_equals_brute_force(name):
    model, view = family(name)
    x, y = images(2), torch.tensor([1, 4])
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    G = res.components
    truth = model_gradient(model, view, x, y)
    torch.testing.assert_close(G.sum(0), truth, rtol=1e-10, atol=1e-14)
    assert res.residual < 1e-10
    if name in HEAVY:
        return
    B = brute_force(view, x, y)
    for k in range(view.num_blocks + 1):
        torch.testing.assert_close(G[k], B[k], rtol=1e-9, atol=1e-14, msg=f"length {k}")
    assert float(G[view.num_blocks].norm()) > 0  # the longest path carries gradient


@pytest.mark.parametrize("name", [f for f in FAMILIES if f not in HEAVY])
def test_lesion_equals_a_hand_edited_model(name):
    model, view = family(name)
    x, y = images(4, seed=3), torch.tensor([0, 1, 2, 3])
    n = view.num_blocks
    for deleted in ([1], [n - 2], [0, n - 1]):  # identity shortcuts and projections
        by_hand = lesioned_by_hand(model, [view.blocks[i].name for i in deleted])
        with torch.no_grad():
            want = logits(by_hand, x)
            torch.testing.assert_close(view.run(x, deleted=deleted), want, rtol=0, atol=1e-12)
        row = pathens.lesion.evaluate(view, (x, y), deleted=deleted)
        assert row["loss"] == pytest.approx(float(F.cross_entropy(want, y)), rel=1e-10)
        assert row["errors"] == int((want.argmax(1) != y).sum())
    with torch.no_grad():
        assert not torch.allclose(view.run(x, deleted=[1]), logits(model, x))


@pytest.mark.parametrize("name,kinds", [
    ("timm-resnext", "grouped 3x3"), ("tv-resnext", "grouped 3x3"),
    ("timm-resnet-d", "avg-pool shortcut"), ("timm-resnetaa", "avg-pool branch and shortcut"),
    ("timm-preact-bottleneck", "BatchNormAct2d, pre-activation shortcut with avg pool"),
    ("timm-v2-postact", "BatchNormAct2d without act, DownsampleConv"),
    ("hf-bottleneck", "ResNetShortCut")])
def test_closed_form_transposes_equal_autograd(name, kinds):
    model, view = family(name)
    for b, xb in zip(view.blocks, block_inputs(view, images(2))):
        check_block(b, xb)  # asserts the block is Folded, then each VJP against autograd


def test_grouped_and_pooled_layers_are_there():
    """The blocks checked above really hold what they are meant to test."""
    convs = lambda v: [m for b in v.blocks for m in b.module.modules() if isinstance(m, nn.Conv2d)]
    for name in ("timm-resnext", "tv-resnext"):
        assert {c.groups for c in convs(family(name)[1])} == {1, 4}
    d = family("timm-resnet-d")[1]
    assert len([m for b in d.blocks if b.module.downsample is not None
                for m in b.module.downsample.modules() if isinstance(m, nn.AvgPool2d)]) == 3
    aa = family("timm-resnetaa")[1]
    assert sum(isinstance(b.module.aa, nn.AvgPool2d) for b in aa.blocks) == 3
    assert sum(isinstance(m, nn.AvgPool2d) for m in aa.blocks[4].parts.layers) == 1


def test_se_blocks_use_autograd_and_say_so_once():
    model, view = family("timm-seresnet")
    # the static reason agrees with what linearize does, block by block
    for b, xb in zip(view.blocks, block_inputs(view, images(2))):
        assert isinstance(linearize(b, xb)[0], Autograd)
    assert autograd_blocks(view) == {i: "SEModule in the branch" for i in range(5)}
    assert autograd_note(view) == ("5 of 5 blocks (SEModule in the branch) use autograd "
                                   "transposes in the path-gradient sweep: same numbers, slower")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert note_autograd_blocks(view) == autograd_note(view)
    notes = [w for w in caught if issubclass(w.category, AutogradTransposes)]
    assert len(notes) == 1 and str(notes[0].message) == autograd_note(view)
    assert notes[0].filename == __file__  # points at the caller
    # linearize itself, per block per batch, never warns (two chunks: 10 linearizations)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for b, xb in zip(view.blocks, block_inputs(view, images(2))):
            linearize(b, xb)
    assert not [w for w in caught if issubclass(w.category, AutogradTransposes)]
    # a closed-form model has nothing to say
    assert note_autograd_blocks(family("timm-resnext")[1]) is None


def test_path_gradients_says_the_se_note_once():
    _, view = family("timm-seresnet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pathens.path_gradients(view, images(4), torch.tensor([0, 1, 2, 3]), batch_size=2,
                               progress=False, check=False)
    assert sum(issubclass(w.category, AutogradTransposes) for w in caught) == 1


@pytest.mark.parametrize("arch,blocks", [("resnet18", 8), ("resnext50_32x4d", 16)])
def test_torchvision_models_wrap_in_closed_form(arch, blocks):
    """The named torchvision models (full width, float32): the view reproduces them and no
    block falls back to autograd (ResNeXt's grouped convolutions included)."""
    torch.manual_seed(0)
    model = getattr(tv.models, arch)(weights=None, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    view = pathens.wrap(model, example_input=x)
    assert view.num_blocks == blocks and autograd_blocks(view) == {}
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x), rtol=1e-5, atol=1e-5)


def test_adapters_refuse_what_the_closed_form_would_get_wrong():
    """A Conv2d subclass with its own forward (timm's StdConv2d standardises its weight) or a
    BatchNorm2d subclass that adds an activation (BatchNormAct2d, unsplit) is not transposed as
    its base class: the block falls back to autograd, naming the layer."""
    from timm.layers import BatchNormAct2d, StdConv2d
    from pathens.adapters.layers import BatchNormOf
    from pathens.measure.transposes import why_not
    assert why_not(StdConv2d(4, 4, 3)) == "StdConv2d"
    assert why_not(BatchNormAct2d(4).eval()) == "BatchNormAct2d"
    assert why_not(BatchNormOf(BatchNormAct2d(4).eval())) is None
    assert why_not(BatchNormOf(BatchNormAct2d(4).train())) == "BatchNormAct2d on batch statistics"
    torch.manual_seed(0)
    # BiT (resnetv2_*_bit): StdConv2d and GroupNormAct (32 groups: 32 bottleneck channels)
    torch.manual_seed(0)
    bit = randomize(timm_v2.ResNetV2(layers=[1, 1, 1, 1], channels=(128,) * 4, stem_chs=32,
                                     stem_type="fixed", conv_layer=StdConv2d, num_classes=5))
    view = pathens.wrap(bit, example_input=images(2))
    assert set(autograd_blocks(view).values()) == {"GroupNormAct in the branch"}


def test_parameter_gradients_of_a_pre_activation_block_with_a_projection():
    """norm1 of a pre-activation block feeds both its branch and its projection shortcut: it is
    left out of the branch's parameters, so that each block's parameter gradients summed over
    lengths are autograd's (the norms inside the branch only are kept)."""
    model, view = family("timm-preact-bottleneck")
    x, y = images(2), torch.tensor([1, 4])
    res = pathens.path_gradients(view, x, y, parameters=True, progress=False)
    for i in (1, 2):  # identity shortcut, then a projection
        block = view.blocks[i].module
        names = [n for n, _ in pathens.measure.linearize.branch_parameters(view.blocks[i])]
        assert any(n.startswith("norm1.") for n in names) == (block.downsample is None)
        assert not any(n.startswith("downsample.") for n in names)
        params = [block.get_parameter(n) for n in names]
        want = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        for n, g in zip(names, want):
            torch.testing.assert_close(res.param_components[i][n].sum(0), g, rtol=1e-10,
                                       atol=1e-14, msg=n)
