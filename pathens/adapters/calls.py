"""How a block module is called: its residual stream and its other arguments by name, and the
signal that stops a model's forward at a block (a captured stem runs the model only up to its
first block). Shared by the view (tracing, proof) and the adapters that capture a stem.
"""
from __future__ import annotations

import inspect

from torch import nn


class Reached(BaseException):
    """Raised by the hook on the first block: stops the forward there. A BaseException, so
    that no `except Exception` in the model's own code swallows it."""

    def __init__(self, h, ctx):
        self.h, self.ctx = h, ctx


def block_call(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """(stream, other arguments by name) of a call module(*args, **kwargs): the stream is the
    first argument of its forward, the rest are bound to their names (**kwargs flattened)."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):  # a signature inspect cannot read: positional stream
        return (args[0] if args else next(iter(kwargs.values()))), dict(kwargs)
    params = inspect.signature(module.forward).parameters
    named = {}
    for name, value in bound.arguments.items():
        if params[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif params[name].kind is not inspect.Parameter.VAR_POSITIONAL:
            named[name] = value
    first = next(iter(bound.arguments))
    return named.pop(first), named
