"""A model from the user's own code: `FILE.py:FUNCTION` or `package.module:FUNCTION` (the
command line's --model), for networks no zoo name covers, e.g. built from a block class
pathens does not know, which the file teaches it:

    # mynet.py
    import pathens, torch.nn.functional as F
    from mylib import MyBlock, MyNet        # the file's folder is on sys.path

    pathens.register_block(MyBlock, lambda b: pathens.BlockParts(
        branch=lambda x: b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x))))), post=F.relu))

    def build():                            # called with no arguments
        return MyNet()                      # weights loaded here, or by load(spec, weights)

The file is imported by its path as a module of its own (a unique name, so two files called
model.py do not collide), with its folder first on sys.path while it is imported and while the
function runs (the neighbours it imports from there are not kept in sys.modules afterwards, so
another folder's neighbour of the same name is its own); importing it runs its
register_block / register_model calls. A file runs as
Python code with the user's rights: it is the user's own, named on their command line, never
a checkpoint's contents (checkpoints are only ever read as tensors)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from ..errors import PathensError
from . import weights as weights_mod
from .record import file_sha256, versions

_FORM = "FILE.py:FUNCTION or package.module:FUNCTION (the function that returns the model)"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return " ".join(lines[0].split())[:200] if lines else "no message"


def _where(err: BaseException, path) -> str:
    """' (FILE line N)': the last line of the user's file the exception passed through."""
    if isinstance(err, SyntaxError) and err.lineno:
        return f" (line {err.lineno})"
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if path is None or Path(f.filename).resolve() == path]
    return f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""


def parse(spec: str) -> tuple[str, str]:
    """(FILE or module, FUNCTION) of a spec."""
    if not isinstance(spec, str) or ":" not in spec:
        raise PathensError(f"model spec {spec!r} has no ':FUNCTION': use {_FORM}")
    target, _, function = spec.rpartition(":")  # rpartition: a Windows drive's colon stays left
    if not target or not function.isidentifier():
        what = (f"the function name {function!r} is not a Python name" if target else
                "no file or module before the colon")
        raise PathensError(f"model spec {spec!r}: {what}: use {_FORM}")
    return target, function


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target or Path(target).is_file()


@contextmanager
def _on_path(folder):
    """folder first on sys.path (so the file imports its neighbours), then as it was; and the
    neighbours it imported from folder forgotten again (sys.modules), so that another model
    folder's blocks.py is imported as its own, not found as this one's."""
    if folder is None:
        yield
        return
    before, added = set(sys.modules), str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        if added and str(folder) in sys.path:
            sys.path.remove(str(folder))
        for name in set(sys.modules) - before:
            file = getattr(sys.modules.get(name), "__file__", None)
            if file and not name.startswith("pathens_user_") and Path(file).resolve().is_relative_to(folder):
                del sys.modules[name]


def _module_name(path: Path) -> str:
    """A unique module name for a file: its stem plus a hash of its full path."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    return f"pathens_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"


def _import_file(spec: str, path: Path):
    if not path.exists():
        raise PathensError(f"model file {path} does not exist (from {spec!r}): check the path "
                           f"(absolute: {path.absolute()})")
    if not path.is_file() or path.suffix != ".py":
        raise PathensError(f"model file {path} is not a Python file (.py): use {_FORM}")
    name = _module_name(path)
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # as import does: classes in it can be found by their module
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - whatever the user's code raises on import
        sys.modules.pop(name, None)
        raise PathensError(f"model file {path}: importing it raised {type(err).__name__}: "
                           f"{_first_line(err)}{_where(err, path)}: fix the file") from None
    return module


def _import_module(spec: str, target: str):
    if not all(part.isidentifier() for part in target.split(".")):
        raise PathensError(f"model spec {spec!r}: {target!r} is neither a .py file nor a module "
                           f"name: use {_FORM}")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and (target == err.name or target.startswith(err.name + ".")):
            raise PathensError(f"model spec {spec!r}: no module named {err.name!r} on sys.path: "
                               f"install it, run from the folder that holds it, or pass its file "
                               f"path (FILE.py:FUNCTION)") from None
        raise PathensError(f"model module {target}: importing it raised ModuleNotFoundError: "
                           f"{_first_line(err)}{_where(err, None)}") from None
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the module's own failure
        raise PathensError(f"model module {target}: importing it raised {type(err).__name__}: "
                           f"{_first_line(err)}{_where(err, None)}: fix the module") from None


def load(spec: str, weights=None):
    """(model in eval mode, meta) from the user's function: spec `FILE.py:FUNCTION` or
    `package.module:FUNCTION`; the function is called with no arguments and must return an
    nn.Module. weights (a checkpoint path or a state dict), if given, are loaded into that
    model strictly (pathens.checkpoints.load_weights: every key, every shape).

    meta: model (the spec), source "user", file (absolute path; None for a module), file_sha256,
    module, function, class (the model's class), weights / weights_sha256 / weights_from
    ("file", "state dict" or "function": the weights are whatever the function gave it),
    versions. Every failure is a one-line PathensError: a missing file or ':FUNCTION', a file
    that raises on import (its exception's type, first line and line number), a missing
    function, one that raises, a return value that is not an nn.Module, weights that do not fit."""
    target, function = parse(spec)
    path = Path(target).expanduser().resolve() if _is_file(target) else None
    with _on_path(path.parent if path else None):
        module = _import_file(spec, path) if path else _import_module(spec, target)
        where = f"model file {path}" if path else f"model module {target}"
        fn = getattr(module, function, None)
        if fn is None:
            have = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                          and getattr(v, "__module__", None) == module.__name__)
            raise PathensError(f"{where} defines no {function!r} (its functions and classes: "
                               f"{', '.join(have[:8]) or 'none'}): name the function that returns "
                               f"the model after the colon")
        if not callable(fn):
            raise PathensError(f"{where}: {function} is {type(fn).__name__}, not a function: name "
                               f"the function that returns the model")
        try:
            model = fn()
        except (Exception, SystemExit) as err:  # noqa: BLE001 - the user's function
            raise PathensError(f"{where}: {function}() raised {type(err).__name__}: "
                               f"{_first_line(err)}{_where(err, path)} (it is called with no "
                               f"arguments)") from None
    if not isinstance(model, nn.Module):
        kind = type(model).__name__
        tuple_hint = " (a tuple: return the model alone)" if isinstance(model, tuple) else ""
        raise PathensError(f"{where}: {function}() returned {'an' if kind[:1].lower() in 'aeiou' else 'a'} "
                           f"{kind}, not a torch.nn.Module{tuple_hint}: make it return the model")
    meta_device = next((n for n, t in [*model.named_parameters(), *model.named_buffers()]
                        if t.device.type == "meta"), None)
    if meta_device is not None:  # .to(device) would fail with "Cannot copy out of meta tensor"
        raise PathensError(f"{where}: {function}() returned a model on the meta device (shapes, "
                           f"no values: {meta_device} first): make it build the model on the "
                           f"CPU (e.g. model.to_empty(device='cpu') and load its weights, or "
                           f"load_state_dict(..., assign=True))")
    if weights is not None:
        state, info = weights_mod.read(weights)
        weights_mod.load(model, state, what=f"{spec} ({info['weights'] or 'the state dict given'})",
                         hint=f"make {function}() build the network the weights were saved from")
    else:
        info = dict(weights=None, weights_sha256=None, weights_from="function")
    meta = dict(model=spec, source="user", file=str(path) if path else None,
                file_sha256=file_sha256(path) if path else None, module=module.__name__,
                function=function, **{"class": type(model).__name__}, **info,
                versions=versions())
    meta.pop("random_init", None)  # not known: the function may have loaded weights itself
    return model.eval(), meta
