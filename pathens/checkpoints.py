"""Loading third-party checkpoints safely.

Files are always read with torch.load(weights_only=True): a checkpoint that needs arbitrary
Python objects is refused, never loaded with the unsafe pickle fallback. Training wrappers are
peeled off: a {"state_dict": ...} or {"model": ...} entry is unwrapped (one level) and the
"module." prefix that DataParallel adds to every key is stripped.
"""

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
    try:
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
    "module." prefixes stripped. Raises CheckpointError (one line) if that is not possible."""
    path = Path(os.fspath(path))
    return _clean(_read(path), f"checkpoint {path}")


def _keys(names):
    names = list(names)
    shown = ", ".join(names[:_SHOW]) + (", ..." if len(names) > _SHOW else "")
    return f"{len(names)} ({shown})" if names else "0"


def load_weights(model, state_dict_or_path, *, strict=True):
    """Load a state dict (or a checkpoint file, read with load_state_dict) into model and return
    the model. Tensors are cast to the dtype and device of the model's own.

    strict=True: the keys must match exactly, except num_batches_tracked buffers missing from
    the checkpoint (older checkpoints lack them; the model keeps its own). strict=False: missing
    and unexpected keys are allowed. A shape mismatch is an error either way. Errors are one-line
    CheckpointErrors listing missing keys, unexpected keys and shape mismatches with counts."""
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        state_dict = load_state_dict(state_dict_or_path)
    else:
        state_dict = _clean(state_dict_or_path, "the state dict")

    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"checkpoint does not fit {type(model).__name__}: missing keys {_keys(missing)}; "
            f"unexpected keys {_keys(unexpected)}; shape mismatches {_keys(mismatched)}; "
            f"build the model with the architecture the checkpoint was trained with "
            f"(depth, width, shortcut, norm, preact)")

    cast = {k: v.to(device=own[k].device, dtype=own[k].dtype) for k, v in state_dict.items() if k in own}
    model.load_state_dict(cast, strict=False)  # the checks above are the strict ones
    return model
