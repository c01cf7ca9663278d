"""Pre-LN vs post-LN vs ReZero transformers as ensembles of paths: De & Smith's question
(BatchNorm vs SkipInit) asked of language models.

For every norm (pathens.transformer.gpt: "pre", "post", "rezero"; "none" with --norms) and
depth (6, 12, 24 layers = 12, 24, 48 residual blocks), a GPT trained on the embedded corpus
(the Python standard library's source, bytes; pathens.text), then on its test split:

1. gradient by path length at the stream entering the first block, exact (tol 0 up to
   --exact-blocks blocks, --tol above): mean length and the shortest range holding 90%, at
   initialisation and after training;
2. single deletion: every sublayer (attention, MLP) and every layer deleted alone, the rise
   in mean next-token loss (perplexity = exp(loss));
3. k-layer deletion: k random layers deleted together, --trials draws per k;
4. reordering: k random swaps of whole layers, loss against the Kendall tau of the order;
5. ShortGPT's Block Influence (pathens.block_influence: 1 - cosine between a layer's input
   and output, mean over tokens) against the single-deletion cost: Spearman rank correlation,
   per layer and per sublayer.

CPU scale (the default; experiments/README.md has the times and the results):

    OMP_NUM_THREADS=1 python experiments/transformer_depth.py

Writes models.csv (one row per network), gradients.csv, delete_each.csv, delete_random.csv,
reorder.csv, block_influence.csv, training.csv, results.json (the configuration, the command
and every row) and figures (*.png) into --out; checkpoints go to --out/checkpoints and are
reused by a later run with the same settings.
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
from scipy import stats

import pathens
from pathens.models import checkpoints
from pathens import lesion
from pathens.analysis import doubling
from pathens.data.text import load_corpus
from pathens.models.train_text import save_lm_checkpoint, train_lm
from pathens.models.transformer import gpt

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--norms", nargs="+", default=["pre", "post", "rezero"],
      choices=["pre", "post", "rezero", "none"])
    a("--depths", type=int, nargs="+", default=[6, 12, 24], help="layers (2 blocks each)")
    a("--width", type=int, default=64)
    a("--heads", type=int, default=4)
    a("--context", type=int, default=64, help="context = training window = analysis window")
    a("--mlp-ratio", type=int, default=4)
    a("--steps", type=int, default=800)
    a("--batch-size", type=int, default=32)
    a("--lr", type=float, default=1e-3)
    a("--warmup", type=int, default=100, help="warm-up steps")
    a("--clip", type=float, default=1.0, help="gradient-norm clipping")
    a("--root", help="a UTF-8 text file or folder of .txt files instead of the stdlib")
    a("--tokenizer", default="bytes", help="bytes (default), chars or hf:FOLDER")
    a("--eval-windows", type=int, default=256, help="test windows for loss, lesions and BI")
    a("--gradient-windows", type=int, default=32, help="test windows for path gradients")
    a("--exact-blocks", type=int, default=24, help="exact sweep (tol 0) up to this many blocks")
    a("--tol", type=float, default=1e-6, help="truncation of the sweep above --exact-blocks")
    a("--trials", type=int, default=5, help="random draws per k (deletion, reordering)")
    a("--loss-margin", type=float, default=0.05,
      help="a deletion 'costs nothing' if the loss rises by at most this (nats)")
    a("--seed", type=int, default=0)
    a("--device", default="cpu")
    a("--out", default=str(HERE / "results" / "transformer_depth"))
    a("--quiet", action="store_true")
    return p.parse_args(argv)


def write_csv(path, rows):
    if rows:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def _rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


# ---- the networks ------------------------------------------------------------------------------

def arch(args, corpus, norm, depth) -> dict:
    """gpt's arguments for one network (dropout 0, ReZero's alpha initialised at 0)."""
    return dict(depth=depth, width=args.width, heads=args.heads, context=args.context,
                vocab_size=corpus.vocab_size, norm=norm, mlp_ratio=args.mlp_ratio,
                dropout=0.0, alpha_init=0.0)


def recipe(args) -> dict:
    return dict(steps=args.steps, batch_size=args.batch_size, seq_len=args.context, lr=args.lr,
                warmup_steps=args.warmup, clip_grad_norm=args.clip, seed=args.seed)


def initial_model(args, corpus, norm, depth):
    torch.manual_seed(args.seed)  # the same initialisation whether trained now or reloaded
    return gpt(**arch(args, corpus, norm, depth)).to(args.device)


def trained_model(args, corpus, norm, depth, ckpt_dir, command, log):
    """(model, info, curve): the checkpoint of an earlier run with the same settings, or trained."""
    path = ckpt_dir / f"{norm}_{depth}.pt"
    want = recipe(args)
    if path.is_file():
        model, meta = checkpoints.load(path, device=args.device)
        train = meta.get("extra", {}).get("train", {})
        if (meta["arch"] == arch(args, corpus, norm, depth)
                and meta.get("data", {}).get("sha256") == corpus.description["sha256"]
                and all(train.get(k) == v for k, v in want.items())):
            return model, dict(checkpoint=_rel(path), train_seconds=meta["extra"]["seconds"]), \
                meta["extra"].get("curve", [])
    model = initial_model(args, corpus, norm, depth)
    kw = {k: v for k, v in want.items() if k != "seq_len"}
    result = train_lm(model, corpus.train, seq_len=args.context, device=args.device,
                      eval_data=corpus.windows("test", seq_len=args.context, limit=128),
                      eval_every=max(1, args.steps // 4), progress=not args.quiet,
                      log=lambda line: log(f"  [{norm} {depth}] {line}"), **kw)
    curve = [round(c["loss"], 5) for c in result.curve]
    save_lm_checkpoint(path, model, result, data=corpus.description, command=command,
                       extra=dict(curve=curve))
    return model, dict(checkpoint=_rel(path), train_seconds=round(result.seconds, 1)), curve


# ---- the measurements --------------------------------------------------------------------------

def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def gradient_rows(pg, norm, depth, stage) -> list:
    frac = pg.fraction()
    return [dict(norm=norm, depth=depth, stage=stage, length=int(k), total=float(t),
                 fraction=float(f)) for k, t, f in zip(pg.lengths, pg.total, frac)]


def alphas(model) -> dict:
    a = {s: [abs(getattr(layer, f"scale_{s}").alpha.item()) for layer in model.h
             if hasattr(getattr(layer, f"scale_{s}"), "alpha")] for s in ("attn", "mlp")}
    return {f"alpha_{s}_mean_abs": float(np.mean(v)) if v else math.nan for s, v in a.items()}


def analyse(args, model, init_model, norm, depth, test, grad_ids, log) -> tuple:
    """(summary row, {table: rows}) of one trained network."""
    start = time.perf_counter()
    view, view0 = pathens.wrap(model), pathens.wrap(init_model)
    n = view.num_blocks
    tol = 0.0 if n <= args.exact_blocks else args.tol
    kw = dict(tol=tol, progress=False)
    pg, pg0 = (pathens.path_gradients(v, grad_ids, grad_ids, **kw) for v in (view, view0))
    ed, ed0 = pathens.effective_depth(pg), pathens.effective_depth(pg0)
    energy = pathens.effective_depth(pg, quantity="energy")
    tables = dict(gradients=gradient_rows(pg0, norm, depth, "init") +
                  gradient_rows(pg, norm, depth, "trained"))

    each_block = lesion.delete_each(view, test, progress=False)
    each_layer = lesion.delete_each(view, test, unit="layer", progress=False)
    intact = each_block.intact_loss
    names = [b.name for b in view.blocks]
    layer_units, block_units = lesion.units(view, "layer"), lesion.units(view, "block")
    bi = {unit: pathens.block_influence(view, test, unit=unit).influence
          for unit in ("layer", "block")}
    rows, dloss = [], {}
    for unit, res, us in (("block", each_block, block_units), ("layer", each_layer, layer_units)):
        d = np.array([r["loss"] - intact for r in res.rows[1:]])
        dloss[unit] = d
        for j, (r, u) in enumerate(zip(res.rows[1:], us)):
            label = names[u[0]] if unit == "block" else names[u[0]].rsplit(".", 1)[0]
            rows.append(dict(norm=norm, depth=depth, unit=unit, index=j, name=label,
                             loss=r["loss"], dloss=float(d[j]), perplexity=math.exp(r["loss"]),
                             error=r["error"], block_influence=float(bi[unit][j])))
    tables["delete_each"] = rows

    rand = lesion.delete_random(view, test, ks=doubling(depth), trials=args.trials, unit="layer",
                                seed=args.seed, progress=False)
    swaps = doubling(lesion.most_swaps(view, "layer"))
    swap = lesion.reorder(view, test, swaps=swaps, trials=args.trials, unit="layer",
                          seed=args.seed, progress=False) if swaps else None
    for name, res in (("delete_random", rand), ("reorder", swap)):
        tables[name] = [dict(norm=norm, depth=depth, k=r["k"], trial=r["trial"], tau=r["tau"],
                             loss=r["loss"], dloss=r["loss"] - intact, error=r["error"])
                        for r in (res.rows[1:] if res is not None else [])]
    survived = 0
    for s in rand.summary():  # the largest k with every k up to it within the loss margin
        if not s["loss_mean"] - intact <= args.loss_margin:
            break
        survived = s["k"]
    taus = [r["tau"] for r in tables["reorder"]]
    re_loss = [r["loss"] for r in tables["reorder"]]
    half = depth // 2
    kinds = np.array([b.sublayer for b in view.blocks])
    row = dict(
        norm=norm, depth=depth, blocks=n, params=sum(p.numel() for p in model.parameters()),
        test_loss=intact, test_perplexity=math.exp(intact), test_accuracy=1 - each_block.intact_error,
        grad_mean_init=ed0.mean, grad_mean=ed.mean, grad_90_lo=ed.interval[0],
        grad_90_hi=ed.interval[1], grad_90_path_fraction=ed.path_fraction,
        grad_energy_mean=energy.mean, grad_length0_share=float(pg.fraction()[0]),
        grad_tol=tol, grad_residual=pg.residual,
        del_layer_median_dloss=float(np.median(dloss["layer"])),
        del_layer_max_dloss=float(dloss["layer"].max()),
        del_layer_worst=int(np.argmax(dloss["layer"])),
        del_layer_free=int((dloss["layer"] <= args.loss_margin).sum()),
        del_layer_first_half_dloss=float(dloss["layer"][:half].mean()),
        del_layer_second_half_dloss=float(dloss["layer"][half:].mean()),
        del_attn_mean_dloss=float(dloss["block"][kinds == "attn"].mean()),
        del_mlp_mean_dloss=float(dloss["block"][kinds == "mlp"].mean()),
        k_layers_within_margin=survived,
        k_layers_within_2pts_error=pathens.effective_depth(rand, margin=0.02).depth,
        reorder_corr_tau_loss=float(np.corrcoef(taus, re_loss)[0, 1]) if len(taus) > 2 else math.nan,
        bi_spearman_layer=spearman(bi["layer"], dloss["layer"]),
        bi_spearman_block=spearman(bi["block"], dloss["block"]),
        bi_top_layer=int(np.argmax(bi["layer"])), **alphas(model),
        analysis_seconds=round(time.perf_counter() - start, 1))
    log(f"  [{norm} {depth}] test loss {intact:.3f} (ppl {math.exp(intact):.2f}); gradient mean "
        f"length {ed0.mean:.2f} at init -> {ed.mean:.2f} of {n} (90% in {ed.interval[0]}-"
        f"{ed.interval[1]}); layer deletion median +{row['del_layer_median_dloss']:.3f}, max "
        f"+{row['del_layer_max_dloss']:.3f}; BI~deletion rho {row['bi_spearman_layer']:.2f}")
    return row, tables


# ---- figures -----------------------------------------------------------------------------------

def figures(out: Path, tables: dict, args) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written, depths, norms = [], args.depths, args.norms
    colour = {nm: f"C{i}" for i, nm in enumerate(["pre", "post", "rezero", "none"])}

    def panels(title):
        fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.4), squeeze=False)
        fig.suptitle(title)
        return fig, axes[0]

    def symlog(ax):  # rises in loss span decades and may dip below 0
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.axhline(0, color="grey", lw=0.5)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)

    fig, axes = panels("share of gradient magnitude by path length (dashed: at init)")
    for ax, d in zip(axes, depths):
        for nm in norms:
            for stage, ls in (("trained", "-"), ("init", "--")):
                r = [g for g in tables["gradients"] if (g["norm"], g["depth"], g["stage"]) == (nm, d, stage)]
                ax.plot([g["length"] for g in r], [g["fraction"] for g in r], ls, color=colour[nm],
                        label=nm if stage == "trained" else None)
        ax.set(title=f"{d} layers ({2 * d} blocks)", xlabel="path length (sublayers passed)",
               xlim=(-0.5, min(2 * d, 24) + 0.5))
        ax.legend()
    save(fig, "gradient_by_length.png")

    fig, axes = panels("single-layer deletion: rise in test loss (nats)")
    for ax, d in zip(axes, depths):
        for nm in norms:
            r = [e for e in tables["delete_each"] if (e["norm"], e["depth"], e["unit"]) == (nm, d, "layer")]
            ax.plot([e["index"] for e in r], [e["dloss"] for e in r], "o-", ms=3, color=colour[nm], label=nm)
        ax.set(title=f"{d} layers", xlabel="layer deleted")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        symlog(ax)
        ax.legend()
    save(fig, "delete_each_layer.png")

    for name, x, xlabel in (("delete_random", "k", "layers deleted (k)"),
                            ("reorder", "tau", "Kendall tau of the layer order")):
        fig, axes = panels(f"{name.replace('_', ' ')}: rise in test loss (nats)")
        for ax, d in zip(axes, depths):
            for nm in norms:
                r = [e for e in tables[name] if (e["norm"], e["depth"]) == (nm, d)]
                ax.plot([e[x] for e in r], [e["dloss"] for e in r], "o", ms=3, alpha=0.6,
                        color=colour[nm], label=nm)
            ax.set(title=f"{d} layers", xlabel=xlabel)
            symlog(ax)
            ax.legend()
        save(fig, f"{name}.png")

    fig, axes = panels("Block Influence vs single-layer deletion cost")
    for ax, d in zip(axes, depths):
        for nm in norms:
            r = [e for e in tables["delete_each"] if (e["norm"], e["depth"], e["unit"]) == (nm, d, "layer")]
            ax.plot([e["block_influence"] for e in r], [e["dloss"] for e in r], "o", ms=4,
                    color=colour[nm], label=nm)
        ax.set(title=f"{d} layers", xlabel="Block Influence (1 - cos)", ylabel="rise in loss",
               xscale="log")
        symlog(ax)
        ax.legend()
    save(fig, "block_influence.png")

    fig, axes = panels("training loss (per step)")
    for ax, d in zip(axes, depths):
        for nm in norms:
            r = [e for e in tables["training"] if (e["norm"], e["depth"]) == (nm, d)]
            ax.plot([e["step"] for e in r], [e["loss"] for e in r], color=colour[nm], lw=0.8, label=nm)
        ax.set(title=f"{d} layers", xlabel="step", ylabel="next-token loss (nats)")
        ax.legend()
    save(fig, "training.png")
    return written


# ---- main --------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    out = Path(args.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "experiments/transformer_depth.py", *(argv or sys.argv[1:])])
    corpus = load_corpus(args.root, tokenizer=args.tokenizer)
    test = corpus.windows("test", seq_len=args.context, limit=args.eval_windows)
    grad_ids = corpus.windows("test", seq_len=args.context, limit=args.gradient_windows)[0]
    log(f"{corpus}; analysis on {len(test[0])} test windows of {args.context} tokens")
    rows, tables = [], {k: [] for k in ("gradients", "delete_each", "delete_random", "reorder",
                                        "training")}
    for depth in args.depths:
        for norm in args.norms:
            model, info, curve = trained_model(args, corpus, norm, depth, out / "checkpoints",
                                               command, log)
            row, t = analyse(args, model, initial_model(args, corpus, norm, depth), norm, depth,
                             test, grad_ids, log)
            rows.append(dict(row, **info))
            for k, v in t.items():
                tables[k].extend(v)
            tables["training"].extend(dict(norm=norm, depth=depth, step=i + 1, loss=v)
                                      for i, v in enumerate(curve))
    write_csv(out / "models.csv", rows)
    for name, t in tables.items():
        write_csv(out / f"{name}.csv", t)
    write_csv(out / "block_influence.csv",
              [{k: r[k] for k in ("norm", "depth", "unit", "index", "name", "block_influence", "dloss")}
               for r in tables["delete_each"]])
    written = figures(out, tables, args)
    results = dict(command=command, config=dict(vars(args), out=_rel(out)),
                   data=corpus.description, recipe=recipe(args), models=rows, figures=written,
                   seconds=round(time.perf_counter() - start, 1))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {out}/ in {results['seconds']:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except pathens.PathensError as err:  # bad input: one line, exit code 2
        print(f"transformer_depth.py: {err}", file=sys.stderr)
        sys.exit(2)
