"""The vision families of issue 17 (items 3, 4 and 6): ConvNeXt and Swin (timm, torchvision,
Hugging Face), RegNet (timm, torchvision), inverted residuals (timm EfficientNet / MobileNetV2 /
MobileNetV3, torchvision MobileNetV2 / V3 / EfficientNet) and NF-ResNets (timm nf_resnet,
nfnet, dm_nfnet), each a tiny random float64 model built from the library's own classes,
against independent computations: the library's own residual modules, counted (the view's
blocks), the model's own forward (the view reproduces it), the model's own autograd gradient
at the first block's input (the exact decomposition sums to it), brute force over every path
by autograd (one model per topology: stage transitions, inverted residuals folded into the
stem, the blocks and the head, a Swin whose blocks read a context), and a hand-edited copy of
the model whose branch is zeroed (a deletion)."""
from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from nets import randomize_bn
from pathens import paths
from pathens.measure.linearize import autograd_blocks
from pathens.models.modes import recalibrate_batchnorm
from pathens.adapters.transitions import FoldedLayers
from test_linearize import block_inputs, check_block

timm = pytest.importorskip("timm")
tv = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")
from timm.models import _efficientnet_blocks as timm_eb  # noqa: E402
from timm.models import convnext as timm_cx, nfnet as timm_nf, regnet as timm_rg  # noqa: E402
from timm.models import swin_transformer as timm_sw  # noqa: E402
from torchvision.models import convnext as tv_cx, efficientnet as tv_eff  # noqa: E402
from torchvision.models import mobilenetv2 as tv_v2, mobilenetv3 as tv_v3  # noqa: E402
from torchvision.models import regnet as tv_rg, swin_transformer as tv_sw  # noqa: E402
from transformers.models.convnext import modeling_convnext as hf_cx  # noqa: E402
from transformers.models.swin import modeling_swin as hf_sw  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---- tiny models, one per family and library ----------------------------------------------

def timm_convnext():
    return timm.create_model("convnext_atto", pretrained=False, num_classes=10,
                             depths=(1, 2, 1, 1), dims=(8, 16, 24, 32))


def tv_convnext():
    cfg = tv_cx.CNBlockConfig
    return tv_cx.ConvNeXt([cfg(8, 16, 1), cfg(16, 24, 2), cfg(24, None, 1)], num_classes=10)


def hf_convnext():
    return hf_cx.ConvNextForImageClassification(transformers.ConvNextConfig(
        num_stages=3, hidden_sizes=[8, 16, 24], depths=[1, 2, 1], num_labels=10, image_size=32))


def timm_swin():
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10,
                             img_size=32, patch_size=2, window_size=4, embed_dim=8,
                             depths=(2, 2), num_heads=(2, 2))


def tv_swin(v2: bool = False):
    extra = dict(block=tv_sw.SwinTransformerBlockV2, downsample_layer=tv_sw.PatchMergingV2) \
        if v2 else {}
    return tv_sw.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 2], num_heads=[2, 2],
                                 window_size=[4, 4], num_classes=10, **extra)


def hf_swin(attn: str = "sdpa"):
    config = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=8, depths=[2, 2],
                                     num_heads=[2, 2], window_size=4, num_labels=10)
    config._attn_implementation = attn
    return hf_sw.SwinForImageClassification(config)


def timm_regnet(name: str):
    # 4 stages of 1, 1, 3, 1 blocks, 8 .. 64 channels (RegNet's width rule at this size)
    return timm.create_model(name, pretrained=False, num_classes=10, depth=6, w0=8, wa=8, wm=2,
                             group_size=8, stem_width=8)


def tv_regnet():
    params = tv_rg.BlockParams.from_init_params(depth=4, w_0=8, w_a=8, w_m=2, group_width=8,
                                                se_ratio=0.25)  # RegNetY: SE inside
    return tv_rg.RegNet(params, num_classes=10, stem_width=8)


def timm_normfree(kind: str):
    small = dict(depths=(1, 2, 1, 1), channels=(16, 32, 32, 64))
    if kind == "nf_resnet":
        cfg = timm_nf._nfres_cfg(**small)
    elif kind == "nfnet":  # nfnet_l0's recipe: SiLU, SE attention, grouped 3x3
        cfg = timm_nf._nfnet_cfg(**small, feat_mult=1.5, group_size=8, bottle_ratio=0.25,
                                 attn_kwargs=dict(rd_ratio=0.25, rd_divisor=8), act_layer="silu")
    else:  # dm_nfnet_f0's recipe (GELU, deep quad stem), with SkipInit's learned gain
        cfg = dataclasses.replace(timm_nf._dm_nfnet_cfg(**small, act_layer="gelu", skipinit=True),
                                  group_size=8, stem_chs=16)
    return timm_nf.NormFreeNet(cfg, num_classes=10)


def _normfree(m) -> bool:
    return isinstance(m, timm_nf.NormFreeBlock)


# name -> (builder, which of the model's modules are the library's residual blocks, x blocks each)
FAMILIES = {
    "timm-convnext": (timm_convnext, lambda m: isinstance(m, timm_cx.ConvNeXtBlock), 1),
    "tv-convnext": (tv_convnext, lambda m: isinstance(m, tv_cx.CNBlock), 1),
    "hf-convnext": (hf_convnext, lambda m: isinstance(m, hf_cx.ConvNextLayer), 1),
    "timm-swin": (timm_swin, lambda m: isinstance(m, timm_sw.SwinTransformerBlock), 2),
    "tv-swin": (tv_swin, lambda m: isinstance(m, tv_sw.SwinTransformerBlock), 2),
    "tv-swin-v2": (lambda: tv_swin(v2=True), lambda m: isinstance(m, tv_sw.SwinTransformerBlock),
                   2),
    "hf-swin": (hf_swin, lambda m: isinstance(m, hf_sw.SwinLayer), 2),
    "timm-regnety": (lambda: timm_regnet("regnety_002"), lambda m: isinstance(
        m, timm_rg.Bottleneck) and m.downsample is not None, 1),
    "tv-regnety": (tv_regnet, lambda m: isinstance(m, tv_rg.ResBottleneckBlock), 1),
    "timm-efficientnet": (lambda: timm.create_model("efficientnet_b0", num_classes=10),
                          lambda m: getattr(m, "has_skip", False), 1),
    "timm-mobilenetv2": (lambda: timm.create_model("mobilenetv2_050", num_classes=10),
                         lambda m: getattr(m, "has_skip", False), 1),
    "timm-mobilenetv3": (lambda: timm.create_model("mobilenetv3_small_050", num_classes=10),
                         lambda m: getattr(m, "has_skip", False), 1),
    "tv-mobilenetv2": (lambda: tv.models.mobilenet_v2(num_classes=10, width_mult=0.25),
                       lambda m: getattr(m, "use_res_connect", False), 1),
    "tv-mobilenetv3": (lambda: tv.models.mobilenet_v3_small(num_classes=10),
                       lambda m: getattr(m, "use_res_connect", False), 1),
    "tv-efficientnet": (lambda: tv.models.efficientnet_b0(num_classes=10),
                        lambda m: getattr(m, "use_res_connect", False), 1),
    "timm-nf-resnet": (lambda: timm_normfree("nf_resnet"), _normfree, 1),
    "timm-nfnet": (lambda: timm_normfree("nfnet"), _normfree, 1),
    "timm-dm-nfnet": (lambda: timm_normfree("dm_nfnet"), _normfree, 1),
}
# what the adapters are expected to find (read off the configurations above by hand)
BLOCKS = {"timm-convnext": 5, "tv-convnext": 4, "hf-convnext": 4, "timm-swin": 8, "tv-swin": 8,
          "tv-swin-v2": 8, "hf-swin": 8, "timm-regnety": 6, "tv-regnety": 4,
          "timm-efficientnet": 9, "timm-mobilenetv2": 10, "timm-mobilenetv3": 7,
          "tv-mobilenetv2": 11, "tv-mobilenetv3": 6, "tv-efficientnet": 9, "timm-nf-resnet": 5,
          "timm-nfnet": 5, "timm-dm-nfnet": 5}


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """float64, eval mode, random BN affines with the running statistics of random images (BN
    statistics unrelated to the activations shrink the signal 30x a stage in EfficientNet: its
    logits would not depend on the input); LayerScale gammas (1e-6 as built), NF's
    standardised-conv gains (the last one 0 as built) and SkipInit gains (0) drawn in [0.5, 1],
    so that no branch is (nearly) zero and no factor the identity."""
    model = randomize_bn(model.double(), seed)
    recalibrate_batchnorm(model, images(8, seed=seed + 10))
    g = torch.Generator().manual_seed(seed + 1)
    scales = ("gamma", "layer_scale", "layer_scale_parameter", "skipinit_gain", ".gain")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(scales):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g, dtype=p.dtype))
    return model


_built: dict = {}


def family(name: str):
    """(model, view, the FoldedLayers warnings wrap gave), built once per session."""
    if name not in _built:
        torch.manual_seed(0)
        model = perturb(FAMILIES[name][0]())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            view = pathens.wrap(model, example_input=images(2))
        notes = [str(w.message) for w in caught if issubclass(w.category, FoldedLayers)]
        _built[name] = model, view, notes
    return _built[name]


def images(n: int = 2, seed: int = 1, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)


def logits(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def model_gradient(model, view, x, y):
    """Gradient of the mean CE at the first block's input by the model's own forward and
    autograd (a pre-hook makes that input a leaf; Swin's layers get it positionally)."""
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


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---- hand edits: the model with one block's branch zeroed, read off each class's forward ---

def _zero_output(module: nn.Module):
    """A forward hook making `module` return zeros (a tuple's first element for HF attention)."""
    def hook(mod, args, out):
        if isinstance(out, tuple):
            return (torch.zeros_like(out[0]), *out[1:])
        return torch.zeros_like(out)
    module.register_forward_hook(hook)


def silence(block: nn.Module, sublayer: str) -> None:
    """Zero the branch of `block` (a copy's), as its own forward computes it."""
    with torch.no_grad():
        if isinstance(block, timm_cx.ConvNeXtBlock):
            block.gamma.zero_()  # x + drop_path(gamma * ...) + shortcut
        elif isinstance(block, tv_cx.CNBlock):
            block.layer_scale.zero_()
        elif isinstance(block, hf_cx.ConvNextLayer):
            block.layer_scale_parameter.zero_()
        elif isinstance(block, timm_nf.NormFreeBlock):
            block.alpha = 0.0  # out * alpha + shortcut
        elif isinstance(block, (timm_sw.SwinTransformerBlock, tv_sw.SwinTransformerBlock)):
            _zero_output(block.attn if sublayer == "attn" else block.mlp)
        elif isinstance(block, hf_sw.SwinLayer):
            _zero_output(block.attention if sublayer == "attn" else block.mlp)
        elif isinstance(block, timm_rg.Bottleneck):
            _zero_output(block.conv3)  # conv3 (ConvNormAct) ends the branch
        elif isinstance(block, tv_rg.ResBottleneckBlock):
            _zero_output(block.f)
        elif isinstance(block, timm_eb.InvertedResidual):
            _zero_output(block.bn3)
        elif isinstance(block, timm_eb.DepthwiseSeparableConv):
            _zero_output(block.bn2)
        elif isinstance(block, tv_v2.InvertedResidual):
            _zero_output(block.conv)
        elif isinstance(block, (tv_v3.InvertedResidual, tv_eff.MBConv)):
            _zero_output(block.block)
        else:
            raise AssertionError(f"no hand edit for {type(block).__name__}")


def deleted_by_hand(model, view, deleted):
    model = copy.deepcopy(model)
    names = {id(m): n for n, m in view.model.named_modules()}
    for i in deleted:
        b = view.blocks[i]
        silence(model.get_submodule(names[id(b.module)]), b.sublayer)
    return model


# ---- the tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_view_counts_the_residual_blocks_and_reproduces_the_model(name):
    model, view, _ = family(name)
    _, is_residual, per_module = FAMILIES[name]
    assert view.num_blocks == BLOCKS[name]
    assert view.num_blocks == per_module * sum(bool(is_residual(m)) for m in model.modules())
    x = images(3, seed=2)  # not the probe
    with torch.no_grad():
        torch.testing.assert_close(view(x), logits(model, x), rtol=0, atol=1e-12)
    assert view.residual and all(b.residual for b in view.blocks)


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_decomposition_sums_to_the_models_gradient(name):
    model, view, _ = family(name)
    x, y = images(2), torch.tensor([1, 4])
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    truth = model_gradient(model, view, x, y)
    assert float(truth.norm()) > 0
    assert rel(res.components.sum(0), truth) < 1e-10 and res.residual < 1e-10
    assert float(res.components[1:].norm()) > 1e-6 * float(truth.norm())  # branches carry some


@pytest.mark.parametrize("name", ["timm-convnext", "tv-mobilenetv3", "hf-swin"])
def test_exact_decomposition_equals_brute_force(name):
    """Every path's gradient by autograd through the view (2^n backward passes): stage
    transitions folded into blocks (ConvNeXt), inverted residuals folded into the stem, the
    blocks and the head (MobileNetV3), sublayers reading a context (HF Swin's patch grid)."""
    model, view, _ = family(name)
    x, y = images(2), torch.tensor([3, 0])
    G = pathens.path_gradients(view, x, y, components=True, progress=False).components
    h0, ctx = view.embed(x)
    h0 = h0.detach()
    brute = [torch.zeros_like(h0) for _ in range(view.num_blocks + 1)]
    for mask in paths.enumerate_paths(view.num_blocks):
        h = h0.clone().requires_grad_(True)
        loss = F.cross_entropy(view.run_from(h, path=mask, ctx=ctx), y)
        brute[int(mask.sum())] += torch.autograd.grad(loss, h)[0]
    scale = float(sum(b.norm() for b in brute))
    for k in range(view.num_blocks + 1):
        assert float((G[k] - brute[k]).norm()) < 1e-10 * scale, f"length {k}"
    assert float(G[-1].norm()) > 0  # the longest path carries gradient


# a block with a folded transition (a downsampling block of the view) and one without
DELETIONS = {"timm-convnext": [1, 2], "tv-convnext": [1, 2], "hf-convnext": [1, 2],
             "timm-swin": [4, 7], "tv-swin": [4, 3], "tv-swin-v2": [4, 1], "hf-swin": [4, 2],
             "timm-regnety": [1, 3], "tv-regnety": [1, 3], "timm-efficientnet": [1, 3],
             "timm-mobilenetv2": [1, 2], "timm-mobilenetv3": [1, 2], "tv-mobilenetv2": [1, 3],
             "tv-mobilenetv3": [1, 2], "tv-efficientnet": [1, 3], "timm-nf-resnet": [1, 2],
             "timm-nfnet": [1, 2], "timm-dm-nfnet": [1, 2]}


@pytest.mark.parametrize("name", FAMILIES)
def test_deletion_equals_a_hand_edited_model(name):
    model, view, _ = family(name)
    down, keep = DELETIONS[name]
    assert view.blocks[down].downsample and not view.blocks[keep].downsample
    x, y = images(3, seed=3), torch.tensor([0, 1, 2])
    for deleted in ([down], [keep], [down, keep]):
        want = logits(deleted_by_hand(model, view, deleted), x).detach()
        with torch.no_grad():
            torch.testing.assert_close(view.run(x, deleted=deleted), want, rtol=0, atol=1e-12)
            assert not torch.allclose(want, logits(model, x))
    row = pathens.lesion.evaluate(view, (x, y), deleted=[down, keep])
    assert row["loss"] == pytest.approx(float(F.cross_entropy(want, y)), rel=1e-10)


def test_stage_transitions_are_folded_into_the_next_block():
    """A ConvNeXt stage's downsampling (LayerNorm2d + strided conv, no shortcut) lies on both
    the shortcut and the branch of its stage's first block: deleting that block keeps it."""
    model, view, _ = family("timm-convnext")
    b = view.blocks[1]
    assert b.name == "stages.1.blocks.0" and b.in_shape == (8, 8, 8)
    assert b.out_shape == (16, 4, 4)
    h = view.stem(images(2)).detach()
    with torch.no_grad():
        torch.testing.assert_close(b.shortcut(h), model.stages[1].downsample(h), rtol=0, atol=0)
    # the downsampling parameters are the shortcut's: not the branch's (parameters=True)
    from pathens.measure.linearize import branch_parameters
    names = [n for n, _ in branch_parameters(b)]
    assert names and not any("downsample" in n for n in names)


@pytest.mark.parametrize("name", ["tv-regnety", "tv-convnext", "tv-swin", "tv-mobilenetv3"])
def test_torchvision_models_have_a_default_probe(name):
    model = family(name)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldedLayers)
        view = pathens.wrap(model)  # 64 x 64 images: torchvision's classifiers take 3 channels
    assert view.input_shape == (3, 64, 64) and view.num_blocks == BLOCKS[name]


def test_inverted_residuals_say_how_many_blocks_are_residual():
    model, view, notes = family("tv-mobilenetv2")
    blocks = [m for m in model.features if isinstance(m, tv_v2.InvertedResidual)]
    residual = [m for m in blocks if m.use_res_connect]
    assert (len(blocks), len(residual)) == (17, 11)
    assert len(notes) == 1
    assert notes[0].startswith("MobileNetV2: 11 of its 17 blocks are residual")
    assert "the 6 others have no shortcut and are folded" in notes[0]
    assert "(2^11 paths)" in notes[0]
    with warnings.catch_warnings(record=True) as caught:  # said at the caller's wrap
        warnings.simplefilter("always")
        pathens.wrap(model, example_input=images(2))
    said = [w for w in caught if issubclass(w.category, FoldedLayers)]
    assert len(said) == 1 and said[0].filename == __file__
    assert family("timm-convnext")[2] == []  # stage transitions are not worth a warning


def test_folded_inverted_residuals_keep_closed_form_transposes():
    """MobileNetV2 with ReLU (timm builds it on request): residual blocks and the blocks
    without a skip folded into them are convolutions, BN and ReLU, so every block's VJPs are
    closed form; each equals autograd on the block."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldedLayers)
        model = perturb(timm.create_model("mobilenetv2_050", num_classes=10, act_layer="relu"))
        view = pathens.wrap(model, example_input=images(2))
    assert view.num_blocks == 10 and autograd_blocks(view) == {}
    assert sum(b.downsample for b in view.blocks) == 4  # 4 with a folded transition
    for b, xb in zip(view.blocks, block_inputs(view, images(2))):
        check_block(b, xb)


def test_regnetx_is_closed_form_and_regnety_says_its_se():
    """RegNetX (no SE): conv-BN-ReLU branches and 1x1 projections, transposed in closed form,
    each VJP equal to autograd on the block (timm's and torchvision's)."""
    x_params = tv_rg.BlockParams.from_init_params(depth=4, w_0=8, w_a=8, w_m=2, group_width=8)
    for build in (lambda: timm_regnet("regnetx_002"),
                  lambda: tv_rg.RegNet(x_params, num_classes=10, stem_width=8)):
        torch.manual_seed(0)
        view = pathens.wrap(perturb(build()), example_input=images(2))
        assert view.num_blocks > 3 and autograd_blocks(view) == {}
        for b, xb in zip(view.blocks, block_inputs(view, images(2))):
            check_block(b, xb)
    assert set(autograd_blocks(family("timm-regnety")[1]).values()) == {"SEModule in the branch"}
    assert set(autograd_blocks(family("tv-regnety")[1]).values()) == {
        "SqueezeExcitation in the branch"}


def test_nf_blocks_scale_by_alpha_and_read_beta():
    model, view, _ = family("timm-nf-resnet")
    blocks = [m for m in model.modules() if isinstance(m, timm_nf.NormFreeBlock)]
    assert [b.parts.scale for b in view.blocks] == [m.alpha for m in blocks]
    assert {m.beta for m in blocks} != {1.0}  # beta = 1 / expected std, inside the branch
    dm = family("timm-dm-nfnet")[1]  # SkipInit's learned gain is the scale, live
    assert all(b.parts.scale is b.module.skipinit_gain for b in dm.blocks)


def test_hf_swin_eager_attention_computes_in_float32():
    """Hugging Face's eager attention takes its softmax in float32 in a float64 model: the
    model's own gradient carries float32 rounding (1.6e-9 relative to the float64 one of sdpa,
    the default, on this model); the view reproduces the model, and the decomposition sums to
    its own gradient to ~2e-11 rather than 1e-15 (the whole and the parts round apart)."""
    torch.manual_seed(0)
    eager = perturb(hf_swin("eager"))
    sdpa, view_sdpa, _ = family("hf-swin")
    eager.load_state_dict(sdpa.state_dict())
    x, y = images(2), torch.tensor([1, 4])
    view = pathens.wrap(eager, example_input=images(2))
    with torch.no_grad():
        torch.testing.assert_close(view(x), logits(eager, x), rtol=0, atol=1e-12)
    gap = rel(model_gradient(eager, view, x, y), model_gradient(sdpa, view_sdpa, x, y))
    assert 1e-12 < gap < 1e-6  # float32 rounding inside the float64 model
    assert pathens.path_gradients(view, x, y, progress=False).residual < 1e-9
    assert pathens.path_gradients(view_sdpa, x, y, progress=False).residual < 1e-13


def test_hf_swin_grid_is_read_off_the_tokens():
    model, view, _ = family("hf-swin")
    x = images(2, size=48)  # square, not the config's 32: the grids are read as squares
    with torch.no_grad():
        torch.testing.assert_close(view(x), logits(model, x), rtol=0, atol=1e-12)
    wide = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    with pytest.raises(pathens.PathensError, match="neither the config's grid"):
        view(wide)


def test_densenet_has_no_residual_blocks_and_says_why():
    torch.manual_seed(0)
    model = tv.models.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8,
                               bn_size=2, num_classes=3)
    for allow_plain in (False, True):
        with pytest.raises(pathens.WrapError, match=r"no residual blocks: its dense layers .* "
                                                    r"concatenate .* allow_plain=True"):
            pathens.wrap(model, example_input=torch.randn(2, 3, 32, 32), allow_plain=allow_plain)


def test_a_wrong_transition_is_named():
    class Tiny(nn.Module):  # block, a strided conv with no shortcut, block
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a, self.b = tv_v3.InvertedResidual(_cnf(8, 8, 1), nn.BatchNorm2d), \
                tv_v3.InvertedResidual(_cnf(16, 16, 1), nn.BatchNorm2d)
            self.down = nn.Conv2d(8, 16, 2, stride=2)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            h = self.b(self.down(self.a(self.stem(x))))
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(0)
    model = Tiny().double().eval()
    head = lambda h: model.fc(h.mean((2, 3)))  # noqa: E731
    pathens.register_model(Tiny, lambda m: pathens.ModelParts(
        blocks=[m.a, m.b], head=head, transitions={1: m.down}))
    view = pathens.wrap(model, example_input=images(2))
    assert view.num_blocks == 2 and view.blocks[1].downsample
    with torch.no_grad():
        torch.testing.assert_close(view(images(3)), model(images(3)), rtol=0, atol=1e-12)
    pathens.register_model(Tiny, lambda m: pathens.ModelParts(
        blocks=[m.a, m.b], head=head, transitions={1: lambda h: m.down(2 * h)}))
    with pytest.raises(pathens.WrapError, match="the transition the adapter names before b does "
                                                "not compute its input from the output of a"):
        pathens.wrap(model, example_input=images(2))
    pathens.register_model(Tiny, lambda m: pathens.ModelParts(
        blocks=[m.a, m.b], head=head, transitions={0: m.down}))
    with pytest.raises(pathens.WrapError, match=r"transition before block module 0: it must be "
                                                r"an index in 1\.\.1"):
        pathens.wrap(model, example_input=images(2))


def _cnf(cin, cout, stride):
    return tv_v3.InvertedResidualConfig(cin, 3, 2 * cin, cout, False, "RE", stride, 1, 1.0)


# ---- README's table, generated by wrapping each family -----------------------------------------

LIBRARY = {"timm": "timm", "tv": "torchvision", "hf": "Hugging Face"}


def family_table() -> str:
    """README's vision table: one row per family and library, from the tiny models above: the
    residual blocks the view finds (and how many of the library's blocks had no shortcut and
    were folded in), whether the sweep transposes them in closed form, and how closely the
    exact decomposition sums to the model's own gradient (float64)."""
    rows = ["| vision family | library | class | residual blocks (tiny model) | transposes | "
            "exact decomposition vs the model's gradient |", "| --- | --- | --- | --- | --- | --- |"]
    for name in FAMILIES:
        model, view, notes = family(name)
        lib, fam = name.split("-", 1)
        x, y = images(2), torch.tensor([1, 4])
        truth = model_gradient(model, view, x, y)
        res = pathens.path_gradients(view, x, y, components=True, progress=False)
        err = rel(res.components.sum(0), truth)
        folded = " (layers without a shortcut folded in)" if notes else ""
        slow = autograd_blocks(view)
        closed = "autograd" if slow or any(b.parts.layers is None for b in view.blocks) else \
            "closed form"
        rows.append(f"| {fam} | {LIBRARY[lib]} | `{type(model).__name__}` | {view.num_blocks}"
                    f"{folded} | {closed} | {'to 1e-12' if err < 1e-12 else f'{err:.0e}'} |")
    return "\n".join(rows) + "\n"


def test_readme_vision_table_is_generated():
    import pathlib
    table = family_table()
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README's vision table is out of date; it should read:\n" + table
