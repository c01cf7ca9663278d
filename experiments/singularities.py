"""Orhan & Pitkow (ICLR 2018), "Skip connections eliminate singularities": over training, plain
networks drift towards elimination singularities (units that are never active), overlap
singularities (units that copy each other) and linearly dependent units, each a degenerate
direction of the loss Hessian; skip connections break them.

Plain vs residual CIFAR networks of the same depth (pathens.cifar_resnet(depth, skip=False /
True): the same layers, with or without the shortcuts), with and without BatchNorm (Orhan &
Pitkow's networks had none), trained with one recipe; at several epochs of training
(checkpoints of the same run) pathens.singularities on the test images gives, per layer,
the fraction of eliminated units, of units in an overlapping pair, and the linear dependence
(participation ratio and the components holding 99% of the variance, as fractions of the
width). Layers: every ReLU output of the network, i.e. the hidden layer inside each block
("hidden") and the stream entering each block ("stream": a plain network's previous layer,
a residual network's relu(x + F(x))). Units are channels averaged over positions.

The Hessian of the loss at each checkpoint (top eigenvalues, trace, degenerate and negative
spectral mass) is measured when pathens.measure.hessian is available, else skipped with a
note.

CPU scale (default: digits, depth 20, width 8, 16 epochs, measured at epochs 0, 1, 2, 4, 8 and 16;
under a minute of CPU without the Hessian, a few minutes with it):

    OMP_NUM_THREADS=1 python experiments/singularities.py

Paper scale (Orhan & Pitkow: fully connected 20- and 30-layer networks on CIFAR-100 / SVHN;
here the convolutional ones on CIFAR-10):

    python experiments/singularities.py --data cifar10 --root DIR --width 16 --depth 32 \
        --epochs 100 --checkpoints 0 1 5 10 25 50 100 --examples 10000 --device cuda

Writes layers.csv (one row per network, epoch and layer: pathens.Singularities.table()),
summary.csv (one row per network and epoch: means over layers, the Hessian's numbers),
results.json (command, flags, summaries) and the figures singularities_training.png (means
over training) and singularities_layers.png (per layer, at the last checkpoint).
"""
from __future__ import annotations

import argparse
import copy
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
from pathens.report.plots.singularities import plot_singularities  # noqa: E402

try:  # written in another branch: used once merged
    from pathens.measure.hessian import hessian
except ImportError:
    hessian = None

HERE = Path(__file__).resolve().parent
REALDATA = Path(os.environ.get("PATHENS_REALDATA") or HERE.parent.parent / "shared" / "realdata")
METRICS = ("eliminated", "overlapping_units", "overlapping", "max_corr", "participation_ratio",
           "components")
NAMES = {"bn": "BN", "none": "no norm"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", choices=["digits", "cifar-subset", "cifar10"])
    p.add_argument("--root", help="folder of the CIFAR-10 python batches (--data cifar10)")
    p.add_argument("--train-limit", type=int, default=0, help="training images (0: all)")
    p.add_argument("--examples", type=int, default=1000, help="test images measured")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--norms", nargs="+", default=["none", "bn"], choices=["none", "bn"])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16],
                   help="epochs measured (0: at initialisation)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping (0: none)")
    # singularity thresholds (pathens.singularities' defaults)
    p.add_argument("--eps", type=float, default=1e-3, help="eliminated: |A| <= eps x typical ...")
    p.add_argument("--share", type=float, default=1.0, help="... on this share of the examples")
    p.add_argument("--delta", type=float, default=0.01, help="overlap: |corr| >= 1 - delta")
    # the Hessian (when available)
    p.add_argument("--hessian-examples", type=int, default=128)
    p.add_argument("--hessian-top-k", type=int, default=3)
    p.add_argument("--trace-probes", type=int, default=20)
    p.add_argument("--density-probes", type=int, default=1)
    p.add_argument("--lanczos-steps", type=int, default=50)
    p.add_argument("--no-hessian", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(HERE / "results" / "singularities"))
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def write_csv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def load_data(args):
    if args.data == "digits":
        train_data, test_data = load_dataset("digits", split="train"), load_dataset("digits")
    elif args.data == "cifar-subset":
        files = [REALDATA / "cifar10_train_first4000.npz", REALDATA / "cifar10_test_first1000.npz"]
        if not all(f.is_file() for f in files):
            raise pathens.PathensError(f"the CIFAR-10 subset is not in {REALDATA} (set "
                                       f"PATHENS_REALDATA, or use --data digits)")
        train_data, test_data = (load_npz(f, normalize="cifar10") for f in files)
    else:
        train_data, test_data = (load_dataset("cifar10", root=args.root, split=s,
                                              normalize="cifar10") for s in ("train", "test"))
    if args.train_limit:
        train_data = tuple(t[:args.train_limit] for t in train_data)
    test_data = tuple(t[:args.examples].to(args.device) for t in test_data)
    return train_data, test_data


def train_with_checkpoints(args, model, train_data, test_data):
    """Train once for --epochs; {epoch: (state dict, test error)} at the --checkpoints."""
    saved = {0: (copy.deepcopy(model.state_dict()), math.nan)}  # its error: once recalibrated
    epoch = 0

    def after_epoch(_line):  # train() calls its log once per epoch
        nonlocal epoch
        epoch += 1
        if epoch in args.checkpoints:
            saved[epoch] = (copy.deepcopy(model.state_dict()), _error(args, model, test_data))

    augment = "shift" if args.data == "digits" else "crop-flip"
    train(model, train_data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
          warmup_epochs=args.warmup, clip_grad_norm=args.clip or None, augment=augment,
          seed=args.seed, device=args.device, progress=False, log=after_epoch)
    return saved


def _error(args, model, test_data) -> float:
    return 1 - evaluate(model, test_data, device=args.device)[1]


def layer_means(s, kind) -> dict:
    """Means over the layers of one kind ("hidden", "stream", None: all) of each metric."""
    rows = s.rows(kind)
    out = {}
    for m in METRICS:
        v = np.asarray(getattr(s, m), float)[rows]
        out[m] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    return out


def hessian_summary(args, view, test_data) -> dict:
    n = args.hessian_examples
    h = hessian(view, (test_data[0][:n], test_data[1][:n]), top_k=args.hessian_top_k,
                trace_probes=args.trace_probes, density_probes=args.density_probes,
                lanczos_steps=args.lanczos_steps, seed=args.seed, progress=False)
    return dict(hessian_lambda_max=float(h.eigenvalues[0]) if len(h.eigenvalues) else math.nan,
                hessian_top=[round(float(v), 6) for v in h.eigenvalues],
                hessian_trace=float(h.trace), hessian_trace_se=float(h.trace_se),
                hessian_degenerate_mass=float(h.degenerate_mass),
                hessian_negative_mass=float(h.negative_mass),
                hessian_params=int(getattr(h, "num_params", 0)))


def run_network(args, norm, skip, train_data, test_data, log):
    name = f"{'residual' if skip else 'plain'}-{args.depth} {NAMES[norm]}"
    torch.manual_seed(args.seed)
    in_channels = 1 if args.data == "digits" else 3
    model = pathens.cifar_resnet(args.depth, norm=norm, skip=skip, width=args.width,
                                 in_channels=in_channels).to(args.device)
    start = time.perf_counter()
    try:
        saved = train_with_checkpoints(args, model, train_data, test_data)
        note = f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s"
    except pathens.PathensError as err:  # diverged: measure the checkpoints saved before
        note = f"diverged: {err}"
        log(f"{name}: {note}")
        saved = {}
    layers, summary, final = [], [], None
    for epoch in sorted(saved):
        state, error = saved[epoch]
        model.load_state_dict(state)
        if epoch == 0:  # BN at init on batch statistics, not the default 0 / 1
            if norm == "bn":
                recalibrate_batchnorm(model, train_data[0][:512].to(args.device))
            error = _error(args, model, test_data)
        view = pathens.wrap(model, example_input=test_data[0][:2], allow_plain=True)
        s = pathens.singularities(view, test_data[0], eps=args.eps, share=args.share,
                                  delta=args.delta, progress=False)
        final = s
        layers += [dict(network=name, norm=norm, skip=skip, epoch=epoch, **row)
                   for row in s.table()]
        row = dict(network=name, norm=norm, skip=skip, epoch=epoch, test_error=error, note=note)
        for kind, label in (("hidden", "hidden"), ("stream", "stream"), (None, "all")):
            row.update({f"{label}_{k}": v for k, v in layer_means(s, kind).items()})
        if hessian is not None and not args.no_hessian:
            row.update(hessian_summary(args, view, test_data))
        summary.append(row)
        log(f"{name:20s} epoch {epoch:3d}: error {error:6.1%}; all layers: eliminated "
            f"{row['all_eliminated']:.3f}, in an overlapping pair "
            f"{row['all_overlapping_units']:.3f}, participation "
            f"{row['all_participation_ratio']:.3f}, components {row['all_components']:.3f}"
            + (f"; Hessian degenerate {row['hessian_degenerate_mass']:.3f}, negative "
               f"{row['hessian_negative_mass']:.3f}" if "hessian_degenerate_mass" in row else ""))
    return name, layers, summary, final


def plot_training(summary, path):
    """Means over all layers against the epoch, one line per network; the Hessian's masses
    when measured."""
    panels = [("all_eliminated", "eliminated units"),
              ("all_overlapping_units", "units in an overlapping pair"),
              ("all_participation_ratio", "participation ratio / units"),
              ("all_components", "components for 99% variance / units")]
    if any("hessian_degenerate_mass" in r for r in summary):
        panels += [("hessian_degenerate_mass", "Hessian: degenerate mass"),
                   ("hessian_negative_mass", "Hessian: negative mass")]
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), layout="constrained",
                            squeeze=False)
    networks = list(dict.fromkeys(r["network"] for r in summary))
    styles = {"plain": "-", "residual": "--"}
    for ax, (key, label) in zip(axs.ravel(), panels):
        for j, net in enumerate(networks):
            these = [r for r in summary if r["network"] == net and key in r]
            ax.plot([r["epoch"] for r in these], [r[key] for r in these], marker="o", ms=3,
                    ls=styles[net.split("-")[0]], color=f"C{j}", label=net)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axs.ravel()[len(panels):]:
        ax.remove()
    axs[0, 0].legend(fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python experiments/singularities.py " + " ".join(
        shlex.quote(v) for v in (sys.argv[1:] if argv is None else argv))
    if max(args.checkpoints) > args.epochs or min(args.checkpoints) < 0:
        raise pathens.PathensError(f"--checkpoints must lie in 0..--epochs ({args.epochs}), got "
                                   f"{args.checkpoints}")
    if hessian is None and not args.no_hessian:
        log("singularities.py: pathens.measure.hessian is not available in this checkout: the "
            "Hessian columns are skipped (re-run once it is merged)")
    train_data, test_data = load_data(args)
    layers, summary, finals = [], [], {}
    for norm in args.norms:
        for skip in (False, True):
            name, lay, summ, final = run_network(args, norm, skip, train_data, test_data, log)
            layers += lay
            summary += summ
            if final is not None:
                finals[name] = final
    write_csv(out / "layers.csv", layers)
    write_csv(out / "summary.csv", summary)
    plot_training(summary, out / "singularities_training.png")
    fig = plot_singularities(finals, kind=None, title=f"per layer (stream and hidden), epoch "
                             f"{max(args.checkpoints)}")
    fig.savefig(out / "singularities_layers.png", dpi=90)
    plt.close(fig)
    results = dict(command=command, config=vars(args),
                   data=dict(dataset=args.data, train=len(train_data[1]),
                             measured=len(test_data[1])),
                   hessian="measured" if hessian is not None and not args.no_hessian else
                   "skipped: pathens.measure.hessian not available" if hessian is None else
                   "skipped (--no-hessian)",
                   singularities_config=next(iter(finals.values())).config if finals else {},
                   summary=summary, seconds=round(time.perf_counter() - start, 1))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log(f"wrote {out}/ in {results['seconds']:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except pathens.PathensError as err:  # bad input: one line, exit code 2
        print(f"singularities.py: {err}", file=sys.stderr)
        sys.exit(2)
