"""Profiles that initialisation makes degenerate are said, not silently returned: a zero head
(torchvision's VisionTransformer as built) gives zero gradient at every length, zero-initialised
branch ends (timm's zero_init_last=True, SkipInit's alpha = 0) put all of it at length 0.
path_gradients warns once, naming which, and effective_depth says so. The oracles: the model's
own autograd (the gradient at the head's input, at the first block's input) and the weights
themselves."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pathens
from pathens.measure import zero_gradient
from nets import VARIANTS, batch, small_resnet


def gradients(view, x, y, **kw):
    """path_gradients and the warnings it gave."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = pathens.path_gradients(view, x, y, progress=False, **kw)
    return result, [str(w.message) for w in said if "path_gradients:" in str(w.message)]


def tiny_vit():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2,
                                                num_heads=2, hidden_dim=16, mlp_dim=32,
                                                num_classes=5).double().eval()


def test_a_zero_head_warns_once_and_has_no_effective_depth():
    vit = tiny_vit()
    assert not vit.heads.head.weight.any()  # torchvision zero-initialises the head
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    # independently: the loss gradient at the head's input (the encoder's output), by autograd
    seen = {}

    def leaf(module, args):
        seen["h"] = args[0].detach().requires_grad_(True)
        return (seen["h"],)

    handle = vit.heads.register_forward_pre_hook(leaf)
    loss = torch.nn.functional.cross_entropy(vit(x), y)
    handle.remove()
    assert not torch.autograd.grad(loss, seen["h"])[0].any()
    view = pathens.wrap(vit)
    for kw in ({"batch_size": 3}, {"method": "sampled", "samples_per_length": 2}):
        result, said = gradients(view, x, y, **kw)
        assert not result.total.any() and result.gradient_norm == 0
        assert len(said) == 1 and "gradient at the head's input is exactly zero" in said[0], said
        assert "zero head" in result.config["zero_gradient"]
        with pytest.raises(pathens.PathensError, match="no gradient-based effective depth: "
                                                       "the gradient is zero at every path length: "
                                                       ".*zero head"):
            pathens.effective_depth(result)


def zeroed_branch_ends(model):
    with torch.no_grad():
        for block in model.modules():
            if hasattr(block, "bn2"):
                block.bn2.weight.zero_()
                block.bn2.bias.zero_()
    return model


@pytest.mark.parametrize("make", ["bn2 zeroed", "skipinit alpha 0", "timm zero_init_last"])
def test_zero_branch_ends_put_everything_at_length_0_and_say_why(make):
    if make == "bn2 zeroed":
        view = pathens.wrap(zeroed_branch_ends(small_resnet(14, **VARIANTS[0][1])))
        x, y = batch(6, seed=2)
    elif make == "skipinit alpha 0":  # SkipInit as initialised, before training
        torch.manual_seed(0)
        view = pathens.wrap(pathens.cifar_resnet(14, width=4, norm="skipinit").double().eval())
        x, y = batch(6, seed=2)
    else:
        resnet = pytest.importorskip("timm.models.resnet")
        torch.manual_seed(0)  # resnet18's layout at 1/8 of its widths
        model = resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], num_classes=5, stem_width=8,
                              channels=(8, 16, 32, 64), zero_init_last=True).double().eval()
        x, y = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 4])
        view = pathens.wrap(model, example_input=x[:2])
    result, said = gradients(view, x, y, batch_size=2)
    # the oracle: all of the model's own gradient at the first block's input is at length 0
    assert result.total[0] == pytest.approx(result.gradient_norm, rel=1e-9)
    assert result.gradient_norm > 0 and not result.total[1:].any()
    assert len(said) == 1 and "zero-initialised branch ends" in said[0], said
    depth = pathens.effective_depth(result)
    assert depth.depth == 0 and depth.interval == (0, 0)
    assert "zero-initialised branch ends" in depth.describe()
    assert "zero-initialised branch ends" in depth.details["zero_gradient"]
    _, said = gradients(view, x, y, method="sampled", samples_per_length=2)
    assert len(said) == 1 and "zero-initialised branch ends" in said[0], said


def test_a_trained_like_network_says_nothing():
    view = pathens.wrap(small_resnet(14, **VARIANTS[4][1]))
    x, y = batch(5, seed=1)
    result, said = gradients(view, x, y)
    assert said == [] and "zero_gradient" not in result.config
    assert "zero" not in pathens.effective_depth(result).describe()


def test_diagnose_tells_the_cases_apart():
    d = zero_gradient.diagnose
    assert d([0.0, 0.0, 0.0], head_sq=0.0) == zero_gradient.HEAD
    assert d([0.0, 0.0, 0.0], head_sq=1.0) == zero_gradient.STREAM  # the blocks pass none back
    assert d([1.0, 0.0, 0.0], head_sq=1.0) == zero_gradient.BRANCHES
    assert d([1.0, 0.0, 0.0], head_sq=1.0, exact_lengths=False) is None  # tol > 0 dropped them
    assert d([0.0, 0.0], head_sq=1.0, lengths=[2, 3]) is None  # length 0 not measured
    assert d([0.0, 0.0], head_sq=0.0, lengths=[2, 3]) == zero_gradient.HEAD
    assert d([1.0, 1e-30, 0.0], head_sq=1.0) is None
    assert d(np.array([np.nan, 0.0]), head_sq=1.0) is None
