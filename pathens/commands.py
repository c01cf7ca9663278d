"""What each `pathens` subcommand does (cli.py parses the arguments)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the command line never opens windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import checkpoints, lesion as lesion_mod, paths, plots, report  # noqa: E402
from .analysis import analyze as run_analysis  # noqa: E402
from .data import load_dataset, load_npz  # noqa: E402
from .errors import PathensError  # noqa: E402
from .gradients import path_gradients  # noqa: E402
from .outputs import SWEEPS, prepare_out, write_text  # noqa: E402
from .train import check_device  # noqa: E402
from .view import wrap  # noqa: E402


def _log(args):
    return (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))


def _command_line() -> str:
    return "pathens " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# ---- models and data ---------------------------------------------------------------------------

def build_arch(name: str) -> torch.nn.Module:
    """A model from an --arch name: resnetD / cifar_resnetD, or torchvision.<resnet name>."""
    from .models import cifar_resnet
    key = name.lower().removeprefix("cifar_")
    if key.startswith("resnet") and key[6:].isdigit():
        try:
            return cifar_resnet(int(key[6:]))
        except ValueError as err:
            raise PathensError(f"--arch {name}: {err}") from None
    if key.startswith(("torchvision.", "tv.")):
        try:
            from torchvision import models as tvm
        except ImportError:
            raise PathensError("torchvision is not installed: pip install torchvision") from None
        arch = key.split(".", 1)[1]
        if not arch.startswith(("resnet", "wide_resnet")) or not hasattr(tvm, arch):
            raise PathensError(f"unknown torchvision ResNet {arch!r}: e.g. torchvision.resnet50")
        return getattr(tvm, arch)(weights=None)
    raise PathensError(f"unknown --arch {name!r}: use resnetD (D = 6n+2, e.g. resnet56) or "
                       f"torchvision.resnet18 / resnet50 / ...")


def load_model(path, arch, device):
    """(model in eval mode on device, metadata dict) from a checkpoint file."""
    if arch:
        model = checkpoints.load_weights(build_arch(arch), path)
        meta = {"arch": arch}
    else:
        model, meta = checkpoints.load(path)
    return model.to(device).eval(), meta


def load_data(args, meta: dict):
    """(x, y) named by --data (or the checkpoint's dataset), on the CPU."""
    name = args.data or meta.get("dataset")
    if not name:
        raise PathensError("--data is needed: the checkpoint does not say which dataset it was "
                           "trained on (e.g. --data cifar10 --root DIR, or --data test.npz)")
    normalize = args.normalize or meta.get("normalize")
    if name.endswith(".npz"):
        return load_npz(name, normalize=normalize or "imagenet", limit=args.limit), dict(
            dataset=name, normalize=normalize or "imagenet")
    x, y = load_dataset(name, root=args.root, split=getattr(args, "split", "test"),
                        normalize=normalize, limit=args.limit)
    return (x, y), dict(dataset=name, split=getattr(args, "split", "test"), root=args.root,
                        normalize=normalize or "dataset default", examples=len(y))


def _setup(args):
    device = check_device(args.device)
    model, meta = load_model(args.checkpoint, args.arch, device)
    (x, y), data_info = load_data(args, meta)
    view = wrap(model, example_input=x[:2].to(device=device))
    return view, (x.to(device), y.to(device)), meta, data_info


# ---- commands ----------------------------------------------------------------------------------

def analyze(args) -> int:
    torch.manual_seed(args.seed)
    view, data, meta, data_info = _setup(args)
    out = prepare_out(args.out, force=args.force)
    a = _analysis(args, view, data, Path(args.checkpoint).stem, meta, data_info, out)
    path = report.write(out, [a], title=f"pathens analysis of {args.checkpoint}",
                        command=_command_line())
    _log(args)(f"wrote {path} (and results.json, CSVs, figures in {out}/)")
    return 0


def _analysis(args, view, data, name, meta, data_info, out):
    return run_analysis(view, data, name=name, model_info=meta, data_info=data_info,
                        gradient_examples=args.gradient_examples, samples_per_length=args.samples,
                        trials=args.trials, seed=args.seed, margin=args.margin,
                        lesion_dir=Path(out) / SWEEPS / _slug(name), progress=not args.quiet,
                        log=_log(args))


def _slug(name: str) -> str:
    return report._slug(name)


def compare(args) -> int:
    device = check_device(args.device)
    out = prepare_out(args.out, force=args.force)
    analyses, names = [], set()
    loaded = [(p, *load_model(p, args.arch, device)) for p in args.checkpoints]  # fail early
    for path, model, meta in loaded:
        (x, y), data_info = load_data(args, meta)
        view = wrap(model, example_input=x[:2].to(device))
        name = Path(path).stem
        while name in names:
            name += "'"
        names.add(name)
        analyses.append(_analysis(args, view, (x.to(device), y.to(device)), name, meta,
                                  data_info, out))
    path = report.write(out, analyses, title="pathens comparison", command=_command_line())
    _log(args)(f"wrote {path}")
    return 0


def gradients(args) -> int:
    view, (x, y), meta, data_info = _setup(args)
    out = prepare_out(args.out, force=args.force)
    res = path_gradients(view, x, y, method=args.method, tol=args.tol,
                         samples_per_length=args.samples, seed=args.seed,
                         progress=not args.quiet)
    res.config.update(checkpoint=str(args.checkpoint), model=meta, data=data_info)
    write_text(out / f"gradients_{args.method}.csv", res.to_csv())
    write_text(out / f"gradients_{args.method}.json", res.to_json())
    sampled = args.method == "sampled"
    fig, axes = plt.subplots(1, 1 + sampled, figsize=(6 + 6 * sampled, 4.5), layout="constrained")
    axes = np.atleast_1d(axes)
    plots.plot_total_gradient({Path(args.checkpoint).stem: res}, ax=axes[0])
    if sampled:  # single paths are measured only by the sampled protocol
        plots.plot_per_path(res, ax=axes[1])
    fig.savefig(out / f"gradients_{args.method}.png", dpi=120)
    plt.close(fig)
    share = res.fraction()
    top = np.argsort(share)[::-1][:5]
    _log(args)(f"{view}\nmost gradient at lengths " +
               ", ".join(f"{res.lengths[k]} ({share[k]:.1%})" for k in top) +
               f"\nwrote {out}/gradients_{args.method}.{{csv,json,png}}")
    return 0


def lesion(args) -> int:
    view, data, meta, data_info = _setup(args)
    out = prepare_out(args.out, force=args.force, resume=args.resume)
    recal = None
    if args.recalibrate:
        (cx, _), _ = load_data(_with(args, split="train", limit=args.recalibrate), meta)
        recal = cx.to(view.param.device)
    kw = dict(progress=not args.quiet, recalibrate=recal)
    each = lesion_mod.delete_each(view, data, out=out / SWEEPS / "delete_each.csv", **kw)
    pool = sum(b.deletable and not b.downsample for b in view.blocks)
    rand = lesion_mod.delete_random(view, data, ks=args.ks or _doubling(pool), trials=args.trials,
                                    seed=args.seed, out=out / SWEEPS / "delete_random.csv", **kw)
    each.to_csv(out / "delete_each.csv")
    rand.to_csv(out / "delete_random.csv")
    rand.summary_csv(out / "delete_random_summary.csv")
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")
    plots.plot_delete_each(each, ax=a)
    plots.plot_delete_random(rand, ax=b)
    fig.savefig(out / "lesion.png", dpi=120)
    plt.close(fig)
    write_text(out / "config.json", json.dumps(dict(command=_command_line(), model=meta,
                                                    data=data_info, each=each.config,
                                                    random=rand.config), indent=2, default=str))
    log = _log(args)
    log(f"intact error {each.intact_error:.2%}; each block deleted: " + " ".join(
        f"{r['error']:.1%}" for r in each.rows[1:]))
    for r in rand.summary():
        log(f"  {r['k']:3d} random blocks deleted: error {r['error_mean']:.2%} "
            f"[{r['error_lo']:.2%}, {r['error_hi']:.2%}]")
    log(f"wrote {out}/")
    return 0


def reorder(args) -> int:
    view, data, meta, data_info = _setup(args)
    out = prepare_out(args.out, force=args.force, resume=args.resume)
    groups = {}
    for b in view.blocks:
        groups.setdefault((b.in_shape, b.out_shape), []).append(b)
    most = sum(len(g) // 2 for g in groups.values())
    res = lesion_mod.reorder(view, data, swaps=args.swaps or _doubling(most), trials=args.trials,
                             seed=args.seed, out=out / SWEEPS / "reorder.csv", progress=not args.quiet)
    res.to_csv(out / "reorder.csv")
    res.summary_csv(out / "reorder_summary.csv")
    fig = plots.plot_reorder(res)
    fig.savefig(out / "reorder.png", dpi=120)
    plt.close(fig)
    write_text(out / "config.json", json.dumps(dict(command=_command_line(), model=meta,
                                                    data=data_info, sweep=res.config),
                                               indent=2, default=str))
    for r in res.summary():
        _log(args)(f"{r['k']:3d} swaps (tau {r['tau_mean']:.3f}): error {r['error_mean']:.2%}")
    _log(args)(f"wrote {out}/")
    return 0


def paths_table(args) -> int:
    n = args.n
    if args.enumerate:
        for mask in paths.enumerate_paths(n):
            print("".join("1" if b else "0" for b in mask), int(mask.sum()))
        return 0
    cols = {"paths": paths.path_counts(n), "binomial": paths.binomial_distribution(n),
            "bn_variance": paths.bn_variance_distribution(n)}
    if args.alpha is not None:
        cols[f"skipinit_alpha{args.alpha:g}"] = paths.skipinit_distribution(n, args.alpha)
    print("length," + ",".join(cols))
    for k in range(n + 1):
        print(f"{k}," + ",".join(str(v[k]) if name == "paths" else f"{v[k]:.6g}"
                                 for name, v in cols.items()))
    return 0


def train(args) -> int:
    from .data import dataset_info
    from .models import cifar_resnet
    from .train import train as run_training
    device = check_device(args.device)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise PathensError(f"{out} exists: choose another --out, or pass --force to overwrite it")
    if not args.data or args.data.endswith(".npz"):
        raise PathensError("--data must name a dataset to train on: digits, cifar10, mnist, "
                           "fashion-mnist")
    info = dataset_info(args.data)
    kw = dict(root=args.root, normalize=args.normalize, limit=args.limit)
    train_data = load_dataset(args.data, split="train", **kw)
    test_data = load_dataset(args.data, split="test", **{**kw, "limit": None})
    model = cifar_resnet(args.depth, norm=args.norm, shortcut=args.shortcut, preact=args.preact,
                         skip=not args.plain, width=args.width, num_classes=info.num_classes,
                         in_channels=info.in_channels, alpha_init=args.alpha_init)
    result = run_training(model, train_data, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, weight_decay=args.weight_decay,
                          warmup_epochs=args.warmup, clip_grad_norm=args.clip,
                          augment=info.augment, seed=args.seed, device=device,
                          eval_data=test_data, progress=not args.quiet, log=_log(args))
    checkpoints.save_checkpoint(out, model, dataset=args.data, seed=args.seed, epochs=args.epochs,
                                accuracy=result.accuracy, normalize=args.normalize,
                                extra=dict(command=_command_line(), seconds=round(result.seconds, 1)))
    _log(args)(f"test accuracy {result.accuracy:.2%} after {args.epochs} epochs "
               f"({result.seconds:.0f} s); wrote {out}")
    return 0


def demo(args) -> int:
    from .demo import run_demo
    check_device(args.device)
    out = prepare_out(args.out, force=args.force)
    run_demo(out, retrain=args.retrain, quick=args.quick, seed=args.seed, device=args.device,
             progress=not args.quiet, log=_log(args), command=_command_line())
    return 0


def _with(args, **changes):
    import argparse
    return argparse.Namespace(**{**vars(args), **changes})


def _doubling(top: int) -> list:
    from .analysis import _doubling as doubling
    return doubling(top)
