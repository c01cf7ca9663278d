"""Benchmark: the exact and truncated path-gradient decomposition of a Llama-shaped language
model, as multiples of one forward + backward, and the sweep's peak memory (issue 17, item 7;
see BENCHMARKS.md, which also works out what a 7B / 70B model needs).

    python benchmarks/bench_llama.py [--repeats 3] [--threads 1] [--device cpu|cuda] [--quick]

Model: Hugging Face LlamaForCausalLM with random weights (nothing downloaded), float32, eval
mode: 16 layers (32 blocks of the view: attention and MLP), d = 512, 8 query heads and 2
key-value heads (GQA, head dim 64), SwiGLU MLP of 1376, RMSNorm, rotary positions, vocabulary
32000; 8 sequences of 256 tokens, next-token loss. --quick: 2 layers, d = 64, 2 x 32 tokens,
vocabulary 1000 (checks the script runs).

Timed, interleaved (fb, exact, fb, check, fb, trunc, fb, ...), each long run divided by the
median of the fwd+bwd calls just before and after it (same load), the median over repeats
judged against GPT-2's targets (issue 9): exact <= 15, truncated <= 6.
  fb      one forward + backward of the model as the user has it (mean next-token loss,
          .backward() with parameter gradients, as in training): the unit
  exact   path_gradients(view, ids, ids, check=False, batch_size=8): the decomposition alone
  check   the same with check=True (the default): also the model's own fwd+bwd for `residual`
  trunc   path_gradients(..., tol=1e-6, check=False): components below 1e-6 of the largest
          dropped
Peak memory: each of fb / exact / trunc once in a fresh subprocess. On the CPU its peak
resident memory (Linux VmHWM, reset just before by writing 5 to /proc/self/clear_refs; where
that is refused, resource.getrusage's ru_maxrss) minus the resident memory just before (model,
inputs and libraries loaded); on CUDA torch.cuda.max_memory_allocated after
reset_peak_memory_stats, minus the memory allocated before.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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

TARGETS = dict(exact=15.0, trunc=6.0)  # GPT-2's (issue 9)
SHAPE = dict(layers=16, d=512, heads=8, kv_heads=2, mlp=1376, vocab=32000, seqs=8, tokens=256)
QUICK = dict(layers=2, d=64, heads=4, kv_heads=2, mlp=172, vocab=1000, seqs=2, tokens=32)


def build(quick: bool, device: str):
    """(model, token ids, description) for the Llama shape above."""
    from transformers import LlamaConfig, LlamaForCausalLM
    s = QUICK if quick else SHAPE
    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=s["layers"], hidden_size=s["d"],
                         intermediate_size=s["mlp"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv_heads"], vocab_size=s["vocab"],
                         max_position_embeddings=s["tokens"], tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(device).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, s["vocab"], (s["seqs"], s["tokens"]), generator=g).to(device)
    params = sum(p.numel() for p in model.parameters())
    what = (f"Llama {s['layers']} layers, d={s['d']}, {s['heads']}/{s['kv_heads']} heads "
            f"(GQA), MLP {s['mlp']}, vocab {s['vocab']}, {params / 1e6:.1f}M parameters, "
            f"{s['seqs']} x {s['tokens']} tokens, float32, {device}")
    return model, ids, what


def runs(model, ids):
    view = pathens.wrap(model, example_input=ids[:2, :16])
    n = len(ids)

    def fb():
        model.zero_grad(set_to_none=True)
        logits = model(ids).logits
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                        ids[:, 1:].reshape(-1)).backward()

    return view, dict(
        fb=fb,
        exact=lambda: pathens.path_gradients(view, ids, ids, check=False, batch_size=n,
                                             progress=False),
        check=lambda: pathens.path_gradients(view, ids, ids, batch_size=n, progress=False),
        trunc=lambda: pathens.path_gradients(view, ids, ids, tol=1e-6, check=False,
                                             batch_size=n, progress=False))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- peak memory, one subprocess per measurement ----------------------------------------------

def peak_memory(what: str, a) -> float:
    """MB that `what` adds at its peak, measured in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-of", what, "--threads", str(a.threads),
           "--device", a.device] + (["--quick"] if a.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(what: str, a) -> None:
    model, ids, _ = build(a.quick, a.device)
    view, fns = runs(model, ids)
    with torch.no_grad():
        model(ids[:1, :8])  # libraries and kernels loaded before the baseline
    if a.device.startswith("cuda"):
        sync(a.device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fns[what]()
        sync(a.device)
        print((torch.cuda.max_memory_allocated() - base) / 2 ** 20)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = _status_kb("VmRSS")
        fns[what]()
        print((_status_kb("VmHWM") - base) / 1024)
    except OSError:  # no /proc reset: the process's own peak (maxrss, kB on Linux) as delta
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fns[what]()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)


# ---- timing -------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fb-calls", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="a tiny model: checks the script runs")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "llama.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.memory_of:
        return memory_child(a.memory_of, a)
    gpu = torch.cuda.get_device_name() if a.device.startswith("cuda") else None
    print(f"machine: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}" + (f", {gpu}" if gpu else ""), flush=True)
    model, ids, what = build(a.quick, a.device)
    view, fns = runs(model, ids)
    print(f"{what}: {view.num_blocks} blocks", flush=True)
    for _ in range(2):  # warm-up: allocator, kernels
        fns["fb"]()
    fns["exact"]()
    sync(a.device)

    ratios, fb_times, results = interleaved(fns, ("exact", "check", "trunc"), repeats=a.repeats,
                                            unit_calls=a.fb_calls, sync=lambda: sync(a.device))
    med = {k: statistics.median(v) for k, v in ratios.items()}
    tr = results["trunc"]
    entry = dict(model=what, blocks=view.num_blocks, fb_seconds=statistics.median(fb_times),
                 ratios=med, ratios_per_repeat=ratios, residual=results["check"].residual,
                 trunc_residual=float((tr.total - results["check"].total).__abs__().max()
                                      / results["check"].total.max()),
                 trunc_lengths=int((tr.total > 0).sum()), targets=TARGETS)
    print(f"fwd+bwd {entry['fb_seconds']:.2f} s")
    for k in ratios:
        target = TARGETS.get(k)
        verdict = "" if target is None else (" PASS" if med[k] <= target else " FAIL") + \
            f" (target <= {target:g})"
        print(f"  {k:6s} / fwd+bwd  {med[k]:6.2f}   per repeat "
              + " ".join(f"{v:.2f}" for v in ratios[k]) + verdict)
    print(f"  residual vs the model's own gradient {entry['residual']:.1e}; truncated kept "
          f"{entry['trunc_lengths']} of {view.num_blocks + 1} lengths (largest change of a "
          f"length's norm {entry['trunc_residual']:.1e} of the largest)", flush=True)
    if not a.no_memory:
        mem = {k: peak_memory(k, a) for k in ("fb", "exact", "trunc")}
        entry["peak_mb"] = mem
        entry["memory_ratio"] = {k: mem[k] / mem["fb"] for k in ("exact", "trunc")}
        print(f"  peak memory: fwd+bwd {mem['fb']:.0f} MB, exact {mem['exact']:.0f} MB "
              f"({entry['memory_ratio']['exact']:.2f}x), truncated {mem['trunc']:.0f} MB "
              f"({entry['memory_ratio']['trunc']:.2f}x)", flush=True)
    record = dict(config=vars(a), machine=dict(torch=torch.__version__, threads=a.threads,
                                               cpus=os.cpu_count(), gpu=gpu,
                                               python=platform.python_version()), llama=entry)
    if a.json and not a.quick:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(record, indent=1, default=float))
        print(f"\nfigures written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
