"""De & Smith (NeurIPS 2020): BatchNorm biases residual networks towards shallow paths; SkipInit
trains deep networks without normalisation.

(a) Branch variance at initialisation. For pre- and post-activation BN CIFAR ResNets of depths
    20, 56, 110 (He init, BN statistics calibrated on real inputs with recalibrate_batchnorm),
    each block's branch-to-shortcut variance ratio r_l (l = 0..n-1) and r_l * (l+1), which the
    BN variance model predicts to be about 1 (Var(x_{l+1}) ~ Var(x_l) + 1, so r_l ~ 1/(l+1));
    the mean path length those ratios imply, next to the analytic BN model's
    (paths.bn_variance_distribution, mean H_{n+1} - 1).
(b) Effective depth of BN vs SkipInit networks trained on digits, depths 20, 56, 110: gradient
    (exact: mean length and shortest 90% interval), variance model, and lesion (random blocks
    deletable within 2 points of error). Width 8 and the demo's recipe (pathens.demo._TRAIN);
    the bundled demo checkpoints are reused for 56 and 110, depth 20 is trained here
    (--depth 1202 adds SkipInit at 1202 layers: slow on a CPU).

CPU scale (default, a few minutes on one core):

    OMP_NUM_THREADS=1 python experiments/bn_vs_skipinit.py

Paper scale: --data cifar10 --root DIR --device cuda --epochs 160 --width 16 (trains every
network; the bundled digits checkpoints are then not used). Writes variance_at_init.csv,
effective_depth.csv, results.json and a pathens report (report.md) into --out.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pathens
from pathens.models import checkpoints
from pathens import paths, report
from pathens.analysis import analyze
from pathens.data.datasets import dataset_info, load_dataset
from pathens.demo import _TRAIN, WIDTH, bundled_dir, checkpoint_name
from pathens.models.modes import recalibrate_batchnorm
from pathens.models.train import train

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="digits (default) or cifar10 (with --root)")
    p.add_argument("--root", help="folder of the CIFAR-10 python batches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110])
    p.add_argument("--depth", type=int, action="append", default=[],
                   help="an extra depth for SkipInit only in part (b), e.g. 1202")
    p.add_argument("--epochs", type=int, default=_TRAIN["epochs"])
    p.add_argument("--width", type=int, default=WIDTH)
    p.add_argument("--calibration", type=int, default=512, help="inputs used to calibrate BN (a)")
    p.add_argument("--samples", type=int, default=0, help="sampled paths per length in (b) (0: exact only)")
    p.add_argument("--trials", type=int, default=3, help="random-lesion / reorder trials per k in (b)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", choices=["a", "b"], help="skip one part")
    p.add_argument("--out", default=str(HERE / "results" / "bn_vs_skipinit"))
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _rel(path) -> str:
    """path relative to the repository when inside it (results stay portable)."""
    try:
        return str(Path(path).resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


# ---- (a) branch variance at initialisation ---------------------------------------------------

def variance_at_init(args, info, x_cal, log):
    rows, summary = [], []
    for preact in (True, False):
        for depth in args.depths:
            torch.manual_seed(args.seed)
            model = pathens.cifar_resnet(depth, norm="bn", preact=preact, width=args.width,
                                         in_channels=info.in_channels, num_classes=info.num_classes)
            model = model.to(args.device)
            recalibrate_batchnorm(model, x_cal)
            bv = pathens.branch_variance(pathens.wrap(model, example_input=x_cal[:2]), x_cal)
            n = len(bv.ratios)
            scaled = bv.ratios * np.arange(1, n + 1)  # r_l * (l+1), l = 0..n-1
            kind = "pre-activation" if preact else "post-activation"
            for i, (r, s) in enumerate(zip(bv.ratios, scaled)):
                rows.append(dict(block_type=kind, depth=depth, block=i, ratio=float(r),
                                 ratio_times_l_plus_1=float(s)))
            analytic = paths.distribution_mean(paths.bn_variance_distribution(n))
            measured = paths.distribution_mean(bv.distribution)
            # skip the first block of each stage (downsampling + the stem) in the median
            summary.append(dict(block_type=kind, depth=depth, blocks=n,
                                median_ratio_times_l_plus_1=float(np.median(scaled)),
                                last_ratio_times_l_plus_1=float(scaled[-1]),
                                mean_path_length_measured=measured,
                                mean_path_length_bn_model=analytic))
            log(f"(a) {kind:15s} ResNet-{depth:<4d} r_l(l+1): median {np.median(scaled):.2f}, "
                f"last {scaled[-1]:.2f}; implied mean path length {measured:.2f} "
                f"(BN model {analytic:.2f})")
    return rows, summary


# ---- (b) effective depth of trained BN vs SkipInit networks ----------------------------------

def trained_model(args, info, norm, depth, ckpt_dir, log):
    """A trained network: the bundled demo checkpoint when it matches, else trained here."""
    name = f"{'BN' if norm == 'bn' else 'SkipInit'} ResNet-{depth}"
    bundled = bundled_dir() / checkpoint_name(name)
    default_recipe = args.data == "digits" and args.epochs == _TRAIN["epochs"] and args.width == WIDTH
    if default_recipe and bundled.is_file():
        model, meta = checkpoints.load(bundled, device=args.device)
        return name, model, dict(arch=meta["arch"], accuracy=meta["accuracy"],
                                 checkpoint=f"pathens/bundled/{bundled.name}")
    path = ckpt_dir / checkpoint_name(name)
    if path.is_file():  # trained by an earlier run with the same settings
        model, meta = checkpoints.load(path, device=args.device)
        return name, model, dict(arch=meta["arch"], accuracy=meta["accuracy"], checkpoint=_rel(path))
    model = pathens.cifar_resnet(depth, norm=norm, width=args.width, in_channels=info.in_channels,
                                 num_classes=info.num_classes)
    kw = dict(_TRAIN, epochs=args.epochs)
    result = train(model, load_dataset(args.data, root=args.root, split="train"),
                   augment=info.augment, seed=args.seed, device=args.device,
                   eval_data=load_dataset(args.data, root=args.root, split="test"),
                   progress=False, **kw)
    checkpoints.save_checkpoint(path, model, dataset=args.data, seed=args.seed, epochs=args.epochs,
                                accuracy=result.accuracy, extra=dict(recipe=name, train=kw))
    log(f"(b) trained {name}: {args.epochs} epochs in {result.seconds:.0f} s, test accuracy "
        f"{result.accuracy:.2%}")
    return name, model, dict(arch=dict(model.config) if hasattr(model, "config") else {},
                             accuracy=result.accuracy, checkpoint=_rel(path))


def alpha_stats(model) -> dict:
    """Median and largest |alpha| over SkipInit's branch scalars (NaN for BN networks)."""
    a = [p.detach().abs().flatten() for n, p in model.named_parameters() if n.endswith("alpha")]
    if not a:
        return dict(alpha_abs_median=float("nan"), alpha_abs_max=float("nan"))
    a = torch.cat(a)
    return dict(alpha_abs_median=float(a.median()), alpha_abs_max=float(a.max()))


def effective_depths(args, info, out, log):
    x, y = load_dataset(args.data, root=args.root, split="test")
    x, y = x.to(args.device), y.to(args.device)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    nets = [(norm, d) for d in args.depths for norm in ("bn", "skipinit")]
    nets += [("skipinit", d) for d in args.depth if d not in args.depths]
    analyses, rows = [], []
    for norm, depth in nets:
        name, model, info_m = trained_model(args, info, norm, depth, ckpt_dir, log)
        view = pathens.wrap(model, example_input=x[:2])
        a = analyze(view, (x, y), name=name, model_info=info_m,
                    data_info=dict(dataset=args.data, split="test", examples=len(y)),
                    gradient_examples=len(y) if len(y) <= 512 else 256,
                    samples_per_length=args.samples, trials=args.trials, seed=args.seed,
                    lesion_dir=out / "sweeps" / checkpoint_name(name)[:-3],
                    progress=False, log=lambda *a: None)
        g, v, l = a.depth["gradient (exact)"], a.depth["variance"], a.depth["lesion"]
        rows.append(dict(network=name, norm=norm, depth=depth, blocks=view.num_blocks,
                         test_error=a.intact_error, gradient_mean=g.mean, gradient_mode=g.mode,
                         gradient_90_lo=g.interval[0], gradient_90_hi=g.interval[1],
                         gradient_90_path_fraction=g.path_fraction, variance_mean=v.mean,
                         bn_model_mean=paths.distribution_mean(paths.bn_variance_distribution(view.num_blocks)),
                         lesion_within_2pts=l.depth, **alpha_stats(model),
                         checkpoint=info_m["checkpoint"]))
        log(f"(b) {name:20s} error {a.intact_error:6.2%}  gradient mean {g.mean:5.2f} "
            f"90% in {g.interval[0]}-{g.interval[1]}  variance {v.mean:5.2f}  lesion {l.depth:.0f} "
            f"of {view.num_blocks}")
        analyses.append(a)
    return analyses, rows


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = dataset_info(args.data)
    command = "python experiments/bn_vs_skipinit.py " + " ".join(shlex.quote(v) for v in (argv or sys.argv[1:]))
    results = dict(command=command, config=vars(args))
    if args.skip != "a":
        x_cal, _ = load_dataset(args.data, root=args.root, split="train")
        g = torch.Generator().manual_seed(args.seed)
        x_cal = x_cal[torch.randperm(len(x_cal), generator=g)[:args.calibration]].to(args.device)
        rows, summary = variance_at_init(args, info, x_cal, log)
        write_csv(out / "variance_at_init.csv", rows)
        write_csv(out / "variance_at_init_summary.csv", summary)
        results["variance_at_init"] = summary
    if args.skip != "b":
        analyses, rows = effective_depths(args, info, out, log)
        write_csv(out / "effective_depth.csv", rows)
        results["effective_depth"] = rows
        report.write(out / "report", analyses, title=f"BN vs SkipInit on {args.data}: effective depth",
                     command=command)
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log(f"wrote {out}/ in {results['seconds']:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except pathens.PathensError as err:  # bad input: one line, exit code 2
        print(f"bn_vs_skipinit.py: {err}", file=sys.stderr)
        sys.exit(2)
