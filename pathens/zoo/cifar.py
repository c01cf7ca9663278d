"""pathens's own CIFAR ResNets by name: resnetD / cifar_resnetD (D = 6n+2), shaped by the
flags norm, shortcut, preact, plain, width, num_classes and in_channels; the sizes not given
(width, in_channels, num_classes) are read from the weights (conv1.weight, linear.weight),
which is how the public akamaster checkpoints load with only --arch resnet56."""
from __future__ import annotations

from ..errors import PathensError

# ImageNet ResNet depths that are not 6n+2: `resnet50` is almost surely meant as torchvision's
# or timm's, so the error points there.
_IMAGENET_DEPTHS = (18, 34, 50, 101, 152, 200)


def depth_of(name: str):
    """D of 'resnetD' / 'cifar_resnetD' (any case), else None."""
    key = name.lower().removeprefix("cifar_")
    return int(key[6:]) if key.startswith("resnet") and key[6:].isdigit() else None


def size(given, state, key: str, dim: int, default: int) -> int:
    """given if passed, else state[key]'s size along dim (the checkpoint knows), else default."""
    if given is not None:
        return given
    weight = (state or {}).get(key)
    return int(weight.shape[dim]) if weight is not None and weight.dim() > dim else default


def build(arch: str, state, flags: dict):
    """(CifarResNet, meta) for arch = resnetD / cifar_resnetD; meta is the builder's config."""
    from ..models.cifar import cifar_resnet
    depth, get = depth_of(arch), flags.get
    try:
        model = cifar_resnet(depth, norm=get("norm", "bn"), shortcut=get("shortcut", "A"),
                             preact=get("preact", False), skip=not get("plain", False),
                             width=size(get("width"), state, "conv1.weight", 0, 16),
                             num_classes=size(get("num_classes"), state, "linear.weight", 0, 10),
                             in_channels=size(get("in_channels"), state, "conv1.weight", 1, 3))
    except ValueError as err:  # cifar_resnet's checks of its arguments; nothing else runs yet
        also = (f"; for the ImageNet ResNet-{depth} use torchvision.resnet{depth} or "
                f"timm:resnet{depth}" if depth in _IMAGENET_DEPTHS else "")
        raise PathensError(f"{arch}: the network cannot be built: {err}{also}") from None
    return model, dict(model.config)
