"""Hugging Face model folders, hf:DIR: what save_pretrained writes (config.json and
model.safetensors, or pytorch_model.bin, or either sharded with an .index.json), read from the
folder alone -- nothing is downloaded and no code in the folder is run.

The network is built from the config (AutoConfig.from_pretrained(dir, local_files_only=True))
as the class config.json's `architectures` names (a class of transformers itself: a folder's
custom code is never imported), then its weights are loaded strictly by pathens (every key,
every shape), not by from_pretrained, which would initialise a missing classifier at random
with only a warning. The conventions of Hugging Face files are applied, and recorded in meta:
tied weights written once (GPT-2's lm_head is its wte), a base-model file loaded into a model
with a head (keys without the `transformer.` prefix: the hub's gpt2 file), the keys the class
declares ignorable (_keys_to_ignore_on_load_unexpected / _missing: GPT-2's old attn.bias
buffers) and the LayerNorm gamma / beta names of old BERT files."""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

from ..models import checkpoints
from ..errors import CheckpointError, PathensError
from . import weights as weights_mod
from .extras import require
from .record import file_sha256

# in the order save_pretrained prefers them
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                    "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
# what of an image processor's config the eval transform depends on
_PREPROCESSOR_KEYS = ("size", "crop_size", "crop_pct", "resample", "do_resize", "do_center_crop",
                      "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
_MOVED = "define the model in a file and load it with --model FILE.py:FUNCTION (pathens.user_model)"


def _one_line(text, limit=160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _folder(arch: str, folder: str) -> Path:
    path = Path(folder).expanduser()
    if not folder:
        raise PathensError("hf: needs a folder: hf:DIR, DIR holding config.json and model.safetensors")
    if not path.exists():
        raise PathensError(f"{arch}: no such folder {path} (pathens reads local folders only, nothing "
                           f"is downloaded): download it first, e.g. `huggingface-cli download "
                           f"microsoft/resnet-50 --local-dir DIR`, then pass hf:DIR")
    if not path.is_dir():
        raise PathensError(f"{arch}: {path} is a file, not a folder: pass the folder that holds "
                           f"config.json and the weights")
    if not (path / "config.json").is_file():
        raise PathensError(f"{arch}: {path} has no config.json, so it is not a Hugging Face model "
                           f"folder: pass the folder save_pretrained wrote (config.json + "
                           f"model.safetensors)")
    return path


def _config(transformers, arch: str, path: Path):
    """The folder's config, via AutoConfig (offline), after checking it is JSON at all."""
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PathensError(f"{arch}: {path / 'config.json'} cannot be read as JSON "
                           f"({_one_line(err, 100)}): save the model again with save_pretrained") from None
    if not isinstance(raw, dict):
        raise PathensError(f"{arch}: {path / 'config.json'} holds a JSON {type(raw).__name__}, not an "
                           f"object: save the model again with save_pretrained")
    try:
        # trust_remote_code=False: a folder naming its own code (auto_map) is refused, never run,
        # and never asked about on a terminal
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True,
                                                       trust_remote_code=False), raw
    except Exception as err:  # noqa: BLE001 - unknown model_type, custom code, ... (ValueError, OSError, KeyError)
        custom = " (it needs the folder's own code, which pathens never runs: " + _MOVED + ")" \
            if "auto_map" in raw else ""
        raise PathensError(f"{arch}: transformers {transformers.__version__} cannot read its config.json "
                           f"(model_type {raw.get('model_type')!r}; {type(err).__name__}: "
                           f"{_one_line(err, 120)}){custom}") from None


def _model_class(transformers, arch: str, config, raw: dict):
    """The class config.json names, if transformers has it and pathens can wrap it."""
    from .. import adapters
    names = getattr(config, "architectures", None) or []
    if not names:
        raise PathensError(f"{arch}: config.json names no model class (its 'architectures' list is "
                           f"empty or absent): add it, e.g. \"architectures\": "
                           f"[\"ResNetForImageClassification\"]")
    name = names[0]
    cls = getattr(transformers, name, None)
    if not isinstance(cls, type):
        custom = " (custom code, which pathens never runs)" if "auto_map" in raw else ""
        raise PathensError(f"{arch}: config.json's architecture {name} is not a class of transformers "
                           f"{transformers.__version__}{custom}: upgrade transformers, or {_MOVED}")
    # Hugging Face models cannot be traced by torch.fx: pathens wraps only the classes a model
    # adapter names (their family files load on this lookup).
    if adapters.model_adapter_class(cls) is None:
        known = sorted(c.__name__ for c in adapters.model_classes()
                       if c.__module__.startswith("transformers"))
        raise PathensError(f"{arch}: pathens cannot wrap {name} (it wraps {', '.join(known)}): teach it "
                           f"the class with pathens.register_model (its blocks and head) and "
                           f"pathens.register_block (each block's branch) in a file, and load it with "
                           f"--model FILE.py:FUNCTION")
    return cls


def _sharded(arch: str, index: Path):
    """(state, info) of a sharded checkpoint: every shard its .index.json's weight_map names."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{arch}: {index} is not a shard index (a JSON object with a "
                              f"'weight_map' of key -> shard file): {_one_line(err, 80)}") from None
    state, hashes = OrderedDict(), {}
    for shard in shards:
        part = checkpoints.load_state_dict(index.parent / shard)
        twice = next((k for k in part if k in state), None)
        if twice:
            raise CheckpointError(f"{arch}: the key {twice!r} is in two shards (the second: {shard}): "
                                  f"the folder is damaged; save it again")
        state.update(part)
        hashes[shard] = file_sha256(index.parent / shard)
    return state, dict(weights=str(index.absolute()), weights_sha256=file_sha256(index),
                       weights_shards=hashes, weights_from="file", random_init=False)


def _folder_weights(arch: str, path: Path, weights):
    """The weights given, else the folder's own (a folder without weights is an error: a
    partial download is far likelier than a wish for random weights)."""
    if weights is not None:
        return weights_mod.read(weights)
    for name in _WEIGHT_FILES:
        if (path / name).is_file():
            if name.endswith(".index.json"):
                return _sharded(arch, path / name)
            return weights_mod.read(path / name)
    raise CheckpointError(f"{arch}: {path} has config.json but no weights ({' or '.join(_WEIGHT_FILES[::2])}): "
                          f"save the model with save_pretrained, or finish the download")


def _matches(key: str, patterns) -> bool:
    return any(re.search(p, key) for p in patterns or ())


def adapt(model, state: dict) -> tuple[dict, dict]:
    """(state with Hugging Face's file conventions applied to model's keys, what was done)."""
    own, done = model.state_dict(), {}
    prefix = f"{getattr(model, 'base_model_prefix', '') or ''}."
    if prefix != "." and not any(k.startswith(prefix) for k in state) \
            and any(prefix + k in own for k in state):  # a base model's file into model + head
        state = OrderedDict((prefix + k if prefix + k in own else k, v) for k, v in state.items())
        done["prefix_added"] = prefix
    renamed = OrderedDict()
    for k, v in state.items():  # old TF-converted files: LayerNorm.gamma / .beta
        new = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
        renamed[new if new != k and k not in own and new in own else k] = v
    if list(renamed) != list(state):
        done["renamed_gamma_beta"] = sum(a != b for a, b in zip(renamed, state))
    state = renamed
    ignored = [k for k in state if k not in own
               and _matches(k, getattr(model, "_keys_to_ignore_on_load_unexpected", None))]
    kept = [k for k in own if k not in state
            and _matches(k, getattr(model, "_keys_to_ignore_on_load_missing", None))]
    if ignored:
        done["ignored_unexpected"] = ignored
        state = OrderedDict((k, v) for k, v in state.items() if k not in ignored)
    if kept:  # the class says these may be absent: the model keeps its own
        done["kept_missing"] = kept
        state.update((k, own[k]) for k in kept)
    return state, done


def _preprocessor(path: Path):
    try:
        raw = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: raw[k] for k in _PREPROCESSOR_KEYS if k in raw} if isinstance(raw, dict) else None


def build(arch: str, folder: str, weights, flags: dict):
    """(model with its weights loaded, meta) for arch = hf:DIR (folder = DIR); weights, if
    given, replace the folder's own."""
    path = _folder(arch, folder)
    transformers = require("transformers", arch)
    config, raw = _config(transformers, arch, path)
    cls = _model_class(transformers, arch, config, raw)
    try:
        model = cls(config)
    except Exception as err:  # noqa: BLE001 - a config the class cannot build
        raise PathensError(f"{arch}: {cls.__name__} cannot be built from its config.json "
                           f"({type(err).__name__}: {_one_line(err, 120)})") from None
    state, info = _folder_weights(arch, path, weights)
    state, adapted = adapt(model, state)
    weights_mod.load(model, state, what=f"{arch} ({info['weights'] or 'the state dict given'})",
                     hint="the folder's config.json must describe the network its weights were "
                          "saved from (save both with save_pretrained)")
    classifier = "Classification" in cls.__name__
    meta = dict(hf_dir=str(path.absolute()), hf_class=cls.__name__,
                model_type=getattr(config, "model_type", None),
                num_classes=config.num_labels if classifier else None,
                vocab_size=getattr(config, "vocab_size", None) if not classifier else None,
                tokenizer=str(path.absolute()) if any((path / f).is_file() for f in _TOKENIZER_FILES)
                else None,
                preprocessor=_preprocessor(path), weights_adapted=adapted, **info)
    return model, meta
