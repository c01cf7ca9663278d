"""timm's DenseNet (models/densenet.py: densenet121 .. 264d): no additive shortcut at all, each
DenseLayer concatenates its output to the features it read. wrap refuses it with a message
that says so (and that allow_plain=True cannot lesion it)."""
from __future__ import annotations

from timm.models import densenet as dn

from .transitions import refuse_concatenating
from . import register_model


@register_model(dn.DenseNet, builtin=True)
def densenet(model):
    refuse_concatenating(model, "dense layers (timm DenseLayer)")
