"""torchvision's DenseNet (models/densenet.py: densenet121 .. 201): no additive shortcut at all,
each _DenseLayer concatenates its output to the features it read. wrap refuses it with a
message that says so (and that allow_plain=True cannot lesion it), rather than the generic
"no residual blocks pathens knows"."""
from __future__ import annotations

from torchvision.models import densenet as tv

from .transitions import refuse_concatenating
from . import register_model


@register_model(tv.DenseNet, builtin=True)
def densenet(model):
    refuse_concatenating(model, "dense layers (torchvision _DenseLayer)")
