"""Benchmark: delete_each on a 54-block CIFAR ResNet-110, shared activations (cache=True) vs a
naive full re-run of the network per condition (cache=False), side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_lesion.py [--n 32] [--batch-size 256]
        [--depth 110] [--width 16] [--repeats 9] [--json benchmarks/results/lesion.json]

Trustworthy on a noisy machine: after an untimed warm-up, the repetitions are interleaved
(naive, cached, naive, cached, ...) and kept short (many short pairs rather than a few long
ones), so that drifts in machine load hit both alike and a burst spoils one pair, not the median;
each repetition's ratio naive / cached is reported with their median, wall time (perf_counter)
beside CPU time (process_time: with one thread, wall >> CPU means the process was preempted or
its CPU stolen, so the CPU ratio is then the better figure; neither is immune to another core
sharing the caches and memory bus), the load average before and after, and every repetition's
rows are checked against the first naive run (same errors, same losses).

Why the ratio can beat the equal-cost bound. delete_each has 1 + n conditions (intact, then
each block deleted alone). Naive: every condition runs all n blocks. Cached: one intact walk per
batch, and the condition deleting block p runs only blocks p..n-1 from the intact activation
entering p. If all blocks cost the same that is (n+1) n / (n + n(n+1)/2) = 1.93x for n = 54
(1.96x counting a deleted block, post(shortcut(x)), as free). But block j is run by j + 1 of
the cached conditions and by all n + 1 naive ones, so the early blocks are the ones the cache
skips most, and in a CIFAR ResNet they are the dearest (32x32 maps with 16 channels: the same
FLOPs as a later block but several times its time on a CPU). The script measures each block's
forward time and reports the ratio this cost model predicts beside the measured one.

Target (issue 3): median ratio >= 1.8.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
import pathens  # noqa: E402
from pathens import lesion  # noqa: E402

TARGET = 1.8


def timed(f):
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    r = f()
    return r, time.perf_counter() - w, time.process_time() - c


def same_rows(a: list, b: list) -> dict:
    """Whether two delete_each results agree: identical conditions and error counts, losses
    equal to float rounding (max relative difference reported)."""
    keys = ("condition", "kind", "k", "deleted", "errors", "n", "nonfinite")
    equal = len(a) == len(b) and all(all(p[k] == q[k] for k in keys) for p, q in zip(a, b))
    rel = max(abs(p["loss"] - q["loss"]) / max(abs(p["loss"]), 1e-300) for p, q in zip(a, b))
    return dict(equal=bool(equal and rel <= 1e-6), conditions_and_errors_equal=bool(equal),
                max_rel_loss_diff=float(rel))


@torch.no_grad()
def block_costs(view, x, rounds: int = 5) -> np.ndarray:
    """Median forward seconds of each block, timed one by one inside forward passes of x."""
    t = np.zeros((rounds, view.num_blocks))
    for r in range(rounds):
        h = view.stem(x)
        for i, b in enumerate(view.blocks):
            h, t[r, i], _ = timed(lambda: b(h))
    return np.median(t, axis=0)


def predicted_ratio(cost: np.ndarray, stem: float, head: float) -> float:
    """naive / cached time of delete_each under per-block costs (deleted blocks free)."""
    n = len(cost)
    naive = (n + 1) * (stem + head) + sum(n * c for c in cost)  # n + 1 conditions, one deletes j
    cached = stem + (n + 1) * head + sum((j + 1) * c for j, c in enumerate(cost))
    return naive / cached


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    return dict(cpu=model, cpus=os.cpu_count(),
                affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                torch=torch.__version__, torch_threads=torch.get_num_threads(),
                omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                mkldnn=torch.backends.mkldnn.is_available(), numpy=np.__version__,
                python=platform.python_version(), platform=platform.platform(),
                git_commit=commit)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="examples (random N(0,1) 3x32x32 images)")
    ap.add_argument("--batch-size", type=int, default=256, help="delete_each's batch_size")
    ap.add_argument("--depth", type=int, default=110, help="6n+2 (110: 54 blocks)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=9, help="interleaved naive/cached pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "lesion.json"),
                    help="where to write the figures ('' to skip)")
    a = ap.parse_args(argv)

    load_before = os.getloadavg()
    torch.manual_seed(a.seed)
    view = pathens.wrap(pathens.cifar_resnet(a.depth, width=a.width).eval())
    x, y = torch.randn(a.n, 3, 32, 32), torch.randint(0, 10, (a.n,))
    kw = dict(progress=False, batch_size=a.batch_size)
    n = view.num_blocks
    print(f"delete_each: {n} blocks ({n + 1} conditions), {a.n} examples, batch size "
          f"{a.batch_size}, width {a.width}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)

    # untimed warm-up at the timed batch shape: every block, and every deleted downsampling block
    xb = x[:min(a.n, a.batch_size)]
    with torch.no_grad():
        view.run(xb)
        for b in view.blocks:
            if b.downsample:
                view.run(xb, deleted=[b.index])
    cost = block_costs(view, xb)
    with torch.no_grad():
        stem = min(timed(lambda: view.stem(xb))[1] for _ in range(3))
        h = view.stem(xb)
        for b in view.blocks:
            h = b(h)
        head = min(timed(lambda: view.head(h))[1] for _ in range(3))
    model = predicted_ratio(cost, stem, head)
    equal_cost = predicted_ratio(np.ones(n), 0.0, 0.0)

    reps, ref = [], None
    for r in range(a.repeats):
        rep = {}
        for mode, cache in (("naive", False), ("cached", True)):
            res, wall, cpu = timed(lambda: lesion.delete_each(view, (x, y), cache=cache, **kw))
            rep[mode] = dict(wall=wall, cpu=cpu, cpu_share=cpu / wall)
            ref = ref or res.rows
            rep[mode]["rows"] = same_rows(ref, res.rows)
        rep["ratio_wall"] = rep["naive"]["wall"] / rep["cached"]["wall"]
        rep["ratio_cpu"] = rep["naive"]["cpu"] / rep["cached"]["cpu"]
        reps.append(rep)
        print(f"  repetition {r + 1}/{a.repeats}: naive {rep['naive']['wall']:.1f} s wall "
              f"({rep['naive']['cpu']:.1f} s CPU), cached {rep['cached']['wall']:.1f} s wall "
              f"({rep['cached']['cpu']:.1f} s CPU): {rep['ratio_wall']:.2f}x wall, "
              f"{rep['ratio_cpu']:.2f}x CPU", flush=True)

    med = lambda key, mode=None: statistics.median(  # noqa: E731
        r[mode][key] if mode else r[key] for r in reps)
    rows_ok = all(r[m]["rows"]["equal"] for r in reps for m in ("naive", "cached"))
    ratio = med("ratio_wall")
    out = dict(
        benchmark="delete_each: shared activations (cache=True) vs naive re-run (cache=False)",
        command=("OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/bench_lesion.py "
                + " ".join(sys.argv[1:] if argv is None else argv)).rstrip(),
        config=dict(depth=a.depth, width=a.width, num_blocks=n, conditions=n + 1,
                    examples=a.n, batch_size=a.batch_size, repeats=a.repeats, seed=a.seed,
                    model=f"cifar_resnet({a.depth}, width={a.width}) BN, option A, at init, eval",
                    data="random N(0, 1) 3x32x32 inputs, random labels", dtype="float32",
                    device="cpu", order="interleaved: naive, cached, naive, cached, ..."),
        machine=dict(machine(), loadavg_1_5_15_before=load_before,
                     loadavg_1_5_15_after=os.getloadavg()),
        target=dict(median_ratio_wall=f">= {TARGET}", met=bool(ratio >= TARGET)),
        median=dict(ratio_wall=ratio, ratio_cpu=med("ratio_cpu"),
                    naive_wall=med("wall", "naive"), cached_wall=med("wall", "cached"),
                    naive_cpu=med("cpu", "naive"), cached_cpu=med("cpu", "cached")),
        ratios_wall=[r["ratio_wall"] for r in reps], ratios_cpu=[r["ratio_cpu"] for r in reps],
        repetitions=reps,
        rows_identical=rows_ok,
        cost_model=dict(
            predicted_ratio=model, equal_cost_ratio=equal_cost,
            equal_cost_ratio_deleted_block_full=(n + 1) * n / (n + n * (n + 1) / 2),
            block_seconds_by_stage=[float(c.mean()) for c in np.array_split(cost, 3)],
            stem_seconds=stem, head_seconds=head,
            forward_seconds_sum_of_blocks=float(cost.sum() + stem + head),
            forward_seconds_measured=med("wall", "naive") / (n + 1) / max(1, math.ceil(
                a.n / a.batch_size)),
            note="per-block forward times on one batch, timed inside forward passes (median of "
                 "5), a rough model: block j is run by j + 1 cached conditions and by all naive "
                 "ones, so dear early blocks raise the ratio above the equal-cost bound"),
    )
    print(f"median speed-up {ratio:.2f}x wall ({out['median']['ratio_cpu']:.2f}x CPU), per "
          f"repetition " + ", ".join(f"{v:.2f}" for v in out["ratios_wall"]) +
          f"; naive {out['median']['naive_wall']:.1f} s, cached {out['median']['cached_wall']:.1f} s "
          f"(median wall); cost model {model:.2f}x (equal block costs: {equal_cost:.2f}x); rows "
          f"{'identical' if rows_ok else 'DIFFER'}; target >= {TARGET}: "
          f"{'met' if ratio >= TARGET else 'MISSED'}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0 if rows_ok and not math.isnan(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
