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
    corpus = text.checkpoint_corpus(meta.get("data") if isinstance(meta.get("data"), dict)
                                    else None, root=args.root,
                                    tokenizer=args.tokenizer or _hf_tokenizer(meta))
    arch = meta.get("arch") if isinstance(meta.get("arch"), dict) else {}
    seq_len = args.seq_len or arch.get("context") or 64
    vocab = _vocab(model)
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
    checked as it streams)."""
    if not isinstance(data, tuple):
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
    return distributed.all_agree(step)


def recalibration(args, view, meta):
    """The --recalibrate examples (training split) on the view's device, or None; checked
    (BatchNorm present, data loads) before --out is touched."""
    if not args.recalibrate:
        return None
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in view.model.modules()):
        raise PathensError("--recalibrate re-estimates BatchNorm statistics, but the model has "
                           "no BatchNorm layers: drop --recalibrate")
    import argparse
    calib = argparse.Namespace(**{**vars(args), "split": "train", "limit": args.recalibrate})
    data, _ = load_data(calib, meta, view.model)
    return Data(view, data, None, labelled=False).first(args.recalibrate, what="--recalibrate")


def checkpoint_name(args, path) -> str:
    """The label of a model in reports: its checkpoint's stem, or the --model function."""
    if path is not None:
        return Path(path).stem
    return str(args.model).rsplit(":", 1)[-1]
