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

from ..models import checkpoints  # noqa: E402
from ..measure import lesion as lesion_mod  # noqa: E402
from .. import combinatorics as paths, report  # noqa: E402
from ..report import plots  # noqa: E402
from ..report.plots.lesion import unit_of  # noqa: E402
from ..analysis import analyze as run_analysis, doubling, lesion_counts  # noqa: E402
from ..checks import MAX_CONDITIONS  # noqa: E402
from .arguments import DIAGNOSTIC_FLAGS  # noqa: E402
from .inputs import (build_cifar, checkpoint_name, model_title, recalibration,  # noqa: E402
                     setup)
from ..data.datasets import load_dataset  # noqa: E402
from ..errors import PathensError  # noqa: E402
from ..measure.path_gradients import path_gradients  # noqa: E402
from .run_folder import CONFIG, SWEEPS, distributed_check_out, open_out, prepare_file  # noqa: E402
from ..io import save_figure, write_text, writer  # noqa: E402
from ..results import csv_text  # noqa: E402
from ..report.writer import file_slug as slug  # noqa: E402
from ..models.train import check_device  # noqa: E402


def _log(args):
    """print, unless --quiet or on a torch.distributed rank other than 0 (rank 0 speaks)."""
    return (lambda *a: None) if args.quiet or not writer() else \
        (lambda *a: print(*a, flush=True))


def _command_line(args) -> str:
    """The command as typed (cli.main records its argv in args._argv)."""
    return "pathens " + " ".join(shlex.quote(a) for a in getattr(args, "_argv", []))


# Flags that do not change a run's results, so --resume may differ in them.
_NOT_SETTINGS = ("run", "command", "out", "force", "resume", "quiet", "device", "_argv")
_PATHS = ("checkpoint", "checkpoints", "root", "calibration_data")


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
    spec = settings.get("model")
    if spec and ".py:" in spec:  # --model FILE.py:FUNCTION: the file's absolute path
        file, function = spec.rsplit(":", 1)
        settings["model"] = f"{Path(file).absolute()}:{function}"
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


# ---- models and data: command_inputs.py ---------------------------------------------------

def _conditions(count: int, what: str) -> None:
    """Refuse a sweep of more lesion conditions than could finish (cli.MAX_CONDITIONS)."""
    if count > MAX_CONDITIONS:
        raise PathensError(f"{what} = {count:,} lesion conditions, more than the limit of "
                           f"{MAX_CONDITIONS:,} (each is a pass over the data): lower --trials")


# ---- commands ----------------------------------------------------------------------------------

def analyze(args) -> int:
    _check_out(args)
    torch.manual_seed(args.seed)
    diagnose = _diagnostics(args, args.diagnose, "--diagnose")
    view, data, meta, data_info = setup(args, examples=2)
    _analysis_counts(args, view)
    name = checkpoint_name(args, args.checkpoint, meta)
    with _open_out(args) as out:
        a = _analysis(args, view, data, name, meta, data_info, out, diagnose)
        path = report.write(out, [a], title=f"pathens analysis of "
                                            f"{model_title(args, name, meta)}",
                            command=_command_line(args))
    _log(args)(f"wrote {path} (and results.json, CSVs, figures in {out}/)")
    return 0


def _analysis_counts(args, view) -> None:
    """The lesion conditions of one analysis (its default ks and swaps), within the limit."""
    ks, swaps = lesion_counts(view, args.unit)
    _conditions(args.trials * (len(ks) + len(swaps)), f"--trials {args.trials} x "
                f"({len(ks)} k + {len(swaps)} swap counts)")


def _analysis(args, view, data, name, meta, data_info, out, diagnose=False):
    return run_analysis(view, data, name=name, model_info=meta, data_info=data_info,
                        diagnose=diagnose,
                        gradient_examples=args.gradient_examples, samples_per_length=args.samples,
                        trials=args.trials, seed=args.seed, margin=args.margin,
                        lesion_dir=Path(out) / SWEEPS / slug(name), progress=_progress(args),
                        log=_log(args), unit=args.unit,
                        **({} if args.batch_size is None else dict(batch_size=args.batch_size)))


def compare(args) -> int:
    _check_out(args)
    diagnose = _diagnostics(args, args.diagnose, "--diagnose")
    runs, slugs = [], set()
    for path in args.checkpoints:  # every model and its data checked before --out
        view, data, meta, data_info = setup(args, examples=2, checkpoint=path)
        _analysis_counts(args, view)
        name = first = checkpoint_name(args, path, meta)
        copy = 1
        while slug(name) in slugs:  # the slug names its files and sweeps: keep them apart
            copy += 1
            name = f"{first} ({copy})"
        slugs.add(slug(name))
        runs.append((view, data, name, meta, data_info))
    with _open_out(args) as out:
        analyses = [_analysis(args, *r, out, diagnose) for r in runs]
        path = report.write(out, analyses, title="pathens comparison",
                            command=_command_line(args))
    _log(args)(f"wrote {path}")
    return 0


def _diagnostics(args, names, flag: str):
    """{diagnostic: options} for analyze(diagnose=...) and diagnose(which=...), from the names
    given with `flag` (None: none, for --diagnose; [] or None for --only: all) and the
    diagnostics' option flags, checked by the registry (unknown names, bad values)."""
    from ..measure.registry import diagnostics
    wanted = None if names is None and flag == "--diagnose" else names or True
    given = {name: {} for name in diagnostics(wanted)}
    for dest, (name, option) in DIAGNOSTIC_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        option_flag = "--" + dest.replace("_", "-")
        if name not in given:
            why = f"add {flag}" if not given else f"add {name} to {flag}"
            raise PathensError(f"{option_flag} is an option of the diagnostic {name!r}, which "
                               f"this run leaves out: {why}, or drop {option_flag}")
        given[name][option] = value
    return diagnostics(given)


def diagnose(args) -> int:
    """The diagnostics alone, computed before --out is touched: any refusal (few examples, a
    layer of one unit, a non-finite loss) leaves nothing written."""
    from ..diagnosis import MIN_EXAMPLES, diagnose as run_diagnosis
    from ..models.modes import recalibrate_batchnorm
    _check_out(args)
    torch.manual_seed(args.seed)
    chosen = _diagnostics(args, args.only, "--only")
    runs, slugs = [], set()
    for path in args.checkpoints or [None]:  # every model and its data checked first
        view, data, meta, data_info = setup(args, checkpoint=path)
        if isinstance(data, tuple) and len(data[1]) < MIN_EXAMPLES:
            raise PathensError(f"{len(data[1])} example: the diagnostics need at least "
                               f"{MIN_EXAMPLES} (statistics over examples); raise --limit or use "
                               f"a larger --data")
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                     for m in view.model.modules())
        recal, where = recalibration(args, view, meta) if args.recalibrate and has_bn else \
            (None, None)
        if recal is not None:
            meta = dict(meta, batchnorm=f"running statistics recalibrated on {len(recal)} "
                                        f"examples ({where['source']})", calibration=where)
        name = stem = checkpoint_name(args, path)
        copy = 1
        while slug(name) in slugs:  # the slug names its files: keep them apart
            copy += 1
            name = f"{stem} ({copy})"
        slugs.add(slug(name))
        runs.append((view, data, name, meta, data_info, recal))
    log, found = _log(args), []
    for view, data, name, meta, data_info, recal in runs:
        if recal is not None:
            with torch.no_grad():
                recalibrate_batchnorm(view.model, recal)
        found.append(run_diagnosis(view, data, name=name, which=chosen, model_info=meta,
                                   data_info=data_info, seed=args.seed, progress=_progress(args),
                                   log=log, **({} if args.batch_size is None else
                                               dict(batch_size=args.batch_size))))
    with _open_out(args) as out:
        path = report.write_diagnoses(out, found, title="pathens diagnostics",
                                      command=_command_line(args),
                                      extra=dict(recalibrate=args.recalibrate))
        _write_config(args, out, diagnostics=chosen, models={d.name: d.model for d in found},
                      data={d.name: d.data for d in found})
    log(f"wrote {path} (and results.json, CSVs, figures in {out}/)")
    return 0


def gradients(args) -> int:
    _check_out(args)
    view, data, meta, data_info = setup(args, residual=True)
    name = checkpoint_name(args, args.checkpoint, meta)
    with _open_out(args) as out:
        res = path_gradients(view, data, method=args.method, tol=args.tol,
                             samples_per_length=args.samples, seed=args.seed,
                             progress=_progress(args))
        res.config.update(checkpoint=str(args.checkpoint), model=meta, data=data_info)
        write_text(out / f"gradients_{args.method}.csv", res.to_csv())
        write_text(out / f"gradients_{args.method}.json", res.to_json())
        sampled = args.method == "sampled"
        fig, axes = plt.subplots(1, 1 + sampled, figsize=(6 + 6 * sampled, 4.5),
                                 layout="constrained")
        axes = np.atleast_1d(axes)
        plots.plot_total_gradient({name: res}, ax=axes[0],
                                  title=f"{name}: gradient magnitude by path length")
        if sampled:  # single paths are measured only by the sampled protocol
            plots.plot_per_path({name: res}, ax=axes[1],
                                title=f"{name}: gradient of one path vs its length")
        save_figure(fig, out / f"gradients_{args.method}.png", dpi=120)
    share = res.fraction()
    top = np.argsort(share)[::-1][:5]
    _log(args)(f"{view}\nmost gradient at lengths " +
               ", ".join(f"{res.lengths[k]} ({share[k]:.1%})" for k in top) +
               f"\nwrote {out}/gradients_{args.method}.{{csv,json,png}}")
    return 0


def _progress(args) -> bool:
    return not args.quiet and writer()


def lesion(args) -> int:
    _check_out(args)
    view, data, meta, data_info = setup(args)
    pool = len(lesion_mod.random_units(view, unit=args.unit))
    ks = _counts(args.ks or doubling(pool), pool, "--ks", f"random lesions can delete only {pool} "
                 f"of the network's {args.unit}s (downsampling blocks are kept)")
    _conditions(len(ks) * args.trials, f"{len(ks)} k x --trials {args.trials}")
    recal, calibration = recalibration(args, view, meta)
    kw = dict(progress=_progress(args), recalibrate=recal, unit=args.unit)
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
                      random=rand.config, calibration=calibration)
    log = _log(args)
    log("\n".join(lesion_tables(each, rand)))
    log(f"wrote {out}/")
    return 0


def lesion_tables(each, rand) -> list:
    """The lesion command's printout: the intact error, then one line per deleted block (or
    layer, --unit layer: named by its module) with its error and the change from intact (and,
    for a classifier of at least 5 classes, its top-5 error), and one per k (mean over trials,
    95% interval); columns as wide as their longest entry."""
    unit = unit_of(each)
    owner = {i: u.name for u in each.units("layer") for i in u.blocks}  # block -> its layer
    intact = each.rows[0]
    top5 = "top5_error" in intact  # a classifier of >= 5 classes: top-5 beside top-1
    names = []
    for r in each.rows[1:]:
        held = dict.fromkeys(owner[i] if unit == "layer" else each.block_names[i]
                             for i in r["deleted"])
        names.append(", ".join(held) + (" (downsampling)" if r["downsampling"] else ""))
    head = f"{unit} deleted"
    width = max([len(head)] + [len(n) for n in names])
    items = "tokens" if each.tokens else "examples"
    lines = [f"intact error {_pct(each.intact_error)} on {each.num_examples} {items} (95% "
             f"interval {_pct(intact['error_lo'])} to {_pct(intact['error_hi'])})" +
             (f", top-5 error {_pct(intact['top5_error'])}" if top5 else ""), "",
             f"{head:<{width}}  {'error':>7}  change from intact" +
             ("  top-5 error" if top5 else "")]
    for name, r in zip(names, each.rows[1:]):
        lines.append(f"{name:<{width}}  {_pct(r['error']):>7}  "
                     f"{_pct(r['error'] - each.intact_error, sign=True):>7}" +
                     (f"  {_pct(r['top5_error']):>11}" if top5 else ""))
    k_head = f"random {unit}s deleted"
    lines += ["", f"{k_head}  trials  mean error  95% interval (across trials)"]
    for r in rand.summary():
        lines.append(f"{r['k']:>{len(k_head)}}  {r['trials']:>6}  {_pct(r['error_mean']):>10}  "
                     f"{_pct(r['error_lo'])} to {_pct(r['error_hi'])}")
    return lines


def _pct(v, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):  # a condition with non-finite logits
        return "n/a"
    return f"{v:+.2%}" if sign else f"{v:.2%}"


def reorder(args) -> int:
    _check_out(args)
    view, data, meta, data_info = setup(args)
    most = lesion_mod.most_swaps(view, args.unit)
    swaps = _counts(args.swaps or doubling(most), most, "--swaps", f"the {args.unit}s of equal "
                    f"shape allow at most {most} disjoint swaps")
    _conditions(len(swaps) * args.trials, f"{len(swaps)} swap counts x --trials {args.trials}")
    with _open_out(args) as out:
        res = lesion_mod.reorder(view, data, swaps=swaps, trials=args.trials, seed=args.seed,
                                 unit=args.unit, out=out / SWEEPS / "reorder.csv",
                                 progress=_progress(args))
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


def importance(args) -> int:
    """The peers' importance scores alone (measure/importance.py), the units to remove for
    --n, and with --export the model without them (view.pruned)."""
    from ..measure.importance import angular_distance, block_influence
    _check_out(args)
    view, data, meta, data_info = setup(args)
    spans = view.layers if args.unit == "layer" else [[b.index] for b in view.blocks]
    n, what = args.n_remove, f"{args.unit}s"
    if n > len(spans):
        raise PathensError(f"--n {n} is more than the {len(spans)} {what} of the network")
    # a score compares the stream before and after: defined where its shape stays the same
    same = [view.blocks[s[0]].in_shape == view.blocks[s[-1]].out_shape for s in spans]
    if args.score == "bi" and sum(same) < n:
        raise PathensError(f"--n {n}: only {sum(same)} {what} have a Block Influence (the others "
                           f"change the stream's shape)")
    if args.score == "angular" and not any(
            view.blocks[spans[l][0]].in_shape == view.blocks[spans[l + n - 1][-1]].out_shape
            for l in range(len(spans) - n + 1)):
        raise PathensError(f"--n {n}: no {n} consecutive {what} keep the stream's shape, so no "
                           f"angular distance is defined; lower --n")
    if args.positions and args.score != "angular":
        raise PathensError("--positions applies to --score angular (Block Influence averages "
                           "every position, as ShortGPT)")
    if args.positions == "last" and len(view.blocks[0].in_shape) != 2:
        raise PathensError(f"--positions last needs a stream of tokens (N, T, d); this model's "
                           f"is (N, {', '.join(map(str, view.blocks[0].in_shape))})")
    export = _check_export(args, view, meta)
    kw = dict(unit=args.unit, batch_size=args.batch_size or 64)
    with _open_out(args) as out:
        if args.score == "bi":
            res = block_influence(view, data, **kw)
            remove = sorted(res.ranking()[:n])  # the lowest (NaN: last, and refused above)
            rows = [dict(r, remove=r["index"] in remove) for r in res.table()]
        else:
            res = angular_distance(view, data, n, positions=args.positions, **kw)
            remove = list(range(res.best, res.best + n))
            rows = [dict(r, remove=r["start"] == res.best) for r in res.table()]
        names = [res.names[i] for i in remove]
        blocks = sorted(view.indices(names))
        summary = dict(score=args.score, n=args.n_remove, unit=args.unit, remove=names,
                       remove_blocks=blocks, result=res.to_dict())
        stem = "block_influence" if args.score == "bi" else f"angular_distance_n{args.n_remove}"
        write_text(out / f"{stem}.csv", csv_text(rows))
        write_text(out / f"{stem}.json", json.dumps(summary, indent=2, default=str))
        exported = _export(args, view, meta, blocks, export) if export is not None else None
        _write_config(args, out, model=meta, data=data_info, importance=res.config,
                      remove=names, export=exported)
    log = _log(args)
    log("\n".join(_importance_lines(args, res, remove)))
    log(f"remove ({args.n_remove} {args.unit}{'s' * (args.n_remove > 1)}): {', '.join(names)}")
    if exported:
        log(f"exported the pruned model to {exported}")
    log(f"wrote {out}/{stem}.{{csv,json}}")
    return 0


def _importance_lines(args, res, remove: list) -> list:
    width = max(len(n) for n in res.names)
    if args.score == "bi":
        lines = [f"{'':2}{args.unit:<{width}}  {'BI':>9}  {'cosine':>9}"]
        lines += [f"{'x ' if i in remove else '  '}{n:<{width}}  {bi:>9.5f}  {c:>9.5f}"
                  for i, (n, bi, c) in enumerate(zip(res.names, res.influence, res.cosine))]
        return lines
    lines = [f"{'':2}{'from':<{width}}  {'to':<{width}}  {'distance':>9}   (positions: "
             f"{res.config['positions']})"]
    lines += [f"{'x ' if l == res.best else '  '}{res.names[l]:<{width}}  "
              f"{res.names[l + res.n - 1]:<{width}}  {d:>9.5f}"
              for l, d in zip(res.starts, res.distance)]
    return lines


def _check_export(args, view, meta):
    """--export checked before --out is touched: a folder (empty unless --force), apart from
    --out, and a model it can save: Hugging Face (save_pretrained) or a pathens model."""
    if not args.export:
        return None
    folder = Path(args.export)
    if folder.exists() and not folder.is_dir():
        raise PathensError(f"--export {folder} is a file, not a folder: choose another path")
    if folder.is_dir() and any(folder.iterdir()) and not args.force:
        raise PathensError(f"--export {folder} already holds files: choose another folder, or "
                           f"pass --force to write over them")
    a, b = folder.absolute(), Path(args.out).absolute()
    if a == b or b in a.parents or a in b.parents:
        raise PathensError(f"--export {folder} and --out {args.out} must be separate folders")
    model = view.model
    if not hasattr(model, "save_pretrained"):
        try:
            checkpoints.builder_of(model)
        except PathensError:
            raise PathensError(f"--export writes Hugging Face folders and pathens checkpoints; "
                               f"{type(model).__name__} is neither: in Python, "
                               f"pathens.wrap(model).pruned(blocks) returns the pruned model to "
                               f"save as you save it") from None
    return folder


def _export(args, view, meta, blocks: list, folder: Path) -> str:
    """The pruned model saved in folder (rank 0 alone): save_pretrained and the source's
    tokenizer files, or a pathens checkpoint; pruned.json says what was removed, and why."""
    import shutil
    from ..models.cifar import CifarResNet
    if not writer():
        return str(folder)
    model = view.model
    # a CIFAR ResNet rebuilds from its architecture: its deleted branches are zeroed, not cut
    how = "zero" if isinstance(model, CifarResNet) else "remove"
    pruned = view.pruned(blocks, how=how)
    folder.mkdir(parents=True, exist_ok=True)
    provenance = dict(source=str(args.checkpoint or meta.get("hf_dir") or args.model),
                      deleted_blocks=[view.blocks[i].name for i in blocks], how=how,
                      score=args.score, n=args.n_remove, unit=args.unit,
                      command=_command_line(args))
    if hasattr(pruned, "save_pretrained"):
        from transformers.utils import logging as hf_logging
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Writing model shards" bar: we say it once
        try:
            pruned.save_pretrained(folder)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        source = Path(meta["hf_dir"]) if meta.get("hf_dir") else None
        for name in _HF_SIDE_FILES:
            if source is not None and (source / name).is_file() and not (folder / name).exists():
                shutil.copy2(source / name, folder / name)
        where = folder
    else:
        where = folder / "model.pt"
        checkpoints.save_checkpoint(
            where, pruned, dataset=meta.get("dataset"), seed=meta.get("seed", 0),
            normalize=meta.get("normalize"), steps=meta.get("steps"), epochs=meta.get("epochs"),
            data=meta.get("data") if isinstance(meta.get("data"), dict) else None,
            extra=dict(pruned=provenance))
    write_text(folder / "pruned.json", json.dumps(provenance, indent=2))
    return str(where)


# a Hugging Face folder's files besides config and weights that the pruned folder keeps
_HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model",
                  "spiece.model", "sentencepiece.bpe.model", "preprocessor_config.json",
                  "generation_config.json", "chat_template.jinja")


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


# train's flags whose default depends on --arch: (resnet, gpt)
_TRAIN_DEFAULTS = dict(depth=(56, 6), width=(16, 64), lr=(0.1, 1e-3), batch_size=(128, 32),
                       weight_decay=(5e-4, 0.1), clip=(None, 1.0), norm=("bn", "pre"))
_NORMS = dict(resnet=("bn", "skipinit", "none", "fixup"), gpt=("pre", "post", "rezero", "none"))


def train(args) -> int:
    gpt = args.arch == "gpt"
    for key, defaults in _TRAIN_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, defaults[gpt])
    if args.norm not in _NORMS[args.arch]:
        raise PathensError(f"--norm {args.norm} is not a {args.arch} normalisation: choose "
                           f"{', '.join(_NORMS[args.arch])}")
    device = check_device(args.device)
    if gpt and args.data != "text":
        raise PathensError("--arch gpt trains on --data text (the Python standard library's "
                           "source, or --root FILE_OR_DIR of UTF-8 text)")
    if not gpt and args.data == "text":
        raise PathensError("--data text trains a language model: add --arch gpt")
    out = prepare_file(args.out, force=args.force)  # before training: never lose a trained model
    return (_train_gpt if gpt else _train_resnet)(args, device, out)


def _train_resnet(args, device, out) -> int:
    from ..data.datasets import dataset_info
    from ..models.train import train as run_training
    if not args.data or args.data.endswith(".npz"):
        raise PathensError("--data must name a dataset to train on: digits, cifar10, mnist, "
                           "fashion-mnist (or text, with --arch gpt)")
    info = dataset_info(args.data)
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


def _train_gpt(args, device, out) -> int:
    from ..data.text import load_corpus
    from ..models.train_text import save_lm_checkpoint, train_lm
    from ..models.transformer import gpt
    torch.manual_seed(args.seed)
    corpus = load_corpus(args.root, tokenizer=args.tokenizer or "bytes")
    try:
        model = gpt(depth=args.depth, width=args.width, heads=args.heads, context=args.context,
                    vocab_size=corpus.vocab_size, norm=args.norm, mlp_ratio=args.mlp_ratio,
                    dropout=args.dropout, alpha_init=args.alpha_init)
    except PathensError as err:
        raise PathensError(f"pathens train: the network cannot be built: {err}") from None
    result = train_lm(model, corpus.train, steps=args.steps, batch_size=args.batch_size,
                      seq_len=args.seq_len or args.context, lr=args.lr,
                      warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                      clip_grad_norm=args.clip, seed=args.seed, device=device,
                      eval_data=corpus.windows("test", seq_len=args.seq_len or args.context,
                                               limit=args.limit or 512),
                      eval_every=max(1, args.steps // 10), progress=not args.quiet,
                      log=_log(args))
    save_lm_checkpoint(out, model, result, data=corpus.description, command=_command_line(args))
    _log(args)(f"test next-token loss {result.loss:.4f} (perplexity {result.perplexity:.2f}) "
               f"after {args.steps} steps; wrote {out}")
    return 0


def demo(args) -> int:
    from ..demo import run_demo
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
