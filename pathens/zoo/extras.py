"""The optional libraries the zoo builds models with, each from a pip extra of pathens: when
one is missing, a one-line error says which extra to install (pathens itself needs none)."""
from __future__ import annotations

import importlib

from ..errors import PathensError

# library -> what to install for it (timm also brings safetensors; the hf extra includes it)
EXTRAS = {
    "timm": "pip install 'pathens[timm]'",
    "transformers": "pip install 'pathens[hf]'",
    "safetensors": "pip install 'pathens[hf]' (or pip install safetensors)",
    "torchvision": "pip install torchvision",
}


def require(library: str, what: str):
    """import library, or a PathensError: `what` (e.g. '--arch timm:resnet50') needs it."""
    try:
        return importlib.import_module(library)
    except ImportError as err:
        # A library that is installed but fails to import (a broken or mismatched install)
        # says why; a plain absence does not need to.
        absent = isinstance(err, ModuleNotFoundError) and err.name == library or \
            f"import of {library} halted" in str(err)
        why = "" if absent else f" (importing it failed: {' '.join(str(err).split())[:120]})"
        raise PathensError(f"{what} needs {library}, which is not installed{why}: "
                           f"{EXTRAS.get(library, f'pip install {library}')}") from None
