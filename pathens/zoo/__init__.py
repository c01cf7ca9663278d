"""The model zoo: a network from an architecture name and (optionally) its weights, with
nothing downloaded.

    model, meta = pathens.zoo.build("timm:resnet50", "resnet50.safetensors")
    model, meta = pathens.zoo.build("hf:models/resnet-50")          # config.json + weights
    model, meta = pathens.zoo.build("torchvision.resnext50_32x4d", "rx50.pth")
    model, meta = pathens.zoo.build("resnet56", "akamaster.th")     # pathens CIFAR ResNet

Architectures (one file each):
  resnetD, cifar_resnetD   pathens's CIFAR ResNet (D = 6n+2), shaped by flags     (cifar.py)
  torchvision.NAME         torchvision's ResNets, Wide ResNets, ResNeXts and ViTs (torchvision_models.py)
  timm:NAME[.TAG]          any timm model, timm.create_model(pretrained=False)    (timm_models.py)
  hf:DIR                   a local Hugging Face model folder                      (hf.py)

Sizes are read from the weights where they can be (class count, width, input channels, a
ViT's image size), so a checkpoint usually needs its architecture name alone. Weights: a
.pth / .pt / .th file (torch.load(weights_only=True)), a .safetensors file, a state dict, or
None (random initialisation: meta["random_init"] says so). They are loaded strictly: a key
missing or unexpected, or a shape that differs, is a one-line CheckpointError listing them.
timm and transformers are optional (pip install 'pathens[timm]' / 'pathens[hf]').
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from ..errors import PathensError

# Flags that shape a network (the command line's --norm ... --in-channels); None / False: not
# given. All shape pathens's CIFAR ResNets; the others accept the ones they can use.
ARCH_FLAGS = ("norm", "shortcut", "preact", "plain", "width", "num_classes", "in_channels")
_ACCEPTS = {"cifar": ARCH_FLAGS, "torchvision": ("num_classes",),
            "timm": ("num_classes", "in_channels"), "hf": ()}
_LIBRARIES = {"cifar": (), "torchvision": ("torchvision",), "timm": ("timm", "torchvision"),
              "hf": ("transformers", "safetensors")}
_ARCHS = ("resnetD (D = 6n+2, e.g. resnet56), torchvision.NAME (e.g. torchvision.resnet50), "
          "timm:NAME (e.g. timm:resnet50) or hf:DIR (a local Hugging Face model folder)")
_HINTS = {
    "torchvision": "build it as the torchvision model the weights were trained as (e.g. "
                   "torchvision.wide_resnet50_2, not resnet50)",
    "timm": "build it as the timm model the weights were trained as (e.g. timm:resnet50d, not "
            "timm:resnet50; timm.list_models('*pattern*') lists them)",
    "cifar": "build it with the architecture the weights were trained with (depth, and the "
             "flags norm, shortcut, preact, plain)",
}


def parse(arch: str) -> tuple[str, str]:
    """(kind, name): kind one of cifar, torchvision, timm, hf; a one-line error otherwise."""
    from .cifar import depth_of
    if not isinstance(arch, str) or not arch.strip():
        raise PathensError(f"an architecture name is needed: {_ARCHS}")
    if arch.startswith("timm:"):
        return "timm", arch[5:]
    if arch.startswith("hf:"):
        return "hf", arch[3:]
    for prefix in ("torchvision.", "tv."):
        if arch.lower().startswith(prefix):
            return "torchvision", arch[len(prefix):].lower()
    if depth_of(arch) is not None:
        return "cifar", arch
    raise PathensError(f"unknown architecture {arch!r}: use {_ARCHS}")


def given(flags: Optional[Mapping]) -> dict:
    """The flags given: None and False mean not given (the command line's defaults)."""
    flags = dict(flags or {})
    unknown = [k for k in flags if k not in ARCH_FLAGS]
    if unknown:
        raise PathensError(f"unknown architecture flag {unknown[0]!r}: the flags are {', '.join(ARCH_FLAGS)}")
    return {k: v for k, v in flags.items() if v is not None and v is not False}


def build(arch: str, weights=None, *, flags: Optional[Mapping] = None):
    """(model in eval mode on the CPU, meta) for an architecture name (see the module's
    docstring) and weights (a checkpoint path, a state dict, or None for random
    initialisation; for hf:DIR, None means the folder's own weights).

    flags: the ARCH_FLAGS that shape the network (norm, shortcut, preact, plain, width,
    num_classes, in_channels; None / False = not given). CIFAR ResNets take all of them;
    torchvision num_classes; timm num_classes and in_channels; hf none (config.json decides).

    meta (plain values, for results): arch, source (cifar / torchvision / timm / hf), weights
    (the file's absolute path, or None), weights_sha256, weights_from ("file", "state dict",
    "random init"), random_init, num_classes, versions (python, pathens, torch and the
    libraries used), and per source: cifar: the builder's config (depth, norm, shortcut,
    preact, skip, width, in_channels, alpha_init); torchvision: torchvision_name, image_size
    (ViT); timm: timm_name, pretrained_tag, in_channels, pretrained_cfg (input_size,
    interpolation, crop_pct, crop_mode, mean, std, test sizes), data_config (timm's
    resolve_data_config: what its eval transform uses); hf: hf_dir, hf_class, model_type,
    vocab_size (language models), tokenizer (the folder, when it holds tokenizer files),
    preprocessor (its preprocessor_config.json's size / crop / mean / std), weights_shards
    (sharded files: name -> sha256), weights_adapted (the Hugging Face file conventions
    applied). Raises PathensError / CheckpointError, one line, for any bad input."""
    from . import weights as weights_mod
    from .record import versions

    kind, name = parse(arch)
    flags = given(flags)
    refused = [f for f in flags if f not in _ACCEPTS[kind]]
    if refused:
        flag = refused[0]
        raise PathensError(f"the flag {flag} (--{flag.replace('_', '-')}) does not apply to {arch}: "
                           + ("a Hugging Face folder's config.json decides its network" if kind == "hf"
                              else f"{kind} models take only {', '.join(_ACCEPTS[kind])}; the others "
                                   f"shape pathens CIFAR ResNets (resnetD)"))
    if kind == "hf":
        from . import hf
        model, meta = hf.build(arch, name, weights, flags)
    else:
        state, info = weights_mod.read(weights)
        if kind == "cifar":
            from . import cifar
            model, meta = cifar.build(arch, state, flags)
        elif kind == "torchvision":
            from . import torchvision_models
            model, meta = torchvision_models.build(arch, name, state, flags)
        else:
            from . import timm_models
            model, meta = timm_models.build(arch, name, state, flags)
        if state is not None:
            hint = _HINTS[kind]
            if kind == "cifar" and "fc.weight" in state:  # torchvision's and timm's classifier
                hint += ("; weights with fc.weight are an ImageNet ResNet's: use "
                         "torchvision.resnetD or timm:resnetD (e.g. torchvision.resnet50)")
            weights_mod.load(model, state, what=f"{arch} ({info['weights'] or 'the state dict given'})",
                             hint=hint)
        meta.update(info)
    meta = dict(arch=arch, source=kind, **meta, versions=versions(*_LIBRARIES[kind]))
    return model.eval(), meta
