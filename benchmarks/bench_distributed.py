"""Benchmark: a lesion sweep on one process vs two (torch.distributed, gloo, one thread each):
`delete_each` of a ResNet-110 (54 blocks, 55 conditions) over 2048 examples (see BENCHMARKS.md).

    python benchmarks/bench_distributed.py [--examples 2048] [--repeats 3] [--depth 110]

Both runs happen in this one invocation, interleaved (1 process, 2 processes, 1, 2, ...). Each
run is timed inside its processes from a barrier before `delete_each` to the end of it (the
processes' start-up and torch import, a few seconds, are reported apart), so that the ratio is
the sweep's own speed-up. The two-process rows are checked against the one-process rows
(errors and counts equal, losses to float32 rounding, 1e-5). Target: speed-up >= 1.8.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import pathens  # noqa: E402
from pathens import lesion  # noqa: E402


def setup(depth: int, examples: int):
    torch.manual_seed(0)
    model = pathens.cifar_resnet(depth).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(examples, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (examples,), generator=g)
    return pathens.wrap(model), (x, y)


def sweep(rank: int, world: int, init: str, out: str, depth: int, examples: int):
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                                             world_size=world, timeout=timedelta(minutes=30))
    view, data = setup(depth, examples)
    if world > 1:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    res = lesion.delete_each(view, data, progress=False)
    if world > 1:
        torch.distributed.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        rows = [[r["errors"], r["n"], r["loss"]] for r in res.rows]
        Path(out).write_text(json.dumps(dict(seconds=seconds, rows=rows)))
    if world > 1:
        torch.distributed.destroy_process_group()


def run(world: int, depth: int, examples: int) -> tuple[float, float, list]:
    """(sweep seconds, wall seconds including start-up, rows)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, init = Path(tmp) / "out.json", Path(tmp) / "init"
        t0 = time.perf_counter()
        mp.spawn(sweep, args=(world, str(init), str(out), depth, examples), nprocs=world,
                 join=True)
        wall = time.perf_counter() - t0
        got = json.loads(out.read_text())
    return got["seconds"], wall, got["rows"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=110)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    a = ap.parse_args(argv)
    print(f"delete_each, cifar_resnet({a.depth}), {a.examples} examples; one thread per process; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    times = {1: [], 2: []}
    walls = {1: [], 2: []}
    reference = None
    for rep in range(a.repeats):
        for world in (1, 2):
            seconds, wall, rows = run(world, a.depth, a.examples)
            times[world].append(seconds)
            walls[world].append(wall)
            if reference is None:
                reference = rows
            assert [r[:2] for r in rows] == [r[:2] for r in reference], "rows differ"
            # losses to float32 rounding: each rank sums its own batches
            assert all(abs(r[2] - q[2]) <= 1e-5 * abs(q[2]) for r, q in zip(rows, reference))
            print(f"  repeat {rep + 1}: {world} process{'es' if world > 1 else ''}: sweep "
                  f"{seconds:.1f} s (with start-up {wall:.1f} s)", flush=True)
    ratios = [t1 / t2 for t1, t2 in zip(times[1], times[2])]
    speedup = statistics.median(ratios)
    print(f"speed-up (median of {a.repeats}, each repeat side by side): {speedup:.2f}x "
          f"({' '.join(f'{r:.2f}' for r in ratios)}); target >= 1.8: "
          f"{'PASS' if speedup >= 1.8 else 'FAIL'}; rows identical to one process")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(dict(
            config=vars(a), machine=dict(cpus=os.cpu_count(), torch=torch.__version__,
                                         python=platform.python_version()),
            sweep_seconds=times, wall_seconds_with_startup=walls, ratios=ratios,
            speedup=speedup), indent=1))
    return 0 if speedup >= 1.8 else 1


if __name__ == "__main__":
    sys.exit(main())
