"""Why residual networks train, seen in their signals: gradient flow and signal propagation
plots (Brock, De & Smith 2021), norm preservation (Zaeemzadeh, Rahnavard & Shah 2020), and
BN vs SkipInit vs Fixup (De & Smith 2020; Zhang, Dauphin & Ma 2019).

(a) flow:  plain vs residual, BN vs no normalisation, at 32 layers (15 blocks of two 3x3
           convs, the stem and the classifier): per block the forward signal (average channel
           squared mean and variance of the stream, the branch's variance) and the gradient
           norm ||dL/dx_i|| (pathens.signal_propagation), at initialisation and after a short
           training; the headline: the gradient reaching the first block as a fraction of the
           one at the last block's output.
(b) norm:  norm preservation, ratio_i = ||dL/dx_i|| / ||dL/dx_{i+1}|| per block, at
           initialisation for BN ResNet-20/56/110 (width 16) and on the pretrained akamaster
           ResNet-20/32/44/56 (../shared/realdata): do deeper networks preserve the norm better
           (ratios closer to 1), and are the transition (downsampling) blocks the outliers?
(c) norms: BN vs SkipInit vs Fixup ResNet-32 at initialisation and after a short training:
           signal propagation and the effective depth from the exact path gradients
           (pathens.path_gradients + pathens.effective_depth).

Data: the CIFAR-10 subset of ../shared/realdata (or $PATHENS_REALDATA) when present (train on
the first --train-limit of its 4000 training images, measure on the first --examples of its
1000 test images), else scikit-learn's digits (part (b)'s akamaster networks then skipped).
Images are normalised with the ImageNet statistics the akamaster networks expect, for every
network. BN networks at initialisation are measured on their batch statistics, as Brock et al.
do: the running statistics recalibrated on 512 training images.

CPU scale (default: width 8 for (a) and (c), 4 epochs on 1000 images, 256 measured; ~3 min
of CPU):

    OMP_NUM_THREADS=1 python experiments/signal_flow.py

Paper scale: --data cifar10 --root DIR --width 16 --epochs 160 --train-limit 0 --examples 10000
--depths 20 56 110 164 --device cuda (trains the networks of (a) and (c); the trained networks of
(b) stay the akamaster checkpoints: no trained ResNet-110 or deeper is available here).

Writes signal.csv (one row per network, state and block: pathens.SignalPropagation.table()),
summary.csv (one row per network and state), results.json (command, flags, summaries) and
the figures flow_init.png, flow_trained.png, norm_ratio.png, norms_init.png,
norms_trained.png into --out.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
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
from pathens.data import load_dataset, load_npz  # noqa: E402
from pathens.models.modes import recalibrate_batchnorm  # noqa: E402
from pathens.models.train import evaluate, train  # noqa: E402
from pathens.report.plots.signal import plot_signal_propagation  # noqa: E402

HERE = Path(__file__).resolve().parent
REALDATA = Path(os.environ.get("PATHENS_REALDATA") or HERE.parent.parent / "shared" / "realdata")
NAMES = {"bn": "BN", "none": "no norm", "skipinit": "SkipInit", "fixup": "Fixup"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["flow", "norm", "norms"],
                   choices=["flow", "norm", "norms"])
    p.add_argument("--data", default="auto", choices=["auto", "cifar-subset", "digits", "cifar10"],
                   help="auto: the CIFAR-10 subset when present, else digits")
    p.add_argument("--root", help="folder of the CIFAR-10 python batches (--data cifar10)")
    p.add_argument("--train-limit", type=int, default=1000, help="training images (0: all)")
    p.add_argument("--examples", type=int, default=256, help="test images measured")
    p.add_argument("--gradient-examples", type=int, default=128,
                   help="test images for the path gradients of (c)")
    p.add_argument("--flow-depth", type=int, default=32, help="(a): 6n+2 layers")
    p.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110], help="(b) at init")
    p.add_argument("--norms-depth", type=int, default=32, help="(c)")
    p.add_argument("--width", type=int, default=8, help="(a) and (c); (b) uses 16 as He et al.")
    p.add_argument("--epochs", type=int, default=4, help="the short training of (a) and (c)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(HERE / "results" / "signal_flow"))
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def write_csv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every column, in first-seen order
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def load_data(args):
    """(train, test, about): train on its first --train-limit examples, test its first
    --examples."""
    name = args.data
    npz = [REALDATA / "cifar10_train_first4000.npz", REALDATA / "cifar10_test_first1000.npz"]
    if name == "auto":
        name = "cifar-subset" if all(f.is_file() for f in npz) else "digits"
        if name == "digits":
            print(f"signal_flow.py: no CIFAR-10 subset in {REALDATA}: digits instead (set "
                  f"PATHENS_REALDATA)", file=sys.stderr)
    if name == "cifar-subset":
        train_data, test_data = (load_npz(f, normalize="imagenet") for f in npz)
    elif name == "cifar10":
        train_data, test_data = (load_dataset("cifar10", root=args.root, split=s)
                                 for s in ("train", "test"))
    else:
        train_data, test_data = load_dataset("digits", split="train"), load_dataset("digits")
    if args.train_limit:
        train_data = tuple(t[:args.train_limit] for t in train_data)
    test_data = tuple(t[:args.examples].to(args.device) for t in test_data)
    return name, train_data, test_data


def make(args, depth, norm, skip=True, width=None):
    torch.manual_seed(args.seed)
    in_channels = 1 if args.dataset == "digits" else 3
    return pathens.cifar_resnet(depth, norm=norm, skip=skip, width=width or args.width,
                                in_channels=in_channels).to(args.device)


def at_init(args, model, train_data):
    """A BN network at initialisation on batch statistics: recalibrated on 512 images."""
    if model.config["norm"] == "bn":
        recalibrate_batchnorm(model, train_data[0][:512].to(args.device))
    return model.eval()


def short_training(args, model, train_data, log, name):
    """Train in place with the demo's recipe (SGD, warm-up, clipping) for --epochs; returns
    a note, "diverged: ..." when the loss blew up (the model is then not measured)."""
    augment = "shift" if args.dataset == "digits" else "crop-flip"
    try:
        r = train(model, train_data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                  warmup_epochs=args.warmup, clip_grad_norm=args.clip or None, augment=augment,
                  seed=args.seed, device=args.device, progress=False)
    except pathens.PathensError as err:
        log(f"  {name}: {err}")
        return f"diverged: {err}"
    return f"trained {args.epochs} epochs in {r.seconds:.0f} s"


def measure(view, test_data):
    return pathens.signal_propagation(view, test_data, progress=False)


def signal_summary(sp) -> dict:
    """The headline numbers of one SignalPropagation (NaN where no gradient reaches a block:
    Fixup at initialisation)."""
    trans = [i for i, d in enumerate(sp.downsample) if d]
    inner = [i for i in range(sp.num_blocks) if i not in trans]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = np.abs(np.log(sp.norm_ratio))
        first_over_output = sp.grad_norm[0] / sp.grad_norm[-1]
    return dict(
        blocks=sp.num_blocks,
        grad_first_over_output=float(first_over_output),
        variance_first=float(sp.channel_variance[0]),
        variance_output=float(sp.channel_variance[-1]),
        mean_sq_first=float(sp.channel_mean_sq[0]), mean_sq_output=float(sp.channel_mean_sq[-1]),
        ratio_median=float(np.median(sp.norm_ratio)),
        ratio_abs_log_mean_inner=float(np.mean(log_r[inner])),  # away from 1, non-transitions
        ratio_abs_log_max_inner=float(np.max(log_r[inner])),
        ratio_min_inner=float(np.min(sp.norm_ratio[inner])),
        ratio_max_inner=float(np.max(sp.norm_ratio[inner])),
        ratio_transitions=[round(float(sp.norm_ratio[i]), 4) for i in trans],
        ratio_abs_log_mean_transitions=float(np.mean(log_r[trans])) if trans else math.nan)


def table_rows(part, network, state, sp):
    return [dict(part=part, network=network, state=state, **row) for row in sp.table()]


def error_of(args, model, test_data) -> float:
    return 1 - evaluate(model, test_data, device=args.device)[1]


# ---- (a) plain vs residual, BN vs none -------------------------------------------------------

def flow(args, train_data, test_data, out, log):
    rows, summary, results = [], [], {"init": {}, "trained": {}}
    for norm in ("bn", "none"):
        for skip in (False, True):
            name = f"{'residual' if skip else 'plain'}-{args.flow_depth} {NAMES[norm]}"
            model = at_init(args, make(args, args.flow_depth, norm, skip), train_data)
            view = pathens.wrap(model, example_input=test_data[0][:2], allow_plain=True)
            for state in ("init", "trained"):
                note = "He init"
                if state == "trained":
                    note = short_training(args, model, train_data, log, name)
                    if note.startswith("diverged"):
                        summary.append(dict(part="flow", network=name, state=state, note=note))
                        continue
                sp = measure(view, test_data)
                results[state][name] = sp
                rows += table_rows("flow", name, state, sp)
                s = dict(part="flow", network=name, state=state, norm=norm, skip=skip,
                         test_error=error_of(args, model, test_data), note=note,
                         **signal_summary(sp))
                summary.append(s)
                log(f"(a) {name:22s} {state:7s}: gradient at block 0 / output "
                    f"{s['grad_first_over_output']:9.4g}, variance {s['variance_first']:.3g} -> "
                    f"{s['variance_output']:.3g}, squared mean {s['mean_sq_first']:.3g} -> "
                    f"{s['mean_sq_output']:.3g}, error {s['test_error']:.1%}")
    for state, res in results.items():
        if res:
            fig = plot_signal_propagation(res, title=f"{args.flow_depth} layers, {state} "
                                          f"({args.dataset})")
            fig.savefig(out / f"flow_{state}.png", dpi=90)
            plt.close(fig)
    return rows, summary


# ---- (b) norm preservation -------------------------------------------------------------------

def akamaster(arch):
    """The pretrained akamaster network (eval mode) or None when the file is absent."""
    found = sorted(REALDATA.glob(f"akamaster_{arch}-*.th"))
    return pathens.zoo.build(arch, found[0])[0].eval() if found else None


def norm_preservation(args, train_data, test_data, out, log):
    rows, summary, curves = [], [], []
    nets = [(f"BN ResNet-{d} (init)", "init", d) for d in args.depths]
    if args.dataset == "cifar-subset":
        nets += [(f"akamaster ResNet-{d}", "trained", d) for d in (20, 32, 44, 56)]
    for name, state, depth in nets:
        if state == "init":
            model = at_init(args, make(args, depth, "bn", width=16), train_data)
        else:
            model = akamaster(f"resnet{depth}")
            if model is None:
                log(f"(b) {name}: checkpoint not found in {REALDATA}, skipped")
                continue
            model = model.to(args.device)
        sp = measure(pathens.wrap(model, example_input=test_data[0][:2]), test_data)
        rows += table_rows("norm", name, state, sp)
        s = dict(part="norm", network=name, state=state, norm="bn", skip=True,
                 test_error=error_of(args, model, test_data), **signal_summary(sp))
        summary.append(s)
        curves.append((name, state, sp))
        log(f"(b) {name:24s} ratio: median {s['ratio_median']:.3f}, mean |log| "
            f"{s['ratio_abs_log_mean_inner']:.3f} (non-transition; range "
            f"{s['ratio_min_inner']:.2f}-{s['ratio_max_inner']:.2f}), transitions "
            f"{s['ratio_transitions']}, block 0 / output {s['grad_first_over_output']:.3g}")
    plot_ratios(curves, out / "norm_ratio.png")
    return rows, summary


def plot_ratios(curves, path):
    """norm_ratio per block against the block's relative depth i / n, init left, trained
    right; transition blocks as open circles."""
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True, layout="constrained")
    for ax, state in zip(axs, ("init", "trained")):
        these = [(n, sp) for n, s, sp in curves if s == state]
        colors = plt.cm.viridis(np.linspace(0, 0.85, max(1, len(these))))
        for (name, sp), color in zip(these, colors):
            x = (np.arange(sp.num_blocks) + 0.5) / sp.num_blocks
            ax.plot(x, sp.norm_ratio, color=color, lw=1.2, marker=".", ms=3, label=name)
            t = [i for i, d in enumerate(sp.downsample) if d]
            ax.scatter(x[t], sp.norm_ratio[t], s=40, facecolors="none", edgecolors="tab:red")
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("relative depth (block + 1/2) / n   (red circles: transition blocks)")
        ax.set_title("at initialisation (BN recalibrated)" if state == "init" else
                     "trained (akamaster checkpoints)", fontsize=10)
        ax.grid(alpha=0.3)
        if these:
            ax.legend(fontsize=7)
    axs[0].set_ylabel("||dL/dx_i|| / ||dL/dx_{i+1}||")
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- (c) BN vs SkipInit vs Fixup -------------------------------------------------------------

def norms(args, train_data, test_data, out, log):
    rows, summary, results = [], [], {"init": {}, "trained": {}}
    x, y = test_data[0][:args.gradient_examples], test_data[1][:args.gradient_examples]
    for norm in ("bn", "skipinit", "fixup"):
        name = f"{NAMES[norm]} ResNet-{args.norms_depth}"
        model = at_init(args, make(args, args.norms_depth, norm), train_data)
        view = pathens.wrap(model, example_input=x[:2])
        for state in ("init", "trained"):
            note = "init"
            if state == "trained":
                note = short_training(args, model, train_data, log, name)
                if note.startswith("diverged"):
                    summary.append(dict(part="norms", network=name, state=state, note=note))
                    continue
            sp = measure(view, test_data)
            pg = pathens.path_gradients(view, x, y, progress=False)
            # Fixup at init: the classifier is zero, so no gradient reaches the blocks at all
            ed = pathens.effective_depth(pg) if pg.total.sum() > 0 else None
            mean, (lo, hi) = (ed.mean, ed.interval) if ed else (math.nan, (math.nan, math.nan))
            results[state][name] = sp
            rows += table_rows("norms", name, state, sp)
            s = dict(part="norms", network=name, state=state, norm=norm, skip=True,
                     test_error=error_of(args, model, test_data), note=note,
                     **signal_summary(sp), effective_depth_mean=mean,
                     effective_depth_90_lo=lo, effective_depth_90_hi=hi,
                     path_gradient_residual=float(pg.residual),
                     branch_variance_median=float(np.nanmedian(sp.branch_variance)))
            alphas = [float(p.detach().abs().mean()) for n_, p in model.named_parameters()
                      if n_.endswith("alpha")]
            s["alpha_abs_mean"] = float(np.mean(alphas)) if alphas else math.nan
            summary.append(s)
            log(f"(c) {name:20s} {state:7s}: effective depth {mean:.2f} (90% in "
                f"{lo}-{hi} of {view.num_blocks}), variance "
                f"{s['variance_first']:.3g} -> {s['variance_output']:.3g}, gradient block 0 / "
                f"output {s['grad_first_over_output']:.3g}, error {s['test_error']:.1%}")
    for state, res in results.items():
        if res:
            fig = plot_signal_propagation(res, title=f"ResNet-{args.norms_depth}, {state} "
                                          f"({args.dataset})")
            fig.savefig(out / f"norms_{state}.png", dpi=90)
            plt.close(fig)
    return rows, summary


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python experiments/signal_flow.py " + " ".join(
        shlex.quote(v) for v in (sys.argv[1:] if argv is None else argv))
    args.dataset, train_data, test_data = load_data(args)
    rows, summary = [], []
    parts = dict(flow=flow, norm=norm_preservation, norms=norms)
    for part in args.parts:
        r, s = parts[part](args, train_data, test_data, out, log)
        rows += r
        summary += s
    write_csv(out / "signal.csv", rows)
    write_csv(out / "summary.csv", summary)
    results = dict(command=command, config=vars(args),
                   data=dict(dataset=args.dataset, train=len(train_data[1]),
                             measured=len(test_data[1]), normalisation="imagenet" if
                             args.dataset != "digits" else "digits"),
                   recipe=dict(optimizer="SGD momentum 0.9, weight decay 5e-4", lr=args.lr,
                               batch_size=args.batch_size, warmup_epochs=args.warmup,
                               clip_grad_norm=args.clip, epochs=args.epochs),
                   summary=summary, seconds=round(time.perf_counter() - start, 1))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log(f"wrote {out}/ in {results['seconds']:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except pathens.PathensError as err:  # bad input: one line, exit code 2
        print(f"signal_flow.py: {err}", file=sys.stderr)
        sys.exit(2)
