"""Short content fingerprints (sha256) of data and models, recorded with a resumable sweep so
that it is continued only on the same examples and the same weights it started with."""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

_HASHED_VALUES = 1 << 22  # ~16 MB of float32: hashed in a few tens of milliseconds


def fingerprint_tensors(tensors: list) -> str:
    """A short sha256 of a list of tensors (e.g. calibration batches; dicts of tensors too), as
    for a pair of data."""
    h = hashlib.sha256()
    for t in tensors:
        hash_item(h, t)
    return h.hexdigest()[:16]


def hash_tensor(h, t: torch.Tensor):
    """Shape, dtype and values of t (2^22 evenly spread values of a larger one) into h."""
    t = t.detach()
    h.update(f"{tuple(t.shape)}:{t.dtype};".encode())
    flat = t.reshape(-1)
    if flat.numel() > _HASHED_VALUES:
        idx = np.linspace(0, flat.numel() - 1, _HASHED_VALUES).astype(np.int64)
        flat = flat[torch.from_numpy(idx).to(flat.device)]
    h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())  # bytes of any dtype


def hash_item(h, item):
    """A dataset item or batch: tensors / arrays / numbers, possibly nested in tuples and
    dicts (token ids with their attention mask)."""
    if isinstance(item, dict):
        h.update(f"{{{len(item)};".encode())
        for k in sorted(item):
            h.update(f"{k}=".encode())
            hash_item(h, item[k])
        h.update(b"}")
    elif isinstance(item, (tuple, list)):
        h.update(f"[{len(item)};".encode())
        for v in item:
            hash_item(h, v)
        h.update(b"]")
    elif torch.is_tensor(item):
        hash_tensor(h, item)
    elif isinstance(item, (np.ndarray, np.generic, int, float, bool)):
        hash_tensor(h, torch.as_tensor(np.asarray(item)))
    else:
        h.update(repr(item).encode())


def fingerprint_model(model: nn.Module) -> str:
    """A short hash of the model's state_dict (names, shapes, sums and absolute sums)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if torch.is_tensor(t):
            t = t.detach()
            s = t.double().sum().item() if t.numel() else 0.0
            a = t.double().abs().sum().item() if t.numel() else 0.0
            h.update(f"{name}:{tuple(t.shape)}:{s:.9g}:{a:.9g};".encode())
    return h.hexdigest()[:16]
