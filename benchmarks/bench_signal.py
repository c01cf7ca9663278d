"""Benchmark: signal_propagation's cost in units of one training-style forward + backward of the
model, and block_jacobian_spectra's cost in units of products with the block's Jacobian.

    OMP_NUM_THREADS=1 python benchmarks/bench_signal.py [--depth 56] [--batch 128]
        [--repeats 7] [--examples 2] [--k 5] [--iters 50] [--json benchmarks/results/signal.json]

The network is pathens.cifar_resnet(depth) (BN, option A, float32, CPU, eval mode) with the
trained akamaster/pytorch_resnet_cifar10 weights and real CIFAR-10 test images when
../shared/realdata (or $PATHENS_REALDATA) holds them, else at initialisation with its BN
running statistics calibrated on Gaussian noise (the output says which).

signal_propagation. The unit, T_fb, is what a training step costs the model as the user has
it: model.zero_grad(), mean cross-entropy of model(x), loss.backward() (parameter gradients
included), in eval mode. signal_propagation(view, (x, y), batch_size=B) makes one forward pass
through the view with autograd's graph, per-channel float64 sums at the n + 1 stream states
and the n branch outputs (scaled and unscaled), and one backward pass to the block inputs only
(no parameter gradients). Repetitions are interleaved (fb, signal, fb, signal, ...) and each
signal time is divided by the mean of the fb calls just before and after it (the same machine
load); wall time (perf_counter) and CPU time (process_time) are both reported: with one thread,
wall >> CPU means the process waited for a core, and the CPU ratio is the better figure.
Target: median ratio <= 1.5.

block_jacobian_spectra. Each bidiagonalisation step applies J (a double-backward product
through the block's graph) and J^T (a backward product) to k vectors per example. The
"HVP-like" unit is one such pair, J v and J^T u, on the E examples at one block; it is timed
alone and against the same block's forward + backward (input gradient only) on the E
examples, and the whole call (both the block and its branch at each chosen block, graphs
built once per map, reorthogonalisation and the small SVDs included) is reported in pairs and
in model fwd+bwd units at batch E. tol is set to 1e-12 so that every map runs its full iters.
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
import pathens  # noqa: E402
from pathens.measure.jacobian_spectra import _Linear, block_jacobian_spectra  # noqa: E402
from pathens.models.modes import recalibrate_batchnorm  # noqa: E402
from pathens.measure.signal_propagation import signal_propagation  # noqa: E402

REALDATA = Path(os.environ.get("PATHENS_REALDATA") or ROOT.parent / "shared" / "realdata")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # akamaster's normalisation
TARGET = 1.5


def timed(f):
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    r = f()
    return r, time.perf_counter() - w, time.process_time() - c


def setup(depth: int, batch: int, seed: int):
    """(model in eval mode, x, y, description of weights and data)."""
    torch.manual_seed(seed)
    model = pathens.cifar_resnet(depth)
    ckpt = sorted(REALDATA.glob(f"akamaster_resnet{depth}-*.th"))
    images = REALDATA / "cifar10_test_first1000.npz"
    if images.is_file():
        with np.load(images) as d:
            x = torch.from_numpy(d["x"][:batch]).permute(0, 3, 1, 2).float() / 255.0
            y = torch.from_numpy(d["y"][:batch]).long()
        x = ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
        data = f"the first {batch} real CIFAR-10 test images ({images.name}) with their labels"
    else:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        data = f"Gaussian noise (no {images} found), random labels"
    if ckpt:
        pathens.load_weights(model, ckpt[0])
        weights = f"trained: {ckpt[0].name}"
    else:
        recalibrate_batchnorm(model, torch.randn(4 * batch, 3, 32, 32))
        weights = "initialisation, BN running statistics calibrated on Gaussian noise"
    return model.eval(), x.contiguous(), y, weights, data


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = None
    return {"cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(), "platform": platform.platform(),
            "git_commit": commit}


def signal_benchmark(model, view, x, y, repeats: int) -> dict:
    B = len(x)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def forward():
        with torch.no_grad():
            model(x)

    def signal():
        return signal_propagation(view, (x, y), batch_size=B, progress=False)

    for _ in range(2):  # warm-up: allocator, oneDNN primitives
        fwd_bwd()
    result = signal()
    reps = []
    _, fb_wall, fb_cpu = timed(fwd_bwd)
    for r in range(repeats):
        _, wall, cpu = timed(signal)
        _, fb2_wall, fb2_cpu = timed(fwd_bwd)
        _, fw_wall, fw_cpu = timed(forward)
        unit_wall, unit_cpu = (fb_wall + fb2_wall) / 2, (fb_cpu + fb2_cpu) / 2
        reps.append({"signal_wall": wall, "signal_cpu": cpu, "fb_wall": unit_wall,
                     "fb_cpu": unit_cpu, "forward_wall": fw_wall, "forward_cpu": fw_cpu,
                     "ratio_wall": wall / unit_wall, "ratio_cpu": cpu / unit_cpu})
        print(f"  repetition {r + 1}/{repeats}: signal {wall:.2f} s wall ({cpu:.2f} s CPU), "
              f"fwd+bwd {unit_wall:.2f} s ({unit_cpu:.2f} s CPU): {wall / unit_wall:.2f}x wall, "
              f"{cpu / unit_cpu:.2f}x CPU", flush=True)
        fb_wall, fb_cpu = fb2_wall, fb2_cpu
    med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    return {"median": med, "repetitions": reps, "result": result}


def _block_timings(b, h: torch.Tensor, E: int, rounds: int = 9) -> dict:
    """CPU seconds (median of rounds) of one block at its inputs h: forward + backward to the
    input (the unit), one J v, one J^T u and the pair, on one vector per example."""
    def block_fb():
        z = h.detach().requires_grad_(True)
        out = b(z)
        return torch.autograd.grad(out, z, torch.ones_like(out))[0]

    lin = _Linear(b, h)
    v = torch.randn(E, 1, lin.d_in, dtype=torch.float64)
    u = torch.randn(E, 1, lin.d_out, dtype=torch.float64)
    runs = {"block_fb": block_fb, "jv": lambda: lin.J(v), "jtu": lambda: lin.JT(u),
            "pair": lambda: (lin.J(v), lin.JT(u))}
    t = {}
    for name, f in runs.items():
        f()  # warm-up
        t[name] = statistics.median(timed(f)[2] for _ in range(rounds))
    return {"block": b.index, "name": b.name, "downsample": b.downsample, **t,
            "pair_over_block_fb": t["pair"] / t["block_fb"]}


def jacobian_benchmark(model, view, x, blocks, k: int, iters: int) -> dict:
    E = len(x)
    with torch.no_grad():  # each chosen block's input at the E examples
        h, inputs = view.stem(x), {}
        for i, b in enumerate(view.blocks):
            inputs[i] = h
            h = b(h)

    def fwd_bwd_model():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), torch.zeros(E, dtype=torch.long)).backward()

    per_block = []
    for i in blocks:
        per_block.append(_block_timings(view.blocks[i], inputs[i], E))
    fwd_bwd_model()
    model_fb = statistics.median(timed(fwd_bwd_model)[2] for _ in range(5))
    js, wall, cpu = timed(lambda: block_jacobian_spectra(view, x, k=k, blocks=blocks, iters=iters,
                                                          tol=1e-12))
    # products per example: iterations J products and as many J^T products, per map
    pairs = int(js.iterations.sum() + js.branch_iterations.sum())
    mean_pair = float(np.mean([p["pair"] for p in per_block]))
    return {"per_block": per_block, "model_fb_batch_E_cpu": model_fb, "spectra_wall": wall,
            "spectra_cpu": cpu, "pairs": pairs, "spectra_over_pairs": cpu / (pairs * mean_pair),
            "spectra_over_model_fb": cpu / model_fb, "result": js,
            "note": "CPU seconds (one thread): the short timings are medians of 9"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=56, help="6n+2 (56: 27 blocks)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved signal/fwd+bwd pairs")
    ap.add_argument("--examples", type=int, default=2, help="examples of the Jacobian spectra")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--blocks", type=int, nargs="*", default=None,
                    help="blocks of the spectra (default: first, both transitions, last)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "signal.json"),
                    help="where to write the figures ('' to skip)")
    a = ap.parse_args(argv)

    load_before = os.getloadavg()
    model, x, y, weights, data = setup(a.depth, a.batch, a.seed)
    view = pathens.wrap(model)
    n = view.num_blocks
    blocks = a.blocks if a.blocks is not None else \
        sorted({0, *[b.index for b in view.blocks if b.downsample], n - 1})
    print(f"signal_propagation: cifar_resnet({a.depth}), {n} blocks, batch {a.batch}, "
          f"{weights}; {data}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
          flush=True)
    sig = signal_benchmark(model, view, x, y, a.repeats)
    m = sig["median"]
    met = bool(m["ratio_wall"] <= TARGET or m["ratio_cpu"] <= TARGET)
    print(f"median: signal_propagation {m['ratio_wall']:.2f}x one fwd+bwd wall "
          f"({m['ratio_cpu']:.2f}x CPU); fwd+bwd {m['fb_wall']:.2f} s, forward alone "
          f"{m['forward_wall']:.2f} s, signal {m['signal_wall']:.2f} s; target <= {TARGET}: "
          f"{'met' if met else 'MISSED'}", flush=True)

    print(f"block_jacobian_spectra: blocks {blocks}, {a.examples} examples, k={a.k}, "
          f"iters={a.iters}", flush=True)
    jac = jacobian_benchmark(model, view, x[:a.examples], blocks, a.k, a.iters)
    for p in jac["per_block"]:
        print(f"  block {p['block']} ({p['name']}{', downsampling' if p['downsample'] else ''}): "
              f"CPU: J v + J^T u {1e3 * p['pair']:.1f} ms (J v {1e3 * p['jv']:.1f}, J^T u "
              f"{1e3 * p['jtu']:.1f}) = {p['pair_over_block_fb']:.2f}x the block's fwd+bwd "
              f"({1e3 * p['block_fb']:.1f} ms)")
    js = jac["result"]
    print(f"  whole call {jac['spectra_wall']:.1f} s wall ({jac['spectra_cpu']:.1f} s CPU): "
          f"{jac['pairs']} pairs per example vector, {jac['spectra_over_pairs']:.2f}x their "
          f"timed cost (CPU); {jac['spectra_over_model_fb']:.0f}x one model fwd+bwd at batch "
          f"{a.examples} (CPU)")
    for row in js.table():
        print(f"  block {row['block']}: sigma_max {row['sigma_max']:.4g}, sigma_min "
              f"{row['sigma_min']:.3g}, isometry gap {row['isometry_gap']:.3g}, converged "
              f"{row['converged']}; branch sigma_max {row['branch_sigma_max']:.4g}")

    r = sig["result"]
    out = {
        "benchmark": "signal_propagation vs one training-style fwd+bwd; block Jacobian spectra "
                     "in J v + J^T u pairs",
        "command": ("OMP_NUM_THREADS=1 python benchmarks/bench_signal.py "
                    + " ".join(sys.argv[1:] if argv is None else argv)).rstrip(),
        "config": {"depth": a.depth, "num_blocks": n, "batch": a.batch, "repeats": a.repeats,
                   "weights": weights, "data": data, "dtype": "float32", "device": "cpu",
                   "examples": a.examples, "k": a.k, "iters": a.iters, "blocks": blocks,
                   "seed": a.seed},
        "machine": dict(machine(), loadavg_1_5_15_before=load_before,
                        loadavg_1_5_15_after=os.getloadavg()),
        "signal": {"target": f"median ratio <= {TARGET} (wall or CPU)", "met": met,
                   "median": m, "ratios_wall": [q["ratio_wall"] for q in sig["repetitions"]],
                   "ratios_cpu": [q["ratio_cpu"] for q in sig["repetitions"]],
                   "repetitions": sig["repetitions"],
                   "measured": {k: getattr(r, k).tolist() for k in (
                       "channel_mean_sq", "channel_variance", "branch_variance", "grad_norm",
                       "norm_ratio")}},
        "jacobian": {k: v for k, v in jac.items() if k != "result"} |
                    {"table": js.table()},
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1, default=float) + "\n")
        print(f"wrote {a.json}")
    return 0 if math.isfinite(m["ratio_wall"]) else 1


if __name__ == "__main__":
    sys.exit(main())
