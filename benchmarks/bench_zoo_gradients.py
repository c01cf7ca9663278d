"""Benchmark: the exact and truncated path-gradient decomposition on ImageNet CNNs and a
GPT-2-small-shaped transformer, as multiples of one forward + backward of the model, and the
sweep's peak memory against one forward + backward's (see BENCHMARKS.md).

    python benchmarks/bench_zoo_gradients.py [--models resnet50 resnext50 seresnext gpt2 resnet110]
                                             [--repeats 3] [--threads 2] [--quick]

Models (random weights, float32, CPU, eval mode; BN running statistics calibrated on a few
random batches so that no BN is the identity):
  resnet50    torchvision resnet50, 224x224, batch 32 (16 blocks)
  resnext50   torchvision resnext50_32x4d (grouped 3x3 convolutions), 224x224, batch 32
  seresnext   timm seresnext26d_32x4d (squeeze-excitation: autograd transposes), 224x224, batch 32
  resnet110   pathens cifar_resnet(110) (54 blocks), 32x32, batch 32
  gpt2        Hugging Face GPT2LMHeadModel, 12 layers, d=768 (24 blocks), 8 sequences of 128
              tokens, next-token loss
Timed, interleaved (fb, exact, fb, trunc, fb, ...), each long run divided by the median of the
fwd+bwd calls just before and after it (same load), the median over repeats judged:
  fb      one forward + backward of the model as the user has it (mean loss, .backward() with
          parameter gradients, as in training): the unit
  exact   path_gradients(view, x, y, check=False): the decomposition alone
  check   path_gradients(view, x, y): the default, which also runs the model's own forward and
          backward to report `residual` (one more fb by definition)
  trunc   path_gradients(view, x, y, tol=1e-6, check=False)
Peak memory: each of fb / exact / trunc runs once in a fresh subprocess; its peak resident
memory (Linux VmHWM, reset just before) minus the resident memory just before it (model,
data and libraries loaded).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
import pathens  # noqa: E402
from timing import interleaved  # noqa: E402  (benchmarks/timing.py)

TARGETS = {  # from issues 8 and 9
    "resnet50": dict(exact=3.0, trunc=2.5, memory=3.0),
    "resnet110": dict(exact=11.0),
    "gpt2": dict(exact=15.0, trunc=6.0),
}


def calibrate(model, x, batches=3):
    """BN running statistics = the average over a few random batches like x (then eval)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(x.shape, generator=g))
    model.eval()


def build(name: str, quick: bool):
    """(model, inputs, targets, loss function of (logits, targets), description)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    side, batch = (64, 4) if quick else (224, 32)
    if name in ("resnet50", "resnext50"):
        import torchvision
        arch = dict(resnet50="resnet50", resnext50="resnext50_32x4d")[name]
        model = getattr(torchvision.models, arch)(weights=None)
        x = torch.randn(batch, 3, side, side, generator=g)
        calibrate(model, x)
        return model, x, torch.randint(0, 1000, (batch,), generator=g), F.cross_entropy, \
            f"torchvision {arch}, {side}x{side}, batch {batch}"
    if name == "seresnext":
        import timm
        model = timm.create_model("seresnext26d_32x4d", pretrained=False)
        x = torch.randn(batch, 3, side, side, generator=g)
        calibrate(model, x)
        return model, x, torch.randint(0, 1000, (batch,), generator=g), F.cross_entropy, \
            f"timm seresnext26d_32x4d, {side}x{side}, batch {batch}"
    if name == "resnet110":
        model = pathens.cifar_resnet(110)
        x = torch.randn(8 if quick else 32, 3, 32, 32, generator=g)
        calibrate(model, x)
        return model, x, torch.randint(0, 10, (len(x),), generator=g), F.cross_entropy, \
            f"pathens cifar_resnet(110), 32x32, batch {len(x)}"
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        layers, d, seqs, T = (2, 64, 2, 32) if quick else (12, 768, 8, 128)
        config = GPT2Config(n_layer=layers, n_embd=d, n_head=max(1, d // 64), n_positions=T)
        model = GPT2LMHeadModel(config).eval()
        ids = torch.randint(0, config.vocab_size, (seqs, T), generator=g)

        def next_token(logits, t):
            return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   t[:, 1:].reshape(-1))
        return model, ids, ids, next_token, f"GPT-2 {layers} layers, d={d}, {seqs}x{T} tokens"
    raise SystemExit(f"unknown model {name!r}")


def logits_of(out):
    return out if torch.is_tensor(out) else out.logits


def runs(model, x, y, loss):
    view = pathens.wrap(model, example_input=x[:2])

    def fb():
        model.zero_grad(set_to_none=True)
        loss(logits_of(model(x)), y).backward()

    return view, dict(
        fb=fb,
        exact=lambda: pathens.path_gradients(view, x, y, check=False, batch_size=len(x),
                                             progress=False),
        check=lambda: pathens.path_gradients(view, x, y, batch_size=len(x), progress=False),
        trunc=lambda: pathens.path_gradients(view, x, y, tol=1e-6, check=False,
                                             batch_size=len(x), progress=False))


def peak_memory(name: str, what: str, quick: bool, threads: int) -> float:
    """MB of resident memory `what` adds at its peak, in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-of", what, "--models", name, "--threads",
           str(threads)] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(name: str, what: str, quick: bool) -> None:
    """Peak resident memory of one run above the resident memory before it: Linux's peak
    (VmHWM) is reset to the current size first (writing 5 to /proc/self/clear_refs)."""
    model, x, y, loss, _ = build(name, quick)
    view, fns = runs(model, x, y, loss)
    with torch.no_grad():
        model(x[:1])  # libraries and kernels loaded before the baseline
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    fns[what]()
    print((_status_kb("VmHWM") - base) / 1024)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnext50", "seresnext",
                                                    "resnet110", "gpt2"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fb-calls", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny inputs: checks the script runs")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "zoo_gradients.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.memory_of:
        return memory_child(a.models[0], a.memory_of, a.quick)
    print(f"machine: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}", flush=True)
    record = dict(config=vars(a), machine=dict(torch=torch.__version__, threads=a.threads,
                                               cpus=os.cpu_count(),
                                               python=platform.python_version()), models={})
    for name in a.models:
        model, x, y, loss, what = build(name, a.quick)
        view, fns = runs(model, x, y, loss)
        for _ in range(2):  # warm-up: allocator, oneDNN primitives
            fns["fb"]()
        fns["exact"]()

        ratios, fb_times, results = interleaved(fns, ("exact", "check", "trunc"),
                                                repeats=a.repeats, unit_calls=a.fb_calls)
        med = {k: statistics.median(v) for k, v in ratios.items()}
        closed = sum(type(b.parts.layers).__name__ != "NoneType" for b in view.blocks)
        tr = results["trunc"]
        entry = dict(model=what, blocks=view.num_blocks, blocks_with_layers=closed,
                     fb_seconds=statistics.median(fb_times), ratios=med, ratios_per_repeat=ratios,
                     residual=results["check"].residual,
                     trunc_lengths=int((tr.total > 0).sum()), targets=TARGETS.get(name, {}))
        print(f"\n{what}: {view.num_blocks} blocks; fwd+bwd {entry['fb_seconds']:.2f} s")
        for k in ratios:
            target = TARGETS.get(name, {}).get(k)
            verdict = "" if target is None else (" PASS" if med[k] <= target else " FAIL") + \
                f" (target <= {target:g})"
            print(f"  {k:6s} / fwd+bwd  {med[k]:6.2f}   per repeat "
                  + " ".join(f"{v:.2f}" for v in ratios[k]) + verdict)
        print(f"  residual vs the model's own gradient {entry['residual']:.1e}; truncated kept "
              f"{entry['trunc_lengths']} of {view.num_blocks + 1} lengths", flush=True)
        if not a.no_memory:
            mem = {k: peak_memory(name, k, a.quick, a.threads) for k in ("fb", "exact", "trunc")}
            entry["peak_mb"] = mem
            entry["memory_ratio"] = {k: mem[k] / mem["fb"] for k in ("exact", "trunc")}
            print(f"  peak memory: fwd+bwd {mem['fb']:.0f} MB, exact {mem['exact']:.0f} MB "
                  f"({entry['memory_ratio']['exact']:.2f}x), truncated {mem['trunc']:.0f} MB "
                  f"({entry['memory_ratio']['trunc']:.2f}x)", flush=True)
        record["models"][name] = entry
        del model, view, fns, results
    if a.json and not a.quick:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(record, indent=1, default=float))
        print(f"\nfigures written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
