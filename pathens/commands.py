"""What each `pathens` subcommand does (cli.py parses the arguments).

Every command checks all of its inputs first: the output folder (outputs.check_out), the
model, the data and its labels, the probe that wraps the model, the counts and the
recalibration data. Only then does it open --out (outputs.open_out: created, locked for the
run, recorded in config.json; with --force, the old results removed), so that a bad input
costs no computation and never touches a finished folder.
"""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the command line never opens windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import checkpoints, distributed, lesion as lesion_mod, paths, plots, report  # noqa: E402
from .analysis import analyze as run_analysis, doubling  # noqa: E402
from .batches import check_batch  # noqa: E402
from .cli import MAX_CONDITIONS  # noqa: E402
from .data import load_dataset, load_npz  # noqa: E402
from .errors import PathensError  # noqa: E402
from .gradients import path_gradients  # noqa: E402
from .outputs import (CONFIG, SWEEPS, distributed_check_out, open_out,  # noqa: E402
                      prepare_file, save_figure, write_text, writer)
from .train import check_device  # noqa: E402
from .view import wrap  # noqa: E402


def _log(args):
    """print, unless --quiet or on a torch.distributed rank other than 0 (rank 0 speaks)."""
    return (lambda *a: None) if args.quiet or not writer() else \
        (lambda *a: print(*a, flush=True))


def _command_line(args) -> str:
    """The command as typed (cli.main records its argv in args._argv)."""
    return "pathens " + " ".join(shlex.quote(a) for a in getattr(args, "_argv", []))


# Flags that do not change a run's results, so --resume may differ in them.
_NOT_SETTINGS = ("run", "command", "out", "force", "resume", "quiet", "device", "_argv")
_PATHS = ("checkpoint", "checkpoints", "root")


def _run(args) -> dict:
    """The run recorded in --out's config.json: the command and the settings of its results
    (paths made absolute, so that a resume from another folder compares equal)."""
    settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    for key in _PATHS:
        if isinstance(settings.get(key), list):
            settings[key] = [str(Path(p).absolute()) for p in settings[key]]
        elif settings.get(key) is not None:
            settings[key] = str(Path(settings[key]).absolute())
    if str(settings.get("data")).endswith(".npz"):
        settings["data"] = str(Path(settings["data"]).absolute())
    return dict(command=args.command, settings=settings)


def _check_out(args) -> None:
    """--out refused at once (before anything loads) if it cannot take this run (by rank 0
    under torchrun, for every rank)."""
    distributed_check_out(args.out, run=_run(args), force=args.force,
                          resume=getattr(args, "resume", None))


def _open_out(args):
    """`with _open_out(args) as out:` --out created, locked and recorded, once every input is
    checked."""
    return open_out(args.out, run=_run(args), force=args.force,
                    resume=getattr(args, "resume", None), holder=_command_line(args))


# ---- models and data ---------------------------------------------------------------------------

# Flags that shape a third-party checkpoint's network (--arch); None / False: not given.
ARCH_FLAGS = ("norm", "shortcut", "preact", "plain", "width", "num_classes", "in_channels")


def build_cifar(what: str, **kw) -> torch.nn.Module:
    """cifar_resnet(**kw), with a bad value (depth 57, width 0, ...) a one-line user error
    that starts with `what` (the flags that asked for it)."""
    from .models import cifar_resnet
    try:
        return cifar_resnet(**kw)
    except ValueError as err:  # cifar_resnet's checks of its arguments; nothing else runs yet
        raise PathensError(f"{what}: the network cannot be built: {err}") from None


def build_arch(name: str, state=None, **flags) -> torch.nn.Module:
    """A model from an --arch name: resnetD / cifar_resnetD, shaped by the ARCH_FLAGS given
    in flags, or torchvision.<resnet name>. state: the checkpoint's state dict, which gives
    the sizes not given: width and in_channels from conv1.weight, num_classes from
    linear.weight (CIFAR) or fc.weight (torchvision)."""
    state, get = state or {}, flags.get
    key = name.lower().removeprefix("cifar_")
    if key.startswith("resnet") and key[6:].isdigit():
        return build_cifar(f"--arch {name}", depth=int(key[6:]), norm=get("norm", "bn"),
                           shortcut=get("shortcut", "A"), preact=get("preact", False),
                           skip=not get("plain", False),
                           width=_size(get("width"), state, "conv1.weight", 0, 16),
                           num_classes=_size(get("num_classes"), state, "linear.weight", 0, 10),
                           in_channels=_size(get("in_channels"), state, "conv1.weight", 1, 3))
    if key.startswith(("torchvision.", "tv.")):
        cifar_only = [f for f in flags if f != "num_classes"]
        if cifar_only:
            raise PathensError(f"--{cifar_only[0].replace('_', '-')} shapes only pathens CIFAR "
                               f"ResNets (--arch resnetD), not {name}")
        try:
            from torchvision import models as tvm
        except ImportError:
            raise PathensError("torchvision is not installed: pip install torchvision") from None
        arch = key.split(".", 1)[1]
        if not arch.startswith(("resnet", "wide_resnet")) or not hasattr(tvm, arch):
            raise PathensError(f"unknown torchvision ResNet {arch!r}: e.g. torchvision.resnet50")
        classes = _size(get("num_classes"), state, "fc.weight", 0, 1000)
        return getattr(tvm, arch)(weights=None, num_classes=classes)
    raise PathensError(f"unknown --arch {name!r}: use resnetD (D = 6n+2, e.g. resnet56) or "
                       f"torchvision.resnet18 / resnet50 / ...")


def _size(given, state, key: str, dim: int, default: int):
    """given if passed, else state[key]'s size along dim (the checkpoint knows), else default."""
    if given is not None:
        return given
    weight = state.get(key)
    return int(weight.shape[dim]) if weight is not None and weight.dim() > dim else default


def load_model(path, arch, device, flags=None):
    """(model in eval mode on device, metadata dict) from a checkpoint file. flags: ARCH_FLAGS
    values for --arch, None / False where not given (a pathens checkpoint records its own
    architecture)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v is not False}
    if arch:
        state = checkpoints.load_state_dict(path)
        model = checkpoints.load_weights(build_arch(arch, state, **flags), state)
        meta = dict(arch=arch, **getattr(model, "config", {}))
    elif flags:
        name = next(iter(flags)).replace("_", "-")
        raise PathensError(f"--{name} needs --arch: it shapes a third-party checkpoint's network "
                           f"(a pathens checkpoint records its own architecture)")
    else:
        model, meta = checkpoints.load(path)
    return model.to(device).eval(), meta


def _flags(args) -> dict:
    return {k: getattr(args, k) for k in ARCH_FLAGS}


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



def _setup(args, *, residual: bool = False, examples: int = 1):
    """(view, (x, y) on the device, checkpoint metadata, data description), every input
    checked: the device, the checkpoint, the data (its shapes, labels and values against the
    model) and the wrap. residual: the command measures paths, so a plain network (no
    shortcuts) is refused; otherwise it is wrapped as one (lesions accept it). examples: the
    fewest examples the command can measure."""
    def step():
        device = check_device(args.device)
        model, meta = load_model(args.checkpoint, args.arch, device, _flags(args))
        (x, y), data_info = load_data(args, meta)
        view = _wrap(model, x, residual=residual, what=args.checkpoint)
        return view, _check_data(view, x, y, examples), meta, data_info
    return distributed.all_agree(step)  # every rank's inputs checked, or all stop


def _wrap(model, x, *, residual: bool, what):
    """The view of model, probed with the first examples of the data (in the model's dtype
    and device), with a failure on them said in terms of the command line."""
    param = next(model.parameters(), x)
    probe = x[:2].to(device=param.device, dtype=param.dtype)
    try:
        with torch.no_grad():
            model(probe)
    except Exception as err:  # whatever the model raises on inputs it cannot take
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PathensError(f"{what} cannot run on the --data examples (shape "
                           f"{tuple(probe.shape[1:])}): {reason}; check --data, --normalize "
                           f"and --arch") from None
    view = wrap(model, example_input=probe, allow_plain=True)
    if residual and not view.residual:
        plain = [b.name for b in view.blocks if not b.residual]
        raise PathensError(f"{what} is a plain network (no shortcuts in {', '.join(plain[:3])}"
                           f"{'...' if len(plain) > 3 else ''}): it has no residual paths to "
                           f"measure; `pathens lesion` and `pathens reorder` accept it")
    return view


def _check_data(view, x, y, examples: int):
    """(x, y) checked against the view and moved to its device; examples: the fewest the
    command can use (analyze: 2, for the branch variance)."""
    if len(y) < examples:
        raise PathensError(f"{len(y)} example{'s' * (len(y) != 1)}: this command needs at least "
                           f"{examples} (the branch variance is a variance across examples); "
                           f"raise --limit or use a larger --data")
    if len(y) < distributed.world_size():
        raise PathensError(f"{len(y)} examples cannot be shared among "
                           f"{distributed.world_size()} processes (torchrun's --nproc_per_node "
                           f"x --nnodes): each needs at least one; use fewer processes")
    return check_batch(view, x, y)  # labels in range, finite inputs, on the device


def _conditions(count: int, what: str) -> None:
    """Refuse a sweep of more lesion conditions than could finish (cli.MAX_CONDITIONS)."""
    if count > MAX_CONDITIONS:
        raise PathensError(f"{what} = {count:,} lesion conditions, more than the limit of "
                           f"{MAX_CONDITIONS:,} (each is a pass over the data): lower --trials")


def _recalibration(args, view, meta):
    """The --recalibrate examples (training split) on the view's device, or None; checked
    (BatchNorm present, data loads) before --out is touched."""
    if not args.recalibrate:
        return None
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in view.model.modules()):
        raise PathensError("--recalibrate re-estimates BatchNorm statistics, but the model has "
                           "no BatchNorm layers: drop --recalibrate")
    (cx, _), _ = load_data(_with(args, split="train", limit=args.recalibrate), meta)
    return cx.to(device=view.param.device, dtype=view.param.dtype)


# ---- commands ----------------------------------------------------------------------------------

def analyze(args) -> int:
    _check_out(args)
    torch.manual_seed(args.seed)
    view, data, meta, data_info = _setup(args, examples=2)
    _analysis_counts(args, view)
    with _open_out(args) as out:
        a = _analysis(args, view, data, Path(args.checkpoint).stem, meta, data_info, out)
        path = report.write(out, [a], title=f"pathens analysis of {args.checkpoint}",
                            command=_command_line(args))
    _log(args)(f"wrote {path} (and results.json, CSVs, figures in {out}/)")
    return 0


def _analysis_counts(args, view) -> None:
    """The lesion conditions of one analysis (its default ks and swaps), within the limit."""
    ks = doubling(len(lesion_mod.random_pool(view)))
    swaps = doubling(lesion_mod.most_swaps(view))
    _conditions(args.trials * (len(ks) + len(swaps)), f"--trials {args.trials} x "
                f"({len(ks)} k + {len(swaps)} swap counts)")


def _analysis(args, view, data, name, meta, data_info, out):
    return run_analysis(view, data, name=name, model_info=meta, data_info=data_info,
                        gradient_examples=args.gradient_examples, samples_per_length=args.samples,
                        trials=args.trials, seed=args.seed, margin=args.margin,
                        lesion_dir=Path(out) / SWEEPS / _slug(name), progress=not args.quiet,
                        log=_log(args))


def _slug(name: str) -> str:
    return report._slug(name)


def compare(args) -> int:
    _check_out(args)
    device = check_device(args.device)
    runs, slugs = [], set()
    for path in args.checkpoints:  # every model and its data checked before --out
        model, meta = load_model(path, args.arch, device, _flags(args))
        (x, y), data_info = load_data(args, meta)
        view = _wrap(model, x, residual=False, what=path)
        _analysis_counts(args, view)
        name, copy = Path(path).stem, 1
        while _slug(name) in slugs:  # the slug names its files and sweeps: keep them apart
            copy += 1
            name = f"{Path(path).stem} ({copy})"
        slugs.add(_slug(name))
        runs.append((view, _check_data(view, x, y, 2), name, meta, data_info))
    with _open_out(args) as out:
        analyses = [_analysis(args, *r, out) for r in runs]
        path = report.write(out, analyses, title="pathens comparison",
                            command=_command_line(args))
    _log(args)(f"wrote {path}")
    return 0


def gradients(args) -> int:
    _check_out(args)
    view, (x, y), meta, data_info = _setup(args, residual=True)
    with _open_out(args) as out:
        res = path_gradients(view, x, y, method=args.method, tol=args.tol,
                             samples_per_length=args.samples, seed=args.seed,
                             progress=not args.quiet)
        res.config.update(checkpoint=str(args.checkpoint), model=meta, data=data_info)
        write_text(out / f"gradients_{args.method}.csv", res.to_csv())
        write_text(out / f"gradients_{args.method}.json", res.to_json())
        sampled = args.method == "sampled"
        fig, axes = plt.subplots(1, 1 + sampled, figsize=(6 + 6 * sampled, 4.5),
                                 layout="constrained")
        axes = np.atleast_1d(axes)
        plots.plot_total_gradient({Path(args.checkpoint).stem: res}, ax=axes[0])
        if sampled:  # single paths are measured only by the sampled protocol
            plots.plot_per_path(res, ax=axes[1])
        save_figure(fig, out / f"gradients_{args.method}.png", dpi=120)
    share = res.fraction()
    top = np.argsort(share)[::-1][:5]
    _log(args)(f"{view}\nmost gradient at lengths " +
               ", ".join(f"{res.lengths[k]} ({share[k]:.1%})" for k in top) +
               f"\nwrote {out}/gradients_{args.method}.{{csv,json,png}}")
    return 0


def lesion(args) -> int:
    _check_out(args)
    view, data, meta, data_info = _setup(args)
    pool = len(lesion_mod.random_pool(view))
    ks = _counts(args.ks or doubling(pool), pool, "--ks", f"random lesions can delete only {pool} "
                 f"of the network's blocks (downsampling blocks are kept)")
    _conditions(len(ks) * args.trials, f"{len(ks)} k x --trials {args.trials}")
    recal = _recalibration(args, view, meta)
    kw = dict(progress=not args.quiet, recalibrate=recal)
    with _open_out(args) as out:
        each = lesion_mod.delete_each(view, data, out=out / SWEEPS / "delete_each.csv", **kw)
        rand = lesion_mod.delete_random(view, data, ks=ks, trials=args.trials, seed=args.seed,
                                        out=out / SWEEPS / "delete_random.csv", **kw)
        write_text(out / "delete_each.csv", each.to_csv())
        write_text(out / "delete_random.csv", rand.to_csv())
        write_text(out / "delete_random_summary.csv", rand.summary_csv())
        fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")
        plots.plot_delete_each(each, ax=a)
        plots.plot_delete_random(rand, ax=b)
        save_figure(fig, out / "lesion.png", dpi=120)
        _write_config(args, out, model=meta, data=data_info, each=each.config,
                      random=rand.config)
    log = _log(args)
    log("\n".join(lesion_tables(each, rand)))
    log(f"wrote {out}/")
    return 0


def lesion_tables(each, rand) -> list:
    """The lesion command's printout: the intact error, then one line per deleted block
    (error and change from intact) and one per k (mean over trials, 95% interval)."""
    intact = each.rows[0]
    width = max([len("block deleted")] + [len(n) + len(" (downsampling)")
                                          for n in each.block_names])
    lines = [f"intact error {_pct(each.intact_error)} on {each.num_examples} examples (95% "
             f"interval {_pct(intact['error_lo'])} to {_pct(intact['error_hi'])})", "",
             f"{'block deleted':<{width}}  {'error':>7}  change from intact"]
    for r in each.rows[1:]:
        name = ", ".join(each.block_names[i] for i in r["deleted"])
        name += " (downsampling)" if r["downsampling"] else ""
        lines.append(f"{name:<{width}}  {_pct(r['error']):>7}  "
                     f"{_pct(r['error'] - each.intact_error, sign=True):>7}")
    lines += ["", "random blocks deleted  trials  mean error  95% interval (across trials)"]
    for r in rand.summary():
        lines.append(f"{r['k']:>21}  {r['trials']:>6}  {_pct(r['error_mean']):>10}  "
                     f"{_pct(r['error_lo'])} to {_pct(r['error_hi'])}")
    return lines


def _pct(v, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):  # a condition with non-finite logits
        return "n/a"
    return f"{v:+.2%}" if sign else f"{v:.2%}"


def reorder(args) -> int:
    _check_out(args)
    view, data, meta, data_info = _setup(args)
    most = lesion_mod.most_swaps(view)
    swaps = _counts(args.swaps or doubling(most), most, "--swaps", f"the blocks of equal shape "
                    f"allow at most {most} disjoint swaps")
    _conditions(len(swaps) * args.trials, f"{len(swaps)} swap counts x --trials {args.trials}")
    with _open_out(args) as out:
        res = lesion_mod.reorder(view, data, swaps=swaps, trials=args.trials, seed=args.seed,
                                 out=out / SWEEPS / "reorder.csv", progress=not args.quiet)
        write_text(out / "reorder.csv", res.to_csv())
        write_text(out / "reorder_summary.csv", res.summary_csv())
        save_figure(plots.plot_reorder(res), out / "reorder.png", dpi=120)
        _write_config(args, out, model=meta, data=data_info, sweep=res.config)
    log = _log(args)
    log(f"intact error {_pct(res.intact_error)} on {res.num_examples} examples\n\n"
        f"swaps  trials  mean tau  mean error  95% interval (across trials)")
    for r in res.summary():
        log(f"{r['k']:>5}  {r['trials']:>6}  {r['tau_mean']:>8.3f}  {_pct(r['error_mean']):>10}  "
            f"{_pct(r['error_lo'])} to {_pct(r['error_hi'])}")
    log(f"wrote {out}/")
    return 0


def _write_config(args, out: Path, **details) -> None:
    """config.json at the end of a run: the run (as open_out recorded it), the command line
    and what the run learned (model, data, sweep configurations)."""
    write_text(out / CONFIG, json.dumps(dict(**_run(args), command_line=_command_line(args),
                                             **details), indent=2, default=str))


def paths_table(args) -> int:
    out = prepare_file(args.out, force=args.force) if args.out else None
    n = args.n
    if args.enumerate:
        lines = ["".join("1" if b else "0" for b in mask) + f" {int(mask.sum())}"
                 for mask in paths.enumerate_paths(n)]
    else:
        cols = {"paths": paths.path_counts(n), "binomial": paths.binomial_distribution(n),
                "bn_variance": paths.bn_variance_distribution(n)}
        if args.alpha is not None:
            cols[f"skipinit_alpha{args.alpha:g}"] = paths.skipinit_distribution(n, args.alpha)
        lines = ["length," + ",".join(cols)] + [
            f"{k}," + ",".join(str(v[k]) if name == "paths" else f"{v[k]:.6g}"
                               for name, v in cols.items()) for k in range(n + 1)]
    if out is None:  # the table is the result: printed even with --quiet
        print("\n".join(lines))
    else:
        write_text(out, "\n".join(lines))
        _log(args)(f"wrote {out}")
    return 0


def train(args) -> int:
    from .data import dataset_info
    from .train import train as run_training
    device = check_device(args.device)
    if not args.data or args.data.endswith(".npz"):
        raise PathensError("--data must name a dataset to train on: digits, cifar10, mnist, "
                           "fashion-mnist")
    info = dataset_info(args.data)
    out = prepare_file(args.out, force=args.force)  # before training: never lose a trained model
    model = build_cifar("pathens train", depth=args.depth, norm=args.norm, shortcut=args.shortcut,
                        preact=args.preact, skip=not args.plain, width=args.width,
                        num_classes=info.num_classes, in_channels=info.in_channels,
                        alpha_init=args.alpha_init)
    kw = dict(root=args.root, normalize=args.normalize, limit=args.limit)
    train_data = load_dataset(args.data, split="train", **kw)
    test_data = load_dataset(args.data, split="test", **{**kw, "limit": None})
    result = run_training(model, train_data, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, weight_decay=args.weight_decay,
                          warmup_epochs=args.warmup, clip_grad_norm=args.clip,
                          augment=info.augment, seed=args.seed, device=device,
                          eval_data=test_data, progress=not args.quiet, log=_log(args))
    checkpoints.save_checkpoint(out, model, dataset=args.data, seed=args.seed, epochs=args.epochs,
                                accuracy=result.accuracy, normalize=args.normalize,
                                extra=dict(command=_command_line(args),
                                           seconds=round(result.seconds, 1)))
    _log(args)(f"test accuracy {result.accuracy:.2%} after {args.epochs} epochs "
               f"({result.seconds:.0f} s); wrote {out}")
    return 0


def demo(args) -> int:
    from .demo import run_demo
    _check_out(args)
    check_device(args.device)
    with _open_out(args) as out:
        run_demo(out, retrain=args.retrain, quick=args.quick, seed=args.seed,
                 device=args.device, progress=not args.quiet, log=_log(args),
                 command=_command_line(args))
    return 0


def _counts(counts: list, top: int, flag: str, why: str) -> list:
    """counts if none is above top; checked before the sweep, not after the sweeps before it."""
    if not counts or max(counts) > top:  # no counts: top is 0
        raise PathensError((f"{flag} {max(counts)} is too many: " if counts else "") + why)
    return counts


def _with(args, **changes):
    import argparse
    return argparse.Namespace(**{**vars(args), **changes})
