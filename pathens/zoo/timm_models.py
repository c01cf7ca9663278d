"""timm models by name, timm:NAME (any model timm.list_models() lists, optionally with a
pretrained tag, e.g. timm:resnet50.a1_in1k): built with timm.create_model(name,
pretrained=False) -- nothing downloaded -- with the class count and input channels read from
the weights where the model's pretrained_cfg says they live (its `classifier` and
`first_conv`). The pretrained_cfg (input size, interpolation, crop, mean, std) is recorded, so
that the image transform can follow the one the weights were trained with; the tag selects
it (timm:resnet50.tv_in1k: torchvision's recipe, 224 pixels, crop 0.875)."""
from __future__ import annotations

import difflib

from ..errors import PathensError
from .extras import require

# what of pretrained_cfg the eval transform depends on
_CFG_KEYS = ("input_size", "test_input_size", "interpolation", "crop_pct", "test_crop_pct",
             "crop_mode", "mean", "std")


def _first(entry):
    """pretrained_cfg's classifier may be a tuple (a distilled ViT's head, head_dist)."""
    return entry[0] if isinstance(entry, (tuple, list)) and entry else entry


def _size(state, key, dim):
    w = (state or {}).get(f"{key}.weight") if isinstance(key, str) else None
    return int(w.shape[dim]) if w is not None and w.dim() > dim else None


def plain(value):
    """JSON-able: tuples as lists (results are written as JSON)."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value if isinstance(value, (type(None), bool, int, float, str)) else str(value)


def _pretrained_cfg(timm, arch: str, name: str):
    """timm's pretrained_cfg of name (None for a model without one), a bad tag one line."""
    from timm.models import get_pretrained_cfg
    try:
        return get_pretrained_cfg(name)
    except RuntimeError as err:  # "Invalid pretrained tag (x) for resnet50."
        base = name.split(".", 1)[0]
        tags = timm.list_models(base, pretrained=True)[:8]
        raise PathensError(f"{arch}: {' '.join(str(err).split())} (it has: "
                           f"{', '.join(tags) or 'no tags'}): use one of them, or the name "
                           f"alone") from None


def _unknown(timm, arch: str, name: str) -> PathensError:
    base = name.split(".", 1)[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    also = f"; close names: {', '.join(close)}" if close else ""
    return PathensError(f"{arch}: timm {timm.__version__} has no model {base!r}{also} "
                        f"(see timm.list_models('*pattern*'))")


def _create(timm, arch: str, name: str, kwargs: dict):
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - timm raises many kinds for arguments it refuses
        text = " ".join(str(err).split())[:160] or type(err).__name__
        raise PathensError(f"{arch} cannot be built with {kwargs or 'its defaults'} "
                           f"({type(err).__name__}: {text})") from None


def _classifier_key(model):
    """The state-dict prefix of the model's classifier (get_classifier()), or None."""
    clf = _first(model.get_classifier()) if hasattr(model, "get_classifier") else None
    return next((n for n, m in model.named_modules() if m is clf and n), None)


def build(arch: str, name: str, state, flags: dict):
    """(model, meta) for arch = timm:NAME (name = NAME)."""
    timm = require("timm", arch)
    if not timm.is_model(name):
        raise _unknown(timm, arch, name)
    cfg = _pretrained_cfg(timm, arch, name)
    classifier = _first(cfg.classifier) if cfg else None
    first_conv = _first(cfg.first_conv) if cfg else None
    kwargs = {}
    classes = flags.get("num_classes") or _size(state, classifier, 0)
    channels = flags.get("in_channels") or _size(state, first_conv, 1)
    if classes:
        kwargs["num_classes"] = classes
    if channels:
        kwargs["in_chans"] = channels
    model = _create(timm, arch, name, kwargs)
    # pretrained_cfg names the classifier of timm's own weights; where the model keeps it
    # elsewhere (a cfg out of date), ask the model itself and rebuild once with the count.
    key = _classifier_key(model)
    found = _size(state, key, 0) if key and not flags.get("num_classes") else None
    if found and found != getattr(model, "num_classes", found):
        kwargs["num_classes"] = found
        model = _create(timm, arch, name, kwargs)

    from timm.data import resolve_data_config
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    meta = dict(timm_name=name, pretrained_tag=pcfg.get("tag"),
                num_classes=getattr(model, "num_classes", None),
                in_channels=channels or (cfg.input_size[0] if cfg and cfg.input_size else None),
                pretrained_cfg={k: plain(pcfg[k]) for k in _CFG_KEYS if k in pcfg},
                data_config={k: plain(v) for k, v in resolve_data_config({}, model=model).items()})
    return model, meta
