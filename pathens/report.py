"""Writing analyses as a report a researcher can read: report.md with figures, an
effective-depth table, the configuration and versions; results.json; a CSV per table.

Consumes Analysis objects only (see analysis.py); computes nothing about networks.
"""
from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import __version__, paths, plots
from .outputs import write_text


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def write(out, analyses: list, *, title: str = "pathens report", command: str = "",
          extra: dict | None = None) -> Path:
    """Write report.md, results.json, CSVs and PNG figures for `analyses` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections, results = [], {}
    for a in analyses:
        slug = _slug(a.name)
        figs = _model_figures(out, slug, a)
        _tables(out, slug, a)
        results[a.name] = _result_dict(a)
        sections.append(_section(a, slug, figs))
    compare = _comparison_figure(out, analyses) if len(analyses) > 1 else None
    versions = dict(pathens=__version__, torch=torch.__version__, numpy=np.__version__,
                    python=platform.python_version(), platform=platform.platform())
    write_text(out / "results.json", json.dumps(dict(title=title, command=command,
                                                     versions=versions, extra=extra or {},
                                                     models=results), indent=2, default=str))
    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += ["## Effective depth", "", _depth_table(analyses), ""]
    if compare:
        lines += [f"![comparison of path-length mixes]({compare})", ""]
    lines += sections
    lines += ["## Configuration and versions", "", "```json",
              json.dumps(dict(versions=versions, extra=extra or {},
                              analyses={a.name: a.config for a in analyses}), indent=2,
                         default=str), "```", ""]
    write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def _depth_table(analyses) -> str:
    head = ("| model | blocks | intact error | gradient: mean / mode / 90% interval (% of paths) "
            "| gradient energy: mean | variance model: mean | lesion: blocks deletable within margin |")
    rows = [head, "|" + "---|" * 7]
    for a in analyses:
        g, e, v, l = (a.depth[k] for k in ("gradient (exact)", "gradient energy (exact)",
                                            "variance", "lesion"))
        rows.append(f"| {a.name} | {g.num_blocks} | {a.intact_error:.2%} | {g.mean:.2f} / {g.mode} / "
                    f"{g.interval[0]}-{g.interval[1]} ({100 * g.path_fraction:.3g}%) | {e.mean:.2f} | "
                    f"{v.mean:.2f} | {int(l.depth)} (margin {l.details['margin']:.0%}) |")
    return "\n".join(rows)


def _section(a, slug: str, figs: dict) -> str:
    ex, each = a.exact, a.delete_each
    non_down = [r["error"] for r in each.rows if r["kind"] == "delete" and not r["downsampling"]]
    down = [r["error"] for r in each.rows if r["kind"] == "delete" and r["downsampling"]]
    lines = [f"## {a.name}", "",
             f"Model: `{json.dumps(a.model, default=str)}`  ", f"Data: `{json.dumps(a.data, default=str)}`  ",
             f"Intact error {each.intact_error:.2%} on {each.num_examples} examples "
             f"(loss {each.intact_loss:.4f}).", "",
             f"- Exact decomposition: sum of the G_k matches autograd to {ex.residual:.1e} "
             f"(relative); most gradient at length {int(ex.lengths[np.argmax(ex.total)])}.",
             f"- Deleting one non-downsampling block: error {_range(non_down)}; a downsampling "
             f"block: {_range(down)}.",
             f"- Random deletions and reorderings: see the figures and `{slug}_delete_random.csv`, "
             f"`{slug}_reorder.csv`.", ""]
    for caption, name in figs.items():
        lines += [f"![{caption}]({name})", ""]
    lines += ["| effective depth | value | distribution mean | mode | interval | mass | % of paths |",
              "|---|---|---|---|---|---|---|"]
    for key, d in a.depth.items():
        percent = None if d.path_fraction is None else 100 * d.path_fraction
        lines.append(f"| {key} | {_fmt(d.depth)} | {_fmt(d.mean)} | {_fmt(d.mode)} | "
                     f"{d.interval[0]}-{d.interval[1]} | {_fmt(d.mass)} | {_fmt(percent)} |")
    return "\n".join(lines) + "\n"


def _range(v) -> str:
    v = [e for e in v if np.isfinite(e)]
    if not v:
        return "n/a"
    return f"{min(v):.2%} to {max(v):.2%} (median {np.median(v):.2%})"


def _save(fig, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _model_figures(out: Path, slug: str, a) -> dict:
    n = a.exact.num_blocks
    # keys are legend labels; the plot appends "(exact)" / "(sampled)" itself
    grads = {a.name: a.exact} | ({a.name + "\u2009": a.sampled} if a.sampled is not None else {})
    overlays = {"Binomial(n, 1/2)": paths.binomial_distribution(n),
                "BN variance model": paths.bn_variance_distribution(n),
                "measured variance ratios": a.variance.distribution}
    figs = {}
    fig, (l, r) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    plots.plot_path_length_distribution(n, ax=l, variance_ratios=a.variance.ratios)
    plots.plot_total_gradient(grads, ax=r, overlays=overlays)
    figs["path lengths and gradient by path length"] = _save(fig, out, f"{slug}_paths.png")
    if a.sampled is not None:
        figs["one path's gradient vs its length"] = _save(plots.plot_per_path(a.sampled), out,
                                                          f"{slug}_per_path.png")
    panels = 2 if a.reorder is None else 3
    fig, axes = plt.subplots(1, panels, figsize=(5.7 * panels, 4.5), layout="constrained")
    plots.plot_delete_each(a.delete_each, ax=axes[0])
    plots.plot_delete_random(a.delete_random, ax=axes[1])
    if a.reorder is not None:
        plots.plot_reorder(a.reorder, ax=axes[2])
    figs["lesions: each block, k random blocks, reordering"] = _save(fig, out, f"{slug}_lesions.png")
    return figs


def _comparison_figure(out: Path, analyses) -> str:
    fig = plots.plot_compare({a.name: a.exact for a in analyses})
    return _save(fig, out, "comparison.png")


def _tables(out: Path, slug: str, a) -> None:
    write_text(out / f"{slug}_gradients_exact.csv", a.exact.to_csv())
    if a.sampled is not None:
        write_text(out / f"{slug}_gradients_sampled.csv", a.sampled.to_csv())
    for key in ("delete_each", "delete_random", "reorder"):
        res = getattr(a, key)
        if res is None:
            continue
        write_text(out / f"{slug}_{key}.csv", res.to_csv())
        if key != "delete_each":
            write_text(out / f"{slug}_{key}_summary.csv", res.summary_csv())
    write_text(out / f"{slug}_branch_variance.csv", a.variance.to_csv())
    rows = [dict(measure=k, **d.table()[0]) for k, d in a.depth.items()]
    header = list(rows[0])
    write_text(out / f"{slug}_effective_depth.csv",
               "\n".join([",".join(header)] + [",".join(_fmt(r[h], 6) for h in header) for r in rows]))


def _result_dict(a) -> dict:
    return dict(model=a.model, data=a.data, config=a.config, intact_error=a.intact_error,
                exact=a.exact.to_dict(), sampled=None if a.sampled is None else a.sampled.to_dict(),
                delete_each=a.delete_each.to_dict(), delete_random=a.delete_random.to_dict(),
                reorder=None if a.reorder is None else a.reorder.to_dict(), branch_variance=a.variance.to_dict(),
                effective_depth={k: d.to_dict() for k, d in a.depth.items()})
