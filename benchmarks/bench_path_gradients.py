"""Benchmark: gradient by path length, exact sweep vs truncated vs Veit's sampling, in units of
one forward + backward pass of the whole network (see BENCHMARKS.md).

    python benchmarks/bench_path_gradients.py [--depth 110] [--batch 128] [--repeats 3]
                                              [--sampled-rounds 2] [--threads N]

The network is pathens.cifar_resnet(depth) (BN, option A, float32, CPU) at initialisation with
its BatchNorm running statistics calibrated on a few training batches (cumulative average), so
that BN sits in De & Smith's realistic regime (branch variance ~ 1/(l+1) of the skip's) rather
than at its default mean 0 / var 1. The repetitions of the four measurements are interleaved
(fb, exact, trunc, sampled, fb, exact, ...) and the median of each is reported.

Targets:  exact / fwd+bwd <= 30;  truncated (tol 1e-6) / fwd+bwd <= 8;
          sampled (1000 per length, scaled from --sampled-rounds rounds) / exact >= 500.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
import pathens  # noqa: E402

REALDATA = Path(os.environ.get("PATHENS_REALDATA") or ROOT.parent / "shared" / "realdata")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # akamaster's normalisation
SAMPLES_PER_LENGTH = 1000  # Veit et al.'s protocol
TARGETS = dict(exact_over_fb=("<=", 30.0), trunc_over_fb=("<=", 8.0),
               sampled_over_exact=(">=", 500.0))


def load_images():
    """(x float32 (N, 3, 32, 32) normalised, y int64 (N,), source description) or None."""
    path = REALDATA / "cifar10_train_first4000.npz"
    if not path.is_file():
        return None
    with np.load(path) as d:
        x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float() / 255.0  # NHWC uint8 -> NCHW
        y = torch.from_numpy(d["y"]).long()
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.contiguous(), y, f"real CIFAR-10 ({path.name})"


def calibrate_bn(model, batches):
    """BN running statistics = cumulative average over `batches` (momentum=None), then eval."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for xb in batches:
            model(xb)
    model.eval()


def variance_ratios(view, x):
    """r_i = Var(scaled branch_i(x_i)) / Var(shortcut_i(x_i)) at each block (eval mode)."""
    out = []
    with torch.no_grad():
        h = view.stem(x)
        for b in view.blocks:
            out.append(float(b.branch(h).var() / b.shortcut(h).var()))
            h = b(h)
    return np.array(out)


def shortest_interval(mass, frac=0.9):
    """(lo, hi): the shortest contiguous range of lengths holding >= frac of the mass."""
    p = np.asarray(mass, float) / np.sum(mass)
    c = np.concatenate([[0.0], np.cumsum(p)])
    best = (0, len(p) - 1)
    for lo in range(len(p)):
        hi = np.searchsorted(c, c[lo] + frac - 1e-12) - 1  # smallest hi with c[hi+1]-c[lo] >= frac
        if hi < len(p) and hi - lo < best[1] - best[0]:
            best = (lo, int(hi))
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=110)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sampled-rounds", type=int, default=2,
                    help="rounds of the sampled method actually run (>= 2), scaled to 1000")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--fb-calls", type=int, default=3,
                    help="fwd+bwd calls before and after each long measurement (its local unit)")
    ap.add_argument("--calib-batches", type=int, default=10)
    ap.add_argument("--alpha-init", type=float, default=None,
                    help="benchmark a SkipInit network with this alpha instead of BN")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "path_gradients.json"),
                    help="where to write the figures ('' to skip)")
    a = ap.parse_args(argv)
    if a.sampled_rounds < 2:
        ap.error("--sampled-rounds must be >= 2 (path_gradients needs 2 for a standard error)")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)

    # ---- model, data, BN calibration ---------------------------------------------------
    if a.alpha_init is None:
        model, kind = pathens.cifar_resnet(a.depth), "BN, option A"
    else:
        model = pathens.cifar_resnet(a.depth, norm="skipinit", alpha_init=a.alpha_init)
        kind = f"SkipInit alpha={a.alpha_init:g}, option A"
    model = model.float().cpu()
    data = load_images()
    B, nc = a.batch, a.calib_batches
    if data is not None and len(data[0]) >= B * (nc + 1):
        X, Y, source = data
        x, y = X[:B], Y[:B]  # the benchmark batch, with its real labels
        pool = X[B:]  # calibration images: disjoint from the benchmark batch
        calib = [pool[torch.randperm(len(pool), generator=g)[:B]] for _ in range(nc)]
    else:
        source = "Gaussian noise (real CIFAR-10 not found at " + str(REALDATA) + ")"
        x = torch.randn(B, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (B,), generator=g)
        calib = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(nc)]
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    if has_bn:
        calibrate_bn(model, calib)
    model.eval()
    view = pathens.wrap(model)
    n = view.num_blocks
    r = variance_ratios(view, x)

    print(f"pathens path-gradient benchmark: ResNet-{a.depth} ({n} blocks, {kind}), float32, CPU")
    print(f"machine: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"data: {source}; batch {B}; "
          + (f"BN running stats calibrated on {nc} batches of {B} (momentum=None, train mode)"
             if has_bn else "no BN to calibrate"))
    idx = sorted({i for i in (0, 1, n // 6, n // 3, n // 2, n - 1) if i < n})
    print("branch/skip variance ratio r_i at block i (BN: falls roughly as 1/(i+1)): "
          + ", ".join(f"r_{i}={r[i]:.3g}" for i in idx))
    sys.stdout.flush()

    # ---- the four measurements, interleaved -------------------------------------------------
    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()

    # The same fwd+bwd with the model and batch in channels_last, the layout the sweep uses
    # internally on the CPU: not the unit (the model as the user has it is), but reported, so
    # that the ratios against the fastest fwd+bwd of this machine are known too.
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def fwd_bwd_cl():
        model_cl.zero_grad(set_to_none=True)
        F.cross_entropy(model_cl(x_cl), y).backward()

    R = a.sampled_rounds
    runs = dict(
        fb=fwd_bwd,
        exact=lambda: pathens.path_gradients(view, x, y, method="exact", progress=False),
        trunc=lambda: pathens.path_gradients(view, x, y, method="exact", tol=1e-6,
                                             progress=False),
        sampled=lambda: pathens.path_gradients(view, x, y, method="sampled",
                                               samples_per_length=R, seed=a.seed,
                                               progress=False),
    )
    for _ in range(2):  # warm-up (allocator, oneDNN primitives)
        fwd_bwd()
        fwd_bwd_cl()

    def timed(fn):
        """(wall seconds, CPU seconds of this process, fn's result)."""
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - t0, time.process_time() - c0, out

    # Each long measurement is bracketed by groups of --fb-calls fwd+bwd calls; its unit is the
    # median of the calls just before and just after it, so that a ratio compares times taken
    # under the same machine load (other processes come and go on a shared machine). CPU time
    # (time.process_time) is recorded beside wall time: with one thread it barely depends on
    # what else runs on the machine.
    m = a.fb_calls
    long = ("exact", "trunc", "sampled")
    times = {c: {k: [] for k in ("fb", "fb_cl") + long} for c in ("wall", "cpu")}
    local = {c: {k: [] for k in long} for c in ("wall", "cpu")}
    results = {}
    for rep in range(a.repeats):
        for w, c in [timed(fwd_bwd_cl)[:2] for _ in range(m)]:
            times["wall"]["fb_cl"].append(w)
            times["cpu"]["fb_cl"].append(c)
        before = [timed(fwd_bwd)[:2] for _ in range(m)]
        for w, c in before:
            times["wall"]["fb"].append(w)
            times["cpu"]["fb"].append(c)
        for name in long:
            w, c, results[name] = timed(runs[name])
            after = [timed(fwd_bwd)[:2] for _ in range(m)]
            for j, clock in enumerate(("wall", "cpu")):
                times[clock][name].append((w, c)[j])
                times[clock]["fb"] += [t[j] for t in after]
                local[clock][name].append(statistics.median([t[j] for t in before + after]))
            before = after
        print(f"  repeat {rep + 1}/{a.repeats}: "
              + ", ".join(f"{k} {times['wall'][k][-1]:.2f}s (unit {local['wall'][k][-1]:.2f}s)"
                          for k in long), flush=True)

    def figures(t, u):
        """Median times, per-repetition ratios (each against its local unit) and their medians.
        Sampled: R rounds ran (one round = one forward + a sweep carrying one path of every
        length); path_gradients also runs one full-gradient pass (~ fwd+bwd) once per call,
        which is subtracted before dividing by R; the per-round time is scaled to 1000."""
        rounds = [max(s - v, 0.0) / R for s, v in zip(t["sampled"], u["sampled"])]
        per_rep = dict(
            exact_over_fb=[e / v for e, v in zip(t["exact"], u["exact"])],
            trunc_over_fb=[e / v for e, v in zip(t["trunc"], u["trunc"])],
            sampled_over_exact=[SAMPLES_PER_LENGTH * r / vs / (e / ve) for r, e, ve, vs
                                in zip(rounds, t["exact"], u["exact"], u["sampled"])])
        return ({k: statistics.median(v) for k, v in t.items()}, statistics.median(rounds),
                per_rep, {k: statistics.median(v) for k, v in per_rep.items()})

    med, per_round, per_rep, ratios = figures(times["wall"], local["wall"])
    cpu_med, cpu_round, cpu_per_rep, cpu_ratios = figures(times["cpu"], local["cpu"])
    sampled_1000 = per_round * SAMPLES_PER_LENGTH
    verdict = {k: (v <= TARGETS[k][1] if TARGETS[k][0] == "<=" else v >= TARGETS[k][1])
               for k, v in ratios.items()}

    ex, tr = results["exact"], results["trunc"]
    survived = int(np.count_nonzero(tr.total))
    lo, hi = shortest_interval(ex.total)
    frac = ex.total / ex.total.sum()
    mean_len = float((np.arange(n + 1) * frac).sum())
    mode_len = int(np.argmax(ex.total))

    print()
    print(f"absolute wall times (median of {a.repeats} repeats; fwd+bwd over all "
          f"{len(times['wall']['fb'])} calls; seconds):")
    print(f"  fwd+bwd (unit)            {med['fb']:9.3f}   "
          f"(range {min(times['wall']['fb']):.2f}..{max(times['wall']['fb']):.2f})")
    print(f"  fwd+bwd in channels_last  {med['fb_cl']:9.3f}   (not the unit; see below)")
    print(f"  exact                     {med['exact']:9.3f}")
    print(f"  truncated (tol 1e-6)      {med['trunc']:9.3f}")
    print(f"  sampled, {R} rounds run    {med['sampled']:9.3f}   -> {per_round:.3f} s per round")
    print(f"  sampled, 1000 per length  {sampled_1000:9.1f}   (SCALED from {R} rounds: "
          f"(T_{R} - T_fb) / {R} x 1000, not run)")
    print()
    print("ratios: each repetition against the median fwd+bwd just before and after it; "
          "the median over repetitions (wall time) is judged; CPU = the same from CPU time")
    print()
    print(f"{'ratio':34s} {'value':>9s} {'target':>9s}  verdict {'CPU':>7s}   per repetition (wall)")
    names = dict(exact_over_fb="exact / fwd+bwd", trunc_over_fb="truncated / fwd+bwd",
                 sampled_over_exact="sampled(1000/length) / exact")
    for k, v in ratios.items():
        op, t = TARGETS[k]
        print(f"{names[k]:34s} {v:9.1f} {op + ' ' + format(t, 'g'):>9s}  "
              f"{'PASS' if verdict[k] else 'FAIL'}   {cpu_ratios[k]:7.1f}   "
              + " ".join(f"{u:.1f}" for u in per_rep[k]))
    cl_speedup = med["fb"] / med["fb_cl"]
    print(f"{'':34s} against a channels_last fwd+bwd ({cl_speedup:.2f}x faster than the unit), "
          f"not judged: exact {ratios['exact_over_fb'] * cl_speedup:.1f}, truncated "
          f"{ratios['trunc_over_fb'] * cl_speedup:.1f}")
    print()
    print(f"exact: residual vs autograd {ex.residual:.2e}; gradient norm {ex.gradient_norm:.4g}")
    print(f"truncated: residual vs autograd {tr.residual:.2e}; {survived} of {n + 1} lengths "
          f"survived (nonzero norms), lengths {int(np.flatnonzero(tr.total).min())}.."
          f"{int(np.flatnonzero(tr.total).max())}")
    print(f"gradient mass (exact total): 90% in lengths {lo}..{hi}; mean {mean_len:.1f}, "
          f"mode {mode_len}")

    if a.json:
        out = Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = dict(
            config=dict(vars(a), model=f"cifar_resnet({a.depth}) {kind}", num_blocks=n,
                        data=source, dtype="float32", device="cpu"),
            machine=dict(torch=torch.__version__, threads=torch.get_num_threads(),
                         cpus=os.cpu_count(), processor=platform.processor(),
                         python=platform.python_version()),
            seconds=dict(times=times, local_unit=local, median=med, cpu_median=cpu_med,
                         sampled_per_round=per_round, sampled_1000_scaled=sampled_1000),
            ratios=ratios, ratios_per_repeat=per_rep, cpu_ratios=cpu_ratios,
            channels_last_fb_speedup=cl_speedup,
            ratios_vs_channels_last_fb={k: ratios[k] * cl_speedup
                                        for k in ("exact_over_fb", "trunc_over_fb")},
            cpu_ratios_per_repeat=cpu_per_rep, targets={k: f"{op} {t:g}" for k, (op, t) in TARGETS.items()},
            passed=verdict,
            exact=dict(residual=ex.residual, gradient_norm=ex.gradient_norm,
                       total=ex.total.tolist(), mass90=[lo, hi], mean_length=mean_len,
                       mode_length=mode_len),
            truncated=dict(residual=tr.residual, lengths_survived=survived,
                           total=tr.total.tolist()),
            variance_ratios=r.tolist())
        out.write_text(json.dumps(record, indent=1, default=float))
        print(f"figures written to {out}")
    return 0 if all(verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
