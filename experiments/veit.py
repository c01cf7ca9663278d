"""Veit, Wilber & Belongie (NeurIPS 2016) on a pretrained CIFAR ResNet: the four experiments.

1. gradient by path length, exact (one sweep) and sampled (Veit's protocol): where 90% of the
   gradient magnitude lies, in blocks and in % of all 2^n paths (Veit, ResNet-110: 5-17 of 54
   blocks, 0.45% of the paths);
2. single-block lesion: every block deleted alone, non-downsampling vs downsampling blocks;
3. k-block lesion: k random non-downsampling blocks deleted, error against k;
4. reordering: k random same-shape swaps, error against the Kendall tau of the new order.

Default (CPU scale, a few minutes on one core): the akamaster ResNet-56 checkpoint and the first
1000 CIFAR-10 test images from ../shared/realdata. Paper scale:

    python experiments/veit.py --checkpoint resnet110.th --arch resnet110 \
        --data cifar10 --root ~/cifar-10-batches-py --device cuda --samples 1000 --trials 10

Writes results.json, report.md, CSVs and figures (pathens.report) plus veit_summary.json /
veit_summary.csv into --out, and prints a summary table.
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

import numpy as np
import torch

import pathens
from pathens import report
from pathens.analysis import analyze
from pathens.data.datasets import load_dataset, load_npz

HERE = Path(__file__).resolve().parent
REALDATA = Path(os.environ.get("PATHENS_REALDATA") or HERE.parent.parent / "shared" / "realdata")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a CIFAR ResNet state dict (default: the akamaster "
                   "ResNet-56 in ../shared/realdata)")
    p.add_argument("--arch", default="resnet56", help="architecture of --checkpoint (resnetD)")
    p.add_argument("--data", default=None, help="cifar10 (with --root: the python batches or an "
                   ".npz); default: cifar10_test_first1000.npz from ../shared/realdata")
    p.add_argument("--root", help="folder of the CIFAR-10 python batches, or an .npz file")
    p.add_argument("--limit", type=int, help="keep the first LIMIT test images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=10, help="sampled paths per length (Veit: 1000)")
    p.add_argument("--gradient-examples", type=int, default=64,
                   help="test images used for the path gradients")
    p.add_argument("--trials", type=int, default=3, help="trials per k (random lesion, reorder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "veit_resnet56"))
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def fail(message: str):
    """A user error: one line on stderr, exit code 2 (as the pathens command line)."""
    print(message, file=sys.stderr)
    sys.exit(2)


def load_inputs(args):
    """(model, (x, y), model_info, data_info), or exit 2 with a one-line message."""
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt is None:
        found = sorted(REALDATA.glob(f"akamaster_{args.arch}-*.th"))
        if not found:
            fail(f"veit.py: no --checkpoint given and no akamaster_{args.arch}-*.th in "
                     f"{REALDATA} (the real-data folder is absent: pass --checkpoint and --data)")
        ckpt = found[0]
    if args.data is None:
        npz = REALDATA / "cifar10_test_first1000.npz"
        if not npz.is_file():
            fail(f"veit.py: {npz} not found: pass --data cifar10 --root DIR")
        x, y = load_npz(npz, normalize="imagenet", limit=args.limit)
        data_info = dict(dataset="CIFAR-10 test, first 1000 images", file=str(npz))
    else:
        x, y = load_dataset(args.data, root=args.root, split="test", limit=args.limit)
        data_info = dict(dataset=args.data, root=args.root, split="test")
    data_info["examples"] = len(y)
    model = pathens.zoo.build(args.arch, ckpt)[0].to(args.device).eval()
    return model, (x.to(args.device), y.to(args.device)), dict(arch=args.arch, checkpoint=ckpt.name), data_info


def summarise(a, view) -> dict:
    """The numbers Veit et al. report, from one Analysis."""
    n = view.num_blocks
    out = dict(blocks=n, intact_error=a.intact_error)
    for key in ("gradient (exact)", "gradient (sampled)"):
        d = a.depth.get(key)
        if d is not None:
            out[key] = dict(mean=d.mean, mode=d.mode, interval=list(d.interval), mass=d.mass,
                            path_fraction=d.path_fraction)
    # per-path magnitude falls exponentially with length: slope of log per_path (sampled)
    s = a.sampled or a.exact
    ok = s.per_path > 0
    slope = np.polyfit(s.lengths[ok], np.log10(s.per_path[ok]), 1)[0]
    out["per_path_log10_slope"] = float(slope)
    down = set(i for i, b in enumerate(view.blocks) if b.downsample)
    singles = [r for r in a.delete_each.rows if r["kind"] != "intact"]
    nd = [r["error"] for r in singles if r["deleted"][0] not in down]
    dd = {int(r["deleted"][0]): r["error"] for r in singles if r["deleted"][0] in down}
    out["single_nondownsampling"] = dict(mean=float(np.mean(nd)), max=float(np.max(nd)),
                                         min=float(np.min(nd)), count=len(nd))
    out["single_downsampling"] = dd
    out["k_lesion"] = [dict(k=r["k"], error_mean=r["error_mean"]) for r in a.delete_random.summary()]
    if a.reorder is not None:
        out["reorder"] = [dict(swaps=r["k"], tau_mean=r["tau_mean"], error_mean=r["error_mean"])
                          for r in a.reorder.summary()]
        rows = [r for r in a.reorder.rows if r["kind"] != "intact"]
        taus = np.array([r["tau"] for r in rows])
        errs = np.array([r["error"] for r in rows])
        out["reorder_corr_tau_error"] = float(np.corrcoef(taus, errs)[0, 1]) if len(rows) > 2 else math.nan
    return out


def print_summary(s):
    pct = lambda v: f"{100 * v:.2f}%"
    print(f"\n== Veit et al. experiments: {s['blocks']} blocks, intact error {pct(s['intact_error'])}")
    for key in ("gradient (exact)", "gradient (sampled)"):
        if key in s:
            d = s[key]
            print(f"{key:20s} mean length {d['mean']:.2f}, 90% of magnitude in lengths "
                  f"{d['interval'][0]}-{d['interval'][1]} ({d['path_fraction']:.3%} of paths)")
    print(f"one path's gradient: log10 magnitude falls {-s['per_path_log10_slope']:.3f} per block")
    nd = s["single_nondownsampling"]
    print(f"single deletion, {nd['count']} non-downsampling blocks: error mean {pct(nd['mean'])}, "
          f"range {pct(nd['min'])}-{pct(nd['max'])}")
    for i, e in s["single_downsampling"].items():
        print(f"single deletion, downsampling block {i}: error {pct(e)}")
    print("k random deletions:  " + "  ".join(f"k={r['k']}: {pct(r['error_mean'])}" for r in s["k_lesion"]))
    if "reorder" in s:
        print("reordering:          " + "  ".join(
            f"{r['swaps']} swaps (tau {r['tau_mean']:.2f}): {pct(r['error_mean'])}" for r in s["reorder"]))
        print(f"corr(Kendall tau, error) over trials: {s['reorder_corr_tau_error']:.2f}")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    model, data, model_info, data_info = load_inputs(args)
    view = pathens.wrap(model, example_input=data[0][:2])
    out = Path(args.out)
    a = analyze(view, data, name=f"{args.arch} ({model_info['checkpoint']})", model_info=model_info,
                data_info=data_info, gradient_examples=args.gradient_examples,
                samples_per_length=args.samples, trials=args.trials, seed=args.seed,
                lesion_dir=out / "sweeps", progress=not args.quiet, log=log)
    command = "python experiments/veit.py " + " ".join(shlex.quote(v) for v in (argv or sys.argv[1:]))
    s = summarise(a, view)
    s["seconds"] = round(time.perf_counter() - start, 1)
    report.write(out, [a], title=f"Veit et al. (2016) experiments on {args.arch}", command=command,
                 extra=dict(summary=s))
    (out / "veit_summary.json").write_text(json.dumps(s, indent=2, default=str))
    with open(out / "veit_summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "condition", "value"])
        for key in ("gradient (exact)", "gradient (sampled)"):
            if key in s:
                for k, v in s[key].items():
                    w.writerow([key, k, v])
        w.writerow(["single lesion", "non-downsampling mean error", s["single_nondownsampling"]["mean"]])
        w.writerow(["single lesion", "non-downsampling max error", s["single_nondownsampling"]["max"]])
        for i, e in s["single_downsampling"].items():
            w.writerow(["single lesion", f"downsampling block {i} error", e])
        for r in s["k_lesion"]:
            w.writerow(["k lesion", f"k={r['k']}", r["error_mean"]])
        for r in s.get("reorder", []):
            w.writerow(["reorder", f"swaps={r['swaps']} tau={r['tau_mean']:.3f}", r["error_mean"]])
    print_summary(s)
    log(f"wrote {out}/ in {s['seconds']:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except pathens.PathensError as err:  # bad input: one line, exit code 2
        print(f"veit.py: {err}", file=sys.stderr)
        sys.exit(2)
