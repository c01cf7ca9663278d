"""A model's inputs, whatever they are: an image batch (N, C, H, W), token ids (N, T), or a
dict of tensors (Hugging Face style: input_ids, attention_mask, ...). Every function here
treats them alike: the batch is the first dimension of every tensor."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import PathensError

Inputs = Any  # a tensor, or a dict of name -> tensor


def tensors(inputs: Inputs) -> list:
    return list(inputs.values()) if isinstance(inputs, dict) else [inputs]


def main_tensor(inputs: Inputs) -> torch.Tensor:
    """The tensor that says what the examples are: the inputs, or a dict's input_ids /
    pixel_values / first entry."""
    if not isinstance(inputs, dict):
        return inputs
    for key in ("input_ids", "pixel_values", "inputs_embeds"):
        if key in inputs:
            return inputs[key]
    return next(iter(inputs.values()))


def batch_len(inputs: Inputs) -> int:
    return len(main_tensor(inputs))


def take(inputs: Inputs, index) -> Inputs:
    """The examples at `index` (a slice or an index tensor) of every tensor."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def concat(batches: list) -> Inputs:
    if isinstance(batches[0], dict):
        return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    return torch.cat(batches)


def to_model(inputs: Inputs, param: torch.Tensor) -> Inputs:
    """Inputs on the model's device; floating tensors in its dtype (token ids and masks keep
    theirs)."""
    def move(t):
        if not torch.is_tensor(t):
            raise PathensError(f"inputs must be tensors (or a dict of tensors), got "
                               f"{type(t).__name__}")
        if t.is_floating_point():
            return t.to(device=param.device, dtype=param.dtype)
        return t.to(device=param.device)
    if isinstance(inputs, dict):
        return {k: move(v) for k, v in inputs.items()}
    return move(inputs)


def is_tokens(inputs: Inputs) -> bool:
    t = main_tensor(inputs)
    return torch.is_tensor(t) and not t.is_floating_point() and not t.is_complex()


def check_finite(inputs: Inputs, what: str = "inputs") -> None:
    for t in tensors(inputs):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise PathensError(f"{what} contain NaN or infinite values")


def call_model(model, inputs: Inputs):
    """model(**inputs) for a dict, else model(inputs)."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, a tuple's first entry, or an output
    object's .logits (Hugging Face)."""
    if torch.is_tensor(output):
        return output
    logits = getattr(output, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    if isinstance(output, dict) and torch.is_tensor(output.get("logits")):
        return output["logits"]
    raise PathensError(f"the model returns {describe(output)}, with no logits pathens can find "
                       f"(a tensor, a tuple whose first entry is one, or an object with .logits)")


def describe(x) -> str:
    if torch.is_tensor(x):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, dict):
        return "a dict of " + ", ".join(f"{k} {describe(v)}" for k, v in x.items())
    return f"a {type(x).__name__}"
