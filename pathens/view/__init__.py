"""How a network is seen: `wrap(model)` -> a ResidualView, stem -> blocks -> head, each Block
`post(shortcut(x) + scale * branch(x))` (block.py), cut from the model by its adapters or by
torch.fx (tracing.py) and proved on a probe input to reproduce the model (proof.py).
"""
from .block import Block
from .residual_view import UNITS, ResidualView, Unit, wrap

__all__ = ["Block", "ResidualView", "Unit", "UNITS", "wrap"]
