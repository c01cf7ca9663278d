"""Loading third-party checkpoints safely.

Files are always read with torch.load(weights_only=True): a checkpoint that needs arbitrary
Python objects is refused, never loaded with the unsafe pickle fallback. `.safetensors` files
(timm and Hugging Face's format: tensors only, nothing to unpickle) are read with
safetensors.torch.load_file. Training wrappers are peeled off: a {"state_dict": ...} or
{"model": ...} entry is unwrapped (one level) and the "module." prefix that DataParallel adds
to every key is stripped.
"""

import argparse
import contextlib
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

from pathens.errors import CheckpointError

_WRAPPER_KEYS = ("state_dict", "model")  # where training scripts usually keep the weights
_PREFIX = "module."
_SHOW = 5  # how many keys of each kind an error message names

_RESAVE = "re-save the weights alone with torch.save(model.state_dict(), path) where the model is defined"
_CIFAR_HINT = ("build the model with the architecture the checkpoint was trained with "
               "(depth, width, shortcut, norm, preact)")

# The one class the safe unpickler is allowed to build beyond its own: timm's train.py saves
# its argparse.Namespace of arguments beside the weights ({"state_dict", "args", ...}). A
# Namespace only holds attributes (whose values the safe unpickler still restricts to plain
# types) and runs no code when rebuilt, so allowing it keeps the loader safe.
_SAFE_CLASSES = [argparse.Namespace]

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _one_line(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(obj):
    """'a list', 'an int', ... for error messages."""
    name = type(obj).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _read(path):
    """torch.load(weights_only=True), with every failure turned into a one-line CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path (absolute: {path.absolute()})")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file: pass the checkpoint file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file: pass a file written by torch.save")
    head = _head(path)
    if head.startswith(_LFS_POINTER):
        raise CheckpointError(f"checkpoint {path} is a Git LFS pointer (a small text file naming the weights), "
                              f"not the weights: fetch them with `git lfs pull` in its repository, or "
                              f"download the file itself")
    if path.suffix == ".safetensors" or _is_safetensors(head, path):
        return _read_safetensors(path)
    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with safe(_SAFE_CLASSES) if safe else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler wraps its reason; the original error is the clean one.
        reason = e.__context__ if isinstance(e.__context__, pickle.UnpicklingError) else e
        found = re.search(r"GLOBAL\s+([\w.]+)", str(reason))
        if found or "global" in str(reason).lower():
            what = f" (it needs {found.group(1)})" if found else ""
            raise CheckpointError(
                f"checkpoint {path} was refused as unsafe: it contains arbitrary Python objects{what}, "
                f"which torch.load(weights_only=True) will not unpickle, and pathens never falls back "
                f"to unsafe loading; {_RESAVE}") from None
        raise CheckpointError(
            f"checkpoint {path} could not be read by the safe loader torch.load(weights_only=True) "
            f"({_one_line(reason, 80)}): it is corrupt, not written by torch.save, or holds objects "
            f"the safe loader refuses as unsafe (pathens never falls back to unsafe loading); {_RESAVE}") from None
    except PermissionError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror}): check its permissions") from None
    except Exception as e:  # noqa: BLE001 - torch.load on arbitrary bytes raises many kinds of error
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint (torch.load failed with "
            f"{type(e).__name__}: {_one_line(e, 80) or 'no message'}): pass a file written by torch.save, "
            f"e.g. torch.save(model.state_dict(), path)") from None


def _head(path, size=64):
    """The file's first bytes ("" if it cannot be read: torch.load then says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _is_safetensors(head, path):
    """A safetensors file under another name: an 8-byte little-endian header length, then the
    header's JSON ("{"), the header within the file. A torch.save zip starts with "PK", a
    legacy pickle with 0x80, neither of which passes."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def _read_safetensors(path):
    """safetensors.torch.load_file (tensors only, no pickle), failures as one-line errors."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"checkpoint {path} is a safetensors file, and reading it needs the "
                              f"safetensors package: pip install safetensors "
                              f"(or pip install 'pathens[hf]')") from None
    try:
        return load_file(str(path), device="cpu")
    except PermissionError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror}): check its permissions") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, and others
        raise CheckpointError(
            f"checkpoint {path} is not a valid safetensors file ({type(e).__name__}: "
            f"{_one_line(e, 80) or 'no message'}): it is corrupt or truncated; download it again, "
            f"or save it with safetensors.torch.save_file(model.state_dict(), path)") from None


def _clean(obj, source):
    """Unwrap one {"state_dict"/"model": ...} level, check name -> tensor, strip "module."."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds {_kind(obj)}, not a state dict (a mapping of parameter name -> tensor): "
            f"save model.state_dict() instead")
    if not obj:
        raise CheckpointError(f"{source} holds an empty mapping, no weights: save model.state_dict() instead")
    out = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source} has a key {key!r} that is {_kind(key)}, not a parameter name: "
                                  f"save model.state_dict() instead")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source} maps {key!r} to {_kind(value)}, not a tensor: "
                                  f"keep only tensors, e.g. save model.state_dict()")
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        if name in out:
            raise CheckpointError(f"{source} has both {name!r} and {_PREFIX + name!r}: "
                                  f"remove one copy before loading")
        out[name] = value
    return out


def load_state_dict(path):
    """Read a checkpoint file safely and return its state dict: an OrderedDict name -> tensor,
    on the CPU, with one {"state_dict": ...} or {"model": ...} wrapper removed and leading
    "module." prefixes stripped. A torch.save file is read with torch.load(weights_only=True)
    (timm's training checkpoints, which also hold an argparse.Namespace of arguments, too); a
    .safetensors file (or a file in that format under another name) with safetensors. Raises
    CheckpointError (one line) if that is not possible."""
    path = Path(os.fspath(path))
    return _clean(_read(path), f"checkpoint {path}")


def _keys(names):
    names = list(names)
    shown = ", ".join(names[:_SHOW]) + (", ..." if len(names) > _SHOW else "")
    return f"{len(names)} ({shown})" if names else "0"


def _tied(own, missing, present):
    """The missing keys that name the same tensor as a key the checkpoint has (tied weights: a
    language model's output layer is its input embedding, and Hugging Face's save_pretrained
    writes it once): loading the present key fills them."""
    by_storage = {}
    for key in present:
        t = own[key]
        if t.numel():
            by_storage.setdefault((t.data_ptr(), tuple(t.shape), t.stride()), key)
    return [k for k in missing if own[k].numel()
            and (own[k].data_ptr(), tuple(own[k].shape), own[k].stride()) in by_storage]


def load_weights(model, state_dict_or_path, *, strict=True, hint=None):
    """Load a state dict (or a checkpoint file, read with load_state_dict) into model and return
    the model. Tensors are cast to the dtype and device of the model's own.

    strict=True: the keys must match exactly, except num_batches_tracked buffers missing from
    the checkpoint (older checkpoints lack them; the model keeps its own) and tied weights
    written once (a key missing whose tensor is the same as one the checkpoint has). strict=False:
    missing and unexpected keys are allowed. A shape mismatch is an error either way. Errors are
    one-line CheckpointErrors listing missing keys, unexpected keys and shape mismatches with
    counts, ending with hint (what to do; default: build the CIFAR ResNet the checkpoint was
    trained with)."""
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = f"checkpoint {Path(os.fspath(state_dict_or_path))}"
        state_dict = load_state_dict(state_dict_or_path)
    else:
        source = "checkpoint"
        state_dict = _clean(state_dict_or_path, "the state dict")

    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    tied = set(_tied(own, missing, [k for k in state_dict if k in own]))
    missing = [k for k in missing if k not in tied]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: missing keys {_keys(missing)}; "
            f"unexpected keys {_keys(unexpected)}; shape mismatches {_keys(mismatched)}; "
            f"{hint or _CIFAR_HINT}")

    _check_dtypes(source, state_dict, own)
    cast = {k: v.to(device=own[k].device, dtype=own[k].dtype) for k, v in state_dict.items() if k in own}
    model.load_state_dict(cast, strict=False)  # the checks above are the strict ones
    return model


def _check_dtypes(source, state_dict, own) -> None:
    """Refuse a checkpoint tensor that casting would corrupt: an integer, bool or complex tensor
    for a floating-point parameter or buffer (a cast rounds nothing back: bool weights are 0/1,
    int8 ones lack their quantisation scales, complex ones lose their imaginary part)."""
    for k, v in state_dict.items():
        if k in own and own[k].is_floating_point() and not v.is_floating_point():
            raise CheckpointError(
                f"{source}: the tensor {k!r} is {str(v.dtype).replace('torch.', '')} but the "
                f"model's is {str(own[k].dtype).replace('torch.', '')}: pathens does not cast "
                f"non-float weights into a float model (quantised, or written wrongly?); save "
                f"the weights in floating point")


# --- checkpoints that carry their metadata -------------------------------------------------

# 2: adds "builder" (which pathens builder "arch" holds the arguments of), "steps", "loss" and
# "data"; a format-1 checkpoint (no "builder") is a CIFAR ResNet and still loads.
CHECKPOINT_FORMAT = 2
_PLAIN = (type(None), bool, int, float, str)

# The arguments a checkpoint must record to rebuild each builder's network: each changes the
# network, mostly its state-dict keys or shapes, but some keep the keys (cifar_resnet's
# skip=False, gpt's heads and norm="rezero" vs "none" aside), so a default would load silently
# into the wrong network. The initial alphas (alpha_init) and dropout are not needed: the
# trained alphas are among the weights and dropout is off in every analysis.
_ARCH_ARGS = ("depth", "norm", "shortcut", "preact", "skip", "width", "num_classes", "in_channels")
_GPT_ARGS = ("depth", "width", "heads", "context", "vocab_size", "norm", "mlp_ratio")

# builder name -> (module, model class, builder function, required arguments)
BUILDERS = {
    "cifar_resnet": ("pathens.models", "CifarResNet", "cifar_resnet", _ARCH_ARGS),
    "gpt": ("pathens.transformer", "GPT", "gpt", _GPT_ARGS),
}


def _builder(name):
    """(model class, builder function, required arguments) of a BUILDERS entry."""
    import importlib
    module, cls, fn, required = BUILDERS[name]
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, fn), required


def builder_of(model) -> str:
    """The BUILDERS name of a pathens model, or a CheckpointError for any other model."""
    for name in BUILDERS:
        if isinstance(model, _builder(name)[0]) and isinstance(getattr(model, "config", None), dict):
            return name
    raise CheckpointError(f"save_checkpoint needs a pathens model built by {' or '.join(BUILDERS)} "
                          f"(it has .config, the arguments that rebuild it); {type(model).__name__} "
                          f"is not one: save its state_dict with torch.save instead")


def _check_plain(obj, where):
    """Only what torch.load(weights_only=True) reads back: None, bool, int, float, str, tensors,
    and lists / tuples / dicts (with str keys) of them."""
    # exact types: a float or str subclass (np.float64, torch's TorchVersion) pickles as its class
    if type(obj) in _PLAIN or isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(obj) is dict:
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where} has a key {k!r} that is {_kind(k)}: keys must be strings")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(f"{where} is {_kind(obj)}: checkpoint metadata may hold only None, bool, int, "
                          f"float, str, tensors and lists / dicts of them")


def _number(value, what):
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{what} must be a number or None, got {_kind(value)}") from None


def save_checkpoint(path, model, *, dataset, seed, epochs=None, accuracy=None, normalize=None,
                    extra=None, steps=None, loss=None, data=None):
    """Write {"state_dict": ..., "pathens": metadata} to path, atomically (a temporary file, read
    back with torch.load(weights_only=True), then renamed over path), and return the path.

    model: built by a pathens builder (cifar_resnet or gpt: it carries .config). The metadata:
    format, builder ("cifar_resnet" or "gpt"), arch (model.config: the builder's arguments),
    dataset (its name, e.g. "digits" or "text"), data (a dict describing the data, e.g. a
    text corpus's description: source, files, sha256, tokenizer), normalize (default: the
    dataset's preset, None for an unknown dataset name), seed, epochs and/or steps, accuracy
    and loss (on the test split; None if not measured), pathens_version, torch_version, and
    extra (a dict of plain values, e.g. the command) if given. Only tensors and plain Python
    values are stored, so pathens.checkpoints.load(path) and torch.load(path,
    weights_only=True) both read it."""
    from pathens.data import DATASETS
    from pathens.version import __version__

    builder = builder_of(model)
    if normalize is None and isinstance(dataset, str) and dataset in DATASETS:
        normalize = DATASETS[dataset].normalize
    meta = {"format": CHECKPOINT_FORMAT, "builder": builder, "arch": dict(model.config),
            "dataset": dataset, "normalize": normalize, "seed": seed, "epochs": epochs,
            "steps": steps, "accuracy": _number(accuracy, "accuracy"), "loss": _number(loss, "loss"),
            "pathens_version": str(__version__), "torch_version": str(torch.__version__)}
    for name, value in (("data", data), ("extra", extra)):
        if value is not None:
            if not isinstance(value, dict):
                raise CheckpointError(f"{name} must be a dict of plain values, got {_kind(value)}")
            meta[name] = value
    _check_plain(meta, "metadata")
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}

    path = Path(os.fspath(path))
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a directory: pass a file name, e.g. {path / 'model.pt'}")
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write checkpoint {path}: the folder {path.parent} does not exist "
                              f"(or is a file): create the folder first")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save({"state_dict": state, "pathens": meta}, tmp)
        try:
            torch.load(tmp, map_location="cpu", weights_only=True)  # what every reader will do
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"checkpoint {path} was not written: torch.load(weights_only=True) could not "
                                  f"read it back ({_one_line(e, 120)})") from None
        os.replace(tmp, path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.save reports a bad path as RuntimeError, a full disk as OSError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e, 120)
        raise CheckpointError(f"cannot write checkpoint {path} ({reason}): check that its folder exists, "
                              f"is writable and has space") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path, *, device="cpu"):
    """(model, meta) from a checkpoint written by save_checkpoint: the model is rebuilt with its
    builder (meta["builder"]: cifar_resnet, the only one of format-1 checkpoints, or gpt) from
    meta["arch"], its weights loaded strictly, moved to device, in eval mode; meta is the
    checkpoint's "pathens" metadata dict. A checkpoint without that metadata (a third-party
    state dict), or whose "arch" lacks any argument the builder needs (all but alpha_init,
    which then defaults to 0, the trained alpha being in the weights, and gpt's dropout),
    raises a CheckpointError naming what is missing: for those, pass the architecture yourself
    (--arch and its flags on the command line, or the builder + load_weights)."""
    from pathens.version import __version__

    path = Path(os.fspath(path))
    obj = _read(path)
    hint = ("pass the architecture yourself (--arch, e.g. --arch resnet56, on the command line; "
            "in Python build the model and call load_weights)")
    if not isinstance(obj, Mapping) or "pathens" not in obj:
        raise CheckpointError(f"checkpoint {path} carries no pathens metadata, so the architecture argument "
                              f"'arch' is missing (it was not written by pathens.save_checkpoint): {hint}")
    meta = obj["pathens"]
    builder = meta.get("builder", "cifar_resnet") if isinstance(meta, Mapping) else None
    if builder not in BUILDERS:
        raise CheckpointError(f"checkpoint {path} was written for the builder {builder!r}, which this "
                              f"pathens ({__version__}) does not have (it has "
                              f"{', '.join(BUILDERS)}): upgrade pathens, or {hint}")
    _, build, required = _builder(builder)
    arch = meta.get("arch")
    if not isinstance(arch, Mapping):
        raise CheckpointError(f"checkpoint {path}: its pathens metadata lacks the architecture argument "
                              f"'arch' (the {builder} arguments): {hint}")
    missing = [name for name in required if name not in arch]
    if missing:
        raise CheckpointError(f"checkpoint {path}: its architecture lacks the argument{'s' * (len(missing) > 1)} "
                              f"{', '.join(map(repr, missing))} (a default might build another network): {hint}")
    try:
        model = build(**arch)
    except TypeError as e:  # an argument the builder does not know
        raise CheckpointError(f"checkpoint {path}: its architecture cannot be rebuilt ({_one_line(e, 120)}): "
                              f"it was written by another pathens version ({meta.get('pathens_version')}); "
                              f"{hint}") from None
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: its architecture cannot be rebuilt "
                              f"({_one_line(e, 120)}): {hint}") from None
    if "state_dict" not in obj:
        raise CheckpointError(f"checkpoint {path} has pathens metadata but no 'state_dict': it is damaged; re-save it")
    load_weights(model, obj["state_dict"])
    return model.to(device).eval(), dict(meta)
