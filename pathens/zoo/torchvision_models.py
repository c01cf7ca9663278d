"""torchvision's residual families by name, torchvision.NAME: every ResNet builder in
torchvision.models.resnet (resnet18-152, wide_resnet50_2 / 101_2, resnext50_32x4d,
resnext101_32x8d / 64x4d: chains of BasicBlock / Bottleneck) and every VisionTransformer in
models.vision_transformer (vit_b_16 ... vit_h_14), listed from torchvision itself so that a new
builder in either file is accepted. Built with weights=None (nothing downloaded); the class
count is read from the classifier's weights (fc.weight, heads.head.weight), and a ViT's image
size from its position embedding (SWAG weights are 384 or 518 pixels, not 224)."""
from __future__ import annotations

import difflib
import math

from ..errors import PathensError
from .extras import require

_FAMILIES = ("torchvision.models.resnet", "torchvision.models.vision_transformer")


def names(tvm) -> list[str]:
    """The torchvision classification builders pathens can wrap."""
    return sorted(n for n in tvm.list_models(module=tvm)
                  if tvm.get_model_builder(n).__module__ in _FAMILIES)


def _vit_image_size(state):
    """The image size a torchvision ViT's weights were trained at: (size / patch)^2 position
    embeddings after the class token; None if the weights do not say."""
    pos, proj = state.get("encoder.pos_embedding"), state.get("conv_proj.weight")
    if pos is None or proj is None or pos.dim() != 3 or proj.dim() != 4:
        return None
    side = math.isqrt(pos.shape[1] - 1)
    return side * proj.shape[-1] if side * side == pos.shape[1] - 1 else None


def build(arch: str, name: str, state, flags: dict):
    """(model, meta) for arch = torchvision.NAME (name = NAME)."""
    tvm = require("torchvision", f"{arch}").models
    known = names(tvm)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
        also = f" (did you mean {', '.join('torchvision.' + c for c in close)}?)" if close else ""
        raise PathensError(f"{arch} is not a torchvision model pathens can wrap{also}: it wraps "
                           f"torchvision's ResNets and ViTs ({', '.join(known)}); for another "
                           f"model, register its blocks with pathens.register_block in a file "
                           f"and pass --model FILE.py:FUNCTION")
    state = state or {}
    builder = tvm.get_model_builder(name)
    vit = builder.__module__.endswith("vision_transformer")
    kwargs = {}
    classes = flags.get("num_classes") or _rows(state, "heads.head.weight" if vit else "fc.weight")
    if classes:
        kwargs["num_classes"] = classes
    if vit and _vit_image_size(state):
        kwargs["image_size"] = _vit_image_size(state)
    try:
        model = builder(weights=None, **kwargs)
    except (ValueError, TypeError) as err:
        raise PathensError(f"{arch} cannot be built with {kwargs}: {' '.join(str(err).split())}") from None
    meta = dict(torchvision_name=name,
                num_classes=model.num_classes if vit else model.fc.out_features)
    if vit:
        meta["image_size"] = model.image_size
    return model, meta


def _rows(state, key):
    w = state.get(key)
    return int(w.shape[0]) if w is not None and w.dim() >= 1 else None
