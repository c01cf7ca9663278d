"""He, Zhang, Ren & Sun (CVPR 2016), Fig. 1 and 6: the degradation problem. A deeper *plain*
network reaches a higher TRAINING error than a shallower one (plain-56 above plain-20 on
CIFAR-10), so the problem is optimisation, not overfitting; with identity shortcuts the deeper
network is the better one.

For each dataset, plain and residual CIFAR networks (pathens.cifar_resnet(depth, skip=False /
True), post-activation BasicBlocks with BatchNorm, option-A shortcuts: the same layers, with and
without the shortcuts) at three depths, trained with one recipe; per epoch the training error
(the running error over the epoch's augmented batches in train mode, as He et al. plot it,
and the clean error of the final weights on up to --train-eval training images in eval mode)
and the test error.

Datasets: "digits" (scikit-learn's 8x8 digits, bundled: 1438 train / 359 test), "cifar-subset"
(the first 4000 CIFAR-10 training images and the first 1000 test images in
../shared/realdata, or $PATHENS_REALDATA; skipped with a note when absent), "cifar10" (the
full set, from --root).

CPU scale (default: digits, depths 8/20/56, width 8, 40 epochs, 3 seeds; 4 min of CPU):

    OMP_NUM_THREADS=1 python experiments/degradation.py
    OMP_NUM_THREADS=1 python experiments/degradation.py --data cifar-subset --depths 8 20 44 \
        --train-limit 1000 --test-limit 500 --train-eval 500 --epochs 12 --batch-size 64 \
        --seeds 0 --out experiments/results/degradation_cifar

Paper scale (He et al.: width 16, 20/32/44/56 layers, 64k iterations of batch 128, about 164
epochs; they divide the learning rate by 10 at 32k and 48k iterations, ours follows a cosine):

    python experiments/degradation.py --data cifar10 --root ~/cifar-10-batches-py \
        --depths 20 32 44 56 --width 16 --epochs 164 --device cuda --out results/degradation_paper

Writes curves.csv (one row per network, seed and epoch), summary.csv (one row per network:
final errors, mean over seeds), results.json (the command, every flag, the findings) and a
figure per dataset, degradation_<data>.png (He et al.'s Fig. 1 / 6 layout: plain left,
residual right; thick: training error, thin: test error).
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

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pathens  # noqa: E402
from pathens.data import dataset_info, load_dataset, load_npz  # noqa: E402
from pathens.models.train import evaluate, train  # noqa: E402

HERE = Path(__file__).resolve().parent
REALDATA = Path(os.environ.get("PATHENS_REALDATA") or HERE.parent.parent / "shared" / "realdata")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["digits"],
                   choices=["digits", "cifar-subset", "cifar10"])
    p.add_argument("--root", help="folder of the CIFAR-10 python batches (--data cifar10)")
    p.add_argument("--train-limit", type=int, help="train on the first N training images")
    p.add_argument("--test-limit", type=int, help="test on the first N test images")
    p.add_argument("--train-eval", type=int, default=1000,
                   help="training images the clean training error is measured on each epoch")
    p.add_argument("--depths", type=int, nargs="+", default=[8, 20, 56])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=1e-4, help="He et al.: 1e-4")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(HERE / "results" / "degradation"))
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def load_data(args, name):
    """(train, test, info dict), or None (with a printed note) when the files are absent."""
    if name == "digits":
        train_data, test_data = load_dataset("digits", split="train"), load_dataset("digits")
        about = "scikit-learn digits, 8x8 grey (bundled)"
    elif name == "cifar-subset":
        files = [REALDATA / "cifar10_train_first4000.npz", REALDATA / "cifar10_test_first1000.npz"]
        if not all(f.is_file() for f in files):
            print(f"degradation.py: {files[0].name} / {files[1].name} not in {REALDATA}: the "
                  f"CIFAR-10 subset is skipped (set PATHENS_REALDATA)", file=sys.stderr)
            return None
        # the CIFAR-10 training set's own statistics, as He et al. subtract the per-pixel mean
        train_data, test_data = (load_npz(f, normalize="cifar10") for f in files)
        about = "CIFAR-10: first 4000 training images, first 1000 test images"
    else:
        train_data = load_dataset("cifar10", root=args.root, split="train", normalize="cifar10")
        test_data = load_dataset("cifar10", root=args.root, split="test", normalize="cifar10")
        about = f"CIFAR-10 from {args.root}"
    if args.train_limit:
        train_data = tuple(t[:args.train_limit] for t in train_data)
    if args.test_limit:
        test_data = tuple(t[:args.test_limit] for t in test_data)
    info = dataset_info("digits" if name == "digits" else "cifar10")
    return train_data, test_data, dict(dataset=name, about=about, train=len(train_data[1]),
                                       test=len(test_data[1]), in_channels=info.in_channels,
                                       augment=info.augment)


def train_one(args, data, depth, skip, seed, log):
    """Train one network; per-epoch rows of its training and test errors."""
    train_data, test_data, info = data
    torch.manual_seed(seed)
    model = pathens.cifar_resnet(depth, norm="bn", skip=skip, width=args.width,
                                 in_channels=info["in_channels"])
    # the clean training error: the final weights of each epoch on fixed training images
    clean = tuple(t[:args.train_eval].to(args.device) for t in train_data)
    clean_errors = []

    def after_epoch(_line):  # train() calls its log once per epoch, after the test evaluation
        clean_errors.append(1 - evaluate(model, clean, device=args.device)[1])

    result = train(model, train_data, epochs=args.epochs, lr=args.lr,
                   weight_decay=args.weight_decay, batch_size=args.batch_size,
                   augment=info["augment"], warmup_epochs=args.warmup, seed=seed,
                   device=args.device, eval_data=test_data, progress=False, log=after_epoch)
    name = f"{'residual' if skip else 'plain'}-{depth}"
    rows = [dict(dataset=info["dataset"], network=name, kind="residual" if skip else "plain",
                 depth=depth, seed=seed, epoch=h["epoch"], lr=h["lr"],
                 train_error_running=1 - h["train_accuracy"], train_error=e,
                 test_error=1 - h["eval_accuracy"], train_loss=h["train_loss"],
                 test_loss=h["eval_loss"], seconds=round(h["seconds"], 2))
            for h, e in zip(result.history, clean_errors)]
    last = rows[-1]
    log(f"{info['dataset']:12s} {name:12s} seed {seed}: train error {last['train_error']:6.2%} "
        f"(running {last['train_error_running']:6.2%}), test error {last['test_error']:6.2%}, "
        f"{result.seconds:.0f} s")
    return rows


def summarise(curves):
    """One row per (dataset, network): final errors, mean and spread over seeds, and the mean
    running training error over all epochs (how fast it converged)."""
    out = []
    keys = sorted({(r["dataset"], r["kind"], r["depth"]) for r in curves},
                  key=lambda k: (k[0], k[1], k[2]))
    for dataset, kind, depth in keys:
        runs = [r for r in curves
                if (r["dataset"], r["kind"], r["depth"]) == (dataset, kind, depth)]
        last_epoch = max(r["epoch"] for r in runs)
        final = [r for r in runs if r["epoch"] == last_epoch]

        def stat(key, rows=final):
            v = np.array([r[key] for r in rows])
            return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        seeds = sorted({r["seed"] for r in runs})
        auc = [np.mean([r["train_error_running"] for r in runs if r["seed"] == s]) for s in seeds]
        row = dict(dataset=dataset, network=f"{kind}-{depth}", kind=kind, depth=depth,
                   seeds=len(seeds), epochs=last_epoch)
        for key in ("train_error", "train_error_running", "test_error"):
            row[f"final_{key}"], row[f"final_{key}_sd"] = stat(key)
        row["mean_running_train_error_over_epochs"] = float(np.mean(auc))
        out.append(row)
    return out


def findings(summary):
    """Per dataset and kind: do the final training errors rise with depth?"""
    out = {}
    for dataset in sorted({r["dataset"] for r in summary}):
        for kind in ("plain", "residual"):
            rows = sorted((r for r in summary if r["dataset"] == dataset and r["kind"] == kind),
                          key=lambda r: r["depth"])
            err = [r["final_train_error"] for r in rows]
            speed = [r["mean_running_train_error_over_epochs"] for r in rows]
            out[f"{dataset}/{kind}"] = dict(
                depths=[r["depth"] for r in rows], final_train_error=err,
                deepest_above_shallowest=bool(err[-1] > err[0]),
                rises_monotonically=bool(all(a < b for a, b in zip(err, err[1:]))),
                mean_running_train_error=speed,
                slower_with_depth=bool(all(a < b for a, b in zip(speed, speed[1:]))))
    return out


def plot(curves, dataset, path):
    """He et al.'s layout: plain (left) and residual (right); per depth one colour, thick
    training error (running, as theirs), thin test error; mean over seeds."""
    fig, axs = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True, layout="constrained")
    rows = [r for r in curves if r["dataset"] == dataset]
    depths = sorted({r["depth"] for r in rows})
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(depths)))
    for ax, kind in zip(axs, ("plain", "residual")):
        for depth, color in zip(depths, colors):
            runs = [r for r in rows if r["kind"] == kind and r["depth"] == depth]
            epochs = sorted({r["epoch"] for r in runs})
            for key, lw, ls in (("train_error_running", 2.0, "-"), ("test_error", 0.9, "--")):
                y = [100 * np.mean([r[key] for r in runs if r["epoch"] == e]) for e in epochs]
                ax.plot(epochs, y, color=color, lw=lw, ls=ls,
                        label=f"{kind}-{depth}" if key == "test_error" else None)
        ax.set_title(f"{kind} ({dataset})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="thick: train, dashed: test", title_fontsize=7)
    axs[0].set_ylabel("error (%)")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python experiments/degradation.py " + " ".join(
        shlex.quote(v) for v in (sys.argv[1:] if argv is None else argv))
    curves, datasets = [], []
    for name in args.data:
        data = load_data(args, name)
        if data is None:
            continue
        datasets.append(data[2])
        for depth in args.depths:
            for skip in (False, True):
                for seed in args.seeds:
                    curves += train_one(args, data, depth, skip, seed, log)
        plot(curves, name, out / f"degradation_{name}.png")
    if not curves:
        print("degradation.py: no dataset to run", file=sys.stderr)
        sys.exit(2)
    summary = summarise(curves)
    write_csv(out / "curves.csv", curves)
    write_csv(out / "summary.csv", summary)
    found = findings(summary)
    for key, f in found.items():
        log(f"{key:24s} final train error by depth {f['depths']}: "
            + ", ".join(f"{100 * e:.2f}%" for e in f["final_train_error"])
            + "  (mean over epochs: " + ", ".join(f"{100 * e:.1f}%" for e in
                                                    f["mean_running_train_error"]) + ")")
    results = dict(command=command, config=vars(args), datasets=datasets,
                   model="pathens.cifar_resnet(depth, norm='bn', skip=...) post-activation, "
                         "option-A shortcuts", summary=summary, findings=found,
                   seconds=round(time.perf_counter() - start, 1))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log(f"wrote {out}/ in {results['seconds']:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except pathens.PathensError as err:  # bad input: one line, exit code 2
        print(f"degradation.py: {err}", file=sys.stderr)
        sys.exit(2)
