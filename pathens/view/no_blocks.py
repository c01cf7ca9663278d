"""What wrap says when a model holds no residual block it knows: the families pathens supports
(all of them, not only those whose library happens to be imported), and, when a run of the
model on a probe shows it, that the model adds no tensor to another at all (a plain stack, or
DenseNet's concatenations): then registering a block class cannot help, and only a plain
view (allow_plain=True) can lesion it."""
from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..adapters import _BLOCKS, _FAMILIES, qualname
from ..errors import WrapError
from ..data.inputs import call_model, to_model
from ..models.modes import eval_mode

SUPPORTED = ("pathens's cifar_resnet and gpt; torchvision's ResNets (ResNeXt, Wide ResNet) and "
             "VisionTransformer; timm's ResNets (resnet*, resnext*, seresnet*, wide_resnet*, "
             "resnet*d, resnetv2*) and VisionTransformer; Hugging Face GPT2LMHeadModel, "
             "BertForSequenceClassification and ResNetForImageClassification")

_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__,
         torch.Tensor.__radd__, torch.Tensor.__iadd__}
_CATS = {torch.cat, torch.concat, torch.concatenate}


class _Count(TorchFunctionMode):
    """Counts tensor + tensor of one shape (a residual addition; not a bias or a broadcast
    position embedding) and concatenations."""

    def __init__(self):
        super().__init__()
        self.adds = self.cats = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADDS and len(args) >= 2 and all(torch.is_tensor(a) for a in args[:2]):
            a, b = args[:2]
            self.adds += a.shape == b.shape and a.numel() > 1
        elif func in _CATS:
            self.cats += 1
        return func(*args, **kwargs)


def count_operations(model: nn.Module, example_input=None):
    """(residual-like additions, concatenations) in one forward on a probe, or None when no
    probe can be had or the model fails on it."""
    from .proof import check_probe
    param = next(model.parameters())
    try:
        probe = check_probe(model, example_input, param)
    except WrapError:
        probe = _first_conv_probe(model, param) if example_input is None else None
    if probe is None:
        return None
    mode = _Count()
    try:
        with eval_mode(model), torch.no_grad(), mode:
            call_model(model, to_model(probe, param))
    except Exception:  # noqa: BLE001 - whatever the model does on a guessed probe: unknown
        return None
    return mode.adds, mode.cats


def _first_conv_probe(model, param):
    """A 64x64 image batch for a torchvision CNN the probe rules do not know (e.g. DenseNet)."""
    if not type(model).__module__.startswith("torchvision.models"):
        return None
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return None
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, conv.in_channels, 64, 64, generator=g, dtype=param.dtype)


def message(model: nn.Module, example_input=None) -> str:
    """The one-line WrapError text for a model with no known residual block."""
    cls = type(model).__name__
    own = sorted(qualname(c) for c in _BLOCKS if c.__module__.split(".", 1)[0] not in _FAMILIES)
    known = f"pathens supports {SUPPORTED}" + (f"; registered: {', '.join(own)}" if own else "")
    ops = count_operations(model, example_input)
    if ops is not None and ops[0] == 0:
        how = "it concatenates features instead, as DenseNet does" if ops[1] else \
            "a plain stack of layers"
        return (f"{cls} has no residual additions at all (its forward never adds a tensor to "
                f"another of its shape: {how}), hence no residual blocks and no paths to "
                f"analyse ({known}); allow_plain=True can lesion it only once its layers are "
                f"registered as plain blocks (pathens.register_block returning "
                f"BlockParts(branch=..., residual=False)), and only layers that keep their "
                f"input's shape can be deleted")
    return (f"{cls} has no residual blocks pathens knows ({known}): register your block class "
            f"with pathens.register_block (and, if torch.fx cannot trace the model, the model "
            f"with pathens.register_model), e.g. in a file that the command line loads with "
            f"--model FILE.py:FUNCTION")



