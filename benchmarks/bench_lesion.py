"""delete_each on a 54-block CIFAR ResNet-110: shared activations (cache=True) vs a naive full
re-run per condition (cache=False), side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_lesion.py [--n 64] [--width 16] [--repeat 1]
"""
import argparse
import time

import torch

import pathens
from pathens import lesion

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--width", type=int, default=16)
ap.add_argument("--depth", type=int, default=110)
ap.add_argument("--repeat", type=int, default=1)
a = ap.parse_args()
torch.manual_seed(0)
view = pathens.wrap(pathens.cifar_resnet(a.depth, width=a.width).eval())
x, y = torch.randn(a.n, 3, 32, 32), torch.randint(0, 10, (a.n,))
times = {True: [], False: []}
for _ in range(a.repeat):
    for cache in (False, True):
        t = time.perf_counter()
        r = lesion.delete_each(view, (x, y), cache=cache, progress=False, batch_size=a.n)
        times[cache].append(time.perf_counter() - t)
        rows = r.rows
        if cache:
            assert all(abs(p["loss"] - q["loss"]) < 1e-4 for p, q in zip(rows, ref))
        else:
            ref = rows
naive, cached = min(times[False]), min(times[True])
print(f"delete_each, {view.num_blocks} blocks, {a.n} examples, width {a.width}, "
      f"threads {torch.get_num_threads()}: naive {naive:.2f} s, cached {cached:.2f} s, "
      f"speed-up {naive / cached:.2f}x")
