"""What a command measures, from its flags: the model (a pathens checkpoint, a third-party
architecture with --arch, or the user's own code with --model) and the data (a named dataset,
an .npz, an image folder streamed from disk, or text), each checked against the other before
anything is written (commands.py runs the commands).

    --model FILE.py:FUNCTION [CHECKPOINT]   the user's function builds the model (its file may
                                            register block and model adapters); weights from
                                            CHECKPOINT if given
    --arch NAME CHECKPOINT                  resnetD, torchvision.NAME, timm:NAME, hf:DIR
    CHECKPOINT                              a pathens checkpoint: it records its architecture
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models import checkpoints
from .. import distributed
from ..data.batches import Data, check_batch
from ..data.datasets import load_dataset, load_npz
from ..errors import PathensError
from ..data.inputs import batch_len, to_model
from ..data.rank_inputs import check_same_inputs
from ..models.train import check_device
from ..view.residual_view import wrap
from ..zoo import ARCH_FLAGS  # the flags that shape an --arch resnetD


def build_cifar(what: str, **kw) -> torch.nn.Module:
    """cifar_resnet(**kw), with a bad value (depth 57, width 0, ...) a one-line user error
    that starts with `what` (the flags that asked for it)."""
    from ..models.cifar import cifar_resnet
    try:
        return cifar_resnet(**kw)
    except ValueError as err:  # cifar_resnet's checks of its arguments; nothing else runs yet
        raise PathensError(f"{what}: the network cannot be built: {err}") from None


def flags(args) -> dict:
    """The ARCH_FLAGS the user gave (None / False dropped)."""
    given = {k: getattr(args, k, None) for k in ARCH_FLAGS}
    return {k: v for k, v in given.items() if v is not None and v is not False}


def load_model(args, checkpoint, device):
    """(model in eval mode on device, metadata dict) for one checkpoint (or None with
    --model), as the flags say."""
    from ..zoo import user_model
    from .. import zoo
    spec, arch, shaped = getattr(args, "model", None), getattr(args, "arch", None), flags(args)
    if spec and (arch or shaped):
        raise PathensError("--model builds the network itself: drop --arch and its flags")
    if spec:
        model, meta = user_model.load(spec, weights=checkpoint)
    elif arch:
        if checkpoint is None and not arch.startswith("hf:"):
            raise PathensError(f"--arch {arch} needs a CHECKPOINT with its weights (a hf:DIR "
                               f"folder holds its own; --model FILE.py:FUNCTION builds a model "
                               f"whose code loads them)")
        model, meta = zoo.build(arch, checkpoint, flags=shaped)
    elif shaped:
        name = next(iter(shaped)).replace("_", "-")
        raise PathensError(f"--{name} needs --arch: it shapes a third-party checkpoint's network "
                           f"(a pathens checkpoint records its own architecture)")
    elif checkpoint is None:
        raise PathensError("give a CHECKPOINT (a pathens checkpoint, or weights with --arch), or "
                           "--model FILE.py:FUNCTION")
    else:
        model, meta = checkpoints.load(checkpoint)
    return model.to(device).eval(), meta


def load_data(args, meta: dict, model=None):
    """(data, description): an (x, y) pair on the CPU, or a loader of batches streamed from
    disk (--data imagefolder), named by --data or the checkpoint's own dataset."""
    name = args.data or meta.get("dataset")
    if not name:
        raise PathensError("--data is needed: the checkpoint does not say which dataset it was "
                           "trained on (e.g. --data cifar10 --root DIR, --data imagefolder "
                           "--root DIR, --data text, or --data test.npz)")
    split = getattr(args, "split", "test")
    if split != "test" and (name == "imagefolder" or name.endswith(".npz")):
        folder = name == "imagefolder"
        raise PathensError(f"--split {split}: {'an image folder' if folder else 'an .npz file'} "
                           f"has no splits (it is one): point {'--root' if folder else '--data'} "
                           f"at the examples to measure, and drop --split")
    if name == "imagefolder":
        return _image_folder(args, model)
    if name == "text":
        return _text(args, meta, model, split)
    normalize = args.normalize or meta.get("normalize")
    if name.endswith(".npz"):
        return load_npz(name, normalize=normalize or "imagenet", limit=args.limit), dict(
            dataset=name, normalize=normalize or "imagenet")
    x, y = load_dataset(name, root=args.root, split=split, normalize=normalize,
                        limit=args.limit)
    return (x, y), dict(dataset=name, split=split, root=args.root,
                        normalize=normalize or "dataset default", examples=len(y))


def _image_folder(args, model):
    from ..data import imagefolder
    if not args.root:
        raise PathensError("--data imagefolder needs --root DIR: a folder with one subfolder of "
                           "images per class (the ImageNet-val layout)")
    loader = imagefolder.loader(args.root, model=model, image_size=args.image_size,
                                crop_pct=args.crop_pct, normalize=args.normalize,
                                limit=args.limit, seed=args.seed, skip_bad=args.skip_bad_images,
                                batch_size=args.batch_size or 64, workers=args.workers)
    return loader, dict(dataset="imagefolder", **loader.description)


def _text(args, meta, model, split):
    from ..data import text
    vocab = _vocab(model)
    if meta.get("source") == "hf" and not args.tokenizer and not meta.get("tokenizer") and \
            vocab not in (None, 256):
        raise PathensError(f"the Hugging Face folder {meta.get('hf_dir') or args.arch} has no "
                           f"tokenizer files (tokenizer.json, vocab.json + merges.txt, ...): "
                           f"its {vocab}-token vocabulary is not bytes; name the tokenizer it "
                           f"was trained with: --tokenizer hf:DIR (or --tokenizer bytes / chars "
                           f"if it really was)")
    corpus = text.checkpoint_corpus(meta.get("data") if isinstance(meta.get("data"), dict)
                                    else None, root=args.root,
                                    tokenizer=args.tokenizer or _hf_tokenizer(meta))
    arch = meta.get("arch") if isinstance(meta.get("arch"), dict) else {}
    seq_len = args.seq_len or arch.get("context") or _context(model) or 64
    if vocab:
        corpus.check_vocab(int(vocab))
    ids, _ = corpus.windows(split, seq_len=seq_len, limit=args.limit)
    d = corpus.description
    return (ids, ids), dict(dataset="text", split=split, seq_len=seq_len, windows=len(ids),
                            source=d.get("source"), root=d.get("root"), sha256=d.get("sha256"),
                            python=d.get("python"), tokenizer=d.get("tokenizer"))


def _hf_tokenizer(meta):
    """A Hugging Face folder's own tokenizer (--arch hf:DIR), as text.tokenizer_from takes it."""
    return f"hf:{meta['tokenizer']}" if meta.get("source") == "hf" and meta.get("tokenizer") \
        else None


def _context(model):
    """The longest sequence a language model takes, from its config (Hugging Face:
    max_position_embeddings, n_positions, n_ctx; pathens GPT: context), or None."""
    config = getattr(model, "config", None)
    for key in ("context", "max_position_embeddings", "n_positions", "n_ctx"):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
            return value
    return None


def _vocab(model):
    """The vocabulary a language model was built with (pathens GPT: config dict; Hugging Face:
    config object), or None."""
    config = getattr(model, "config", None)
    return config.get("vocab_size") if isinstance(config, dict) else \
        getattr(config, "vocab_size", None)


def wrap_on(model, data, *, residual: bool, what):
    """The view of model, probed with the first examples of the data (in the model's dtype and
    device), a failure on them said in terms of the command line. residual: the command
    measures paths, so a plain network (no shortcuts) is refused."""
    param = next(model.parameters(), None)
    if param is None:
        raise PathensError(f"{what} has no parameters: nothing to analyse")
    x = Data(None, data, None, labelled=False).first(2)  # as loaded: no view to check it yet
    probe = to_model(x, param)
    try:
        with torch.no_grad():
            model(**probe) if isinstance(probe, dict) else model(probe)
    except Exception as err:  # noqa: BLE001 - whatever the model raises on inputs it cannot take
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PathensError(f"{what} cannot run on the --data examples (shape "
                           f"{tuple(x.shape[1:])}): {reason}; check --data, --normalize, "
                           f"--arch / --model") from None
    view = wrap(model, example_input=probe, allow_plain=True)
    if residual and not view.residual:
        plain = [b.name for b in view.blocks if not b.residual]
        raise PathensError(f"{what} is a plain network (no shortcuts in {', '.join(plain[:3])}"
                           f"{'...' if len(plain) > 3 else ''}): it has no residual paths to "
                           f"measure; `pathens lesion` and `pathens reorder` accept it")
    return view


def check_data(view, data, examples: int = 1):
    """data checked against the view: a pair on the view's device (labels in range, finite
    values, enough examples, one at least per process); a loader as it is (each batch is
    checked as it streams; an image folder's labels here)."""
    if not isinstance(data, tuple):
        _check_folder_labels(view, data)
        return data
    x, y = data
    n = batch_len(x)
    if n < examples:
        raise PathensError(f"{n} example{'s' * (n != 1)}: this command needs at least "
                           f"{examples} (the branch variance is a variance across examples); "
                           f"raise --limit or use a larger --data")
    if n < distributed.world_size():
        raise PathensError(f"{n} examples cannot be shared among {distributed.world_size()} "
                           f"processes (torchrun's --nproc_per_node x --nnodes): each needs at "
                           f"least one; use fewer processes")
    return check_batch(view, x, y)


def _check_folder_labels(view, loader) -> None:
    """An image folder's labels (its class folders, known before any image is decoded) within
    the model's classes, so that a third class folder stops the run before it computes."""
    dataset = getattr(loader, "dataset", None)
    classes, samples = getattr(dataset, "classes", None), getattr(dataset, "samples", None)
    if view.loss != "classification" or not classes or not samples:
        return
    top = max(c for _, c in samples)
    if top >= view.num_outputs:
        raise PathensError(f"the image folder {dataset.root} has {len(classes)} class folders "
                           f"but the model has {view.num_outputs} classes: its folder "
                           f"{classes[top]!r} is class {top} (folders count in sorted order, "
                           f"from 0); keep one folder per class of the model")


def setup(args, *, residual: bool = False, examples: int = 1, checkpoint=None):
    """(view, data, model metadata, data description), every input checked: the device, the
    model, the data against it and the wrap; on every rank of a torchrun run, which all stop
    if any fails."""
    def step():
        device = check_device(args.device)
        path = checkpoint if checkpoint is not None else getattr(args, "checkpoint", None)
        model, meta = load_model(args, path, device)
        data, info = load_data(args, meta, model)
        what = path or getattr(args, "model", None) or args.arch
        view = wrap_on(model, data, residual=residual, what=what)
        return view, check_data(view, data, examples), meta, info
    view, data, meta, info = distributed.all_agree(step)
    check_same_inputs(view, data)  # the same argv may name files that differ between machines
    return view, data, meta, info


def recalibration(args, view, meta):
    """(the --recalibrate examples on the view's device, where they came from), or (None,
    None); checked (BatchNorm present, a calibration set that is not the evaluation set, data
    loads, N examples) before --out is touched. The examples: the first N of
    --calibration-data (an .npz; an image folder: a seeded subset over its classes, with the
    evaluation transform), else of the named dataset's train split. An .npz or an image folder
    given as --data has no train split: its first N would be the evaluation set itself, so
    --calibration-data is required."""
    n = args.recalibrate
    source = getattr(args, "calibration_data", None)
    if not n:
        if source is not None:
            raise PathensError("--calibration-data is for --recalibrate N: add it, or drop "
                               "--calibration-data")
        return None, None
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in view.model.modules()):
        raise PathensError("--recalibrate re-estimates BatchNorm statistics, but the model has "
                           "no BatchNorm layers: drop --recalibrate")
    import argparse
    name = args.data or meta.get("dataset")
    if source is None:
        if name == "imagefolder" or name.endswith(".npz"):
            raise PathensError(f"--recalibrate {n} needs training examples, but --data {name} "
                               f"has no train split (its first {n} examples would be the "
                               f"evaluation set itself): name them with --calibration-data "
                               f"(an .npz, or an image folder laid out as --root)")
        calib = argparse.Namespace(**{**vars(args), "split": "train", "limit": n})
        where = dict(source=f"the train split of {name}", root=args.root)
    elif Path(source).is_dir():
        if name != "imagefolder":
            raise PathensError(f"--calibration-data {source} is an image folder but --data is "
                               f"{name}: give an .npz of images shaped as the --data ones")
        calib = argparse.Namespace(**{**vars(args), "root": source, "limit": n,
                                      "skip_bad_images": False})
        where = dict(source="image folder", path=str(Path(source).absolute()))
    elif source.endswith(".npz"):
        if name in ("imagefolder", "text"):
            raise PathensError(f"--calibration-data {source}: with --data {name} give "
                               f"{'an image folder' if name == 'imagefolder' else 'nothing'}")
        calib = argparse.Namespace(**{**vars(args), "data": source, "limit": n})
        where = dict(source=".npz", path=str(Path(source).absolute()))
    else:
        raise PathensError(f"--calibration-data {source} is neither an image folder nor an "
                           f".npz file")
    data, _ = load_data(calib, meta, view.model)
    x = Data(view, data, None, labelled=False).first(n, what="--recalibrate")
    if batch_len(x) < n:
        raise PathensError(f"--recalibrate {n}: the calibration data ({where['source']}) hold "
                           f"only {batch_len(x)} examples: lower --recalibrate")
    return to_model(x, view.param), dict(where, examples=n)


# Weight files named for what they are, not which model: the folder names the model instead.
GENERIC_STEMS = ("model", "pytorch_model", "checkpoint", "weights", "best", "last", "final")


def checkpoint_name(args, path, meta: dict | None = None) -> str:
    """The label of a model in reports and its files' names, always something true: the
    checkpoint's file name (its folder's for a generic one: DIR/model.safetensors -> DIR), the
    --model function, the folder of --arch hf:DIR, else the architecture or the model's class
    (meta: what load_model returned)."""
    meta = meta or {}
    if path is not None:
        p = Path(path).absolute()
        return p.parent.name if p.stem in GENERIC_STEMS and p.parent.name else p.stem
    if getattr(args, "model", None):
        return str(args.model).rsplit(":", 1)[-1]
    arch = getattr(args, "arch", None) or ""
    if arch.startswith("hf:"):
        folder = Path(meta.get("hf_dir") or arch[3:]).absolute().name
        if folder:
            return folder
    return str(arch or meta.get("hf_class") or meta.get("class") or "model")


def model_title(args, name: str, meta: dict | None = None) -> str:
    """What a report's title calls the model: the checkpoint or --model as given, else the
    name with the architecture and the class (--arch hf:DIR: 'gpt2 (hf:DIR,
    GPT2LMHeadModel)')."""
    meta = meta or {}
    given = getattr(args, "checkpoint", None) or getattr(args, "model", None)
    if given:
        return str(given)
    what = [str(w) for w in (getattr(args, "arch", None), meta.get("hf_class") or
                             meta.get("class")) if w]
    return f"{name} ({', '.join(what)})" if what else name
