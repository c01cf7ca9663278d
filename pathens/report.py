"""Writing analyses as a report a researcher can read: report.md with figures, an
effective-depth table and what its numbers mean, the configuration and versions;
results.json; a CSV per table.

    a = pathens.analyze(view, (x, y), name="ResNet-56")
    pathens.report.write("out", [a])                      # one network
    pathens.report.write("out", [resnet, plain])          # several, compared

Consumes Analysis objects only (see analysis.py); computes nothing about networks. Figures
are drawn by plots.py; the report gives each a title naming the network and what it shows.
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
from .errors import PathensError
from .outputs import save_figure, write_text

__all__ = ["write"]

NOT_PLAIN = "n/a (plain network: one path)"

# Why the exact and the sampled effective depths differ: said once under the depth table.
EXACT_VS_SAMPLED = (
    "**Exact and sampled gradients measure different things.** Exact: total[k] = ||G_k||, the "
    "norm of the *sum* of the gradients of all C(n, k) paths of length k, so paths whose "
    "gradients point different ways cancel, as they do in the network's own gradient "
    "(sum_k G_k is that gradient). Sampled (Veit et al.'s protocol): total[k] = C(n, k) x the "
    "mean *norm* of one path's gradient, a sum of norms that no cancellation reduces (never "
    "smaller than the exact total), estimated from a few paths per length (standard errors in "
    "the sampled CSV). The more the paths of a length cancel, the more weight the sampled mix "
    "gives that length relative to the exact one, so the two effective depths differ even "
    "without sampling error; cite the exact one for where the gradient comes from, the sampled "
    "one to compare with Veit et al.")

LESION_DEPTH = (
    "**Lesion depth.** The largest tested k such that deleting k random blocks (never a "
    "downsampling one) keeps the mean error over the trials within the margin of the intact "
    "error, for that k and every smaller tested k; untested k between two tested ones are "
    "unknown. Its 95% interval applies the same rule to the top and to the bottom of each k's "
    "band over the trials (the spread of the random draws; the test set's own sampling error "
    "is shared by every condition). k = 1 is judged exactly from the single deletions (every "
    "block of the pool deleted alone), which also give the count of blocks that can each be "
    "deleted alone within the margin.")


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
    """Write the report of `analyses` into the folder `out`; return the path of report.md.

    out:      the folder (created if needed); files of the names below are replaced.
    analyses: Analysis objects from `pathens.analyze`, residual or plain, one section each, in
              order; their names must differ in their slugs (the file-name prefix, e.g.
              "ResNet-56" -> "resnet-56"), or their files would overwrite each other.
    title:    the report's heading.
    command:  the command line (or script) that produced it, recorded at the top and in
              results.json.
    extra:    further settings to record (JSON-serialisable), e.g. timings, checkpoint folder.

    Files: report.md (effective depth per network and what it means, per-network sections
    with figures, configuration and versions); results.json (every number, with each
    analysis's configuration and the versions); per network `<slug>_gradients_exact.csv`,
    `_gradients_sampled.csv`, `_delete_each.csv`, `_delete_random.csv` (+ `_summary.csv`),
    `_reorder.csv` (+ `_summary.csv`), `_branch_variance.csv`, `_effective_depth.csv` (those
    that apply), and figures `<slug>_paths.png`, `<slug>_per_path.png`, `<slug>_lesions.png`;
    with several networks, `comparison.png` (gradient by path length, residual networks) and
    `comparison_lesions.png`.
    """
    analyses = list(analyses)
    _check(analyses)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections, results = [], {}
    for a in analyses:
        slug = _slug(a.name)
        figs = _model_figures(out, slug, a)
        _tables(out, slug, a)
        results[a.name] = _result_dict(a)
        sections.append(_section(a, slug, figs))
    compare = _comparison_figures(out, analyses) if len(analyses) > 1 else {}
    versions = dict(pathens=__version__, torch=torch.__version__, numpy=np.__version__,
                    python=platform.python_version(), platform=platform.platform())
    write_text(out / "results.json", json.dumps(dict(title=title, command=command,
                                                     versions=versions, extra=extra or {},
                                                     models=results), indent=2, default=str))
    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += ["## Effective depth", "", _depth_table(analyses), ""]
    if any(a.sampled is not None for a in analyses):
        lines += [EXACT_VS_SAMPLED, ""]
    if any(a.delete_random is not None for a in analyses):
        lines += [LESION_DEPTH, ""]
    for caption, name in compare.items():
        lines += [f"![{caption}]({name})", ""]
    lines += sections
    lines += ["## Configuration and versions", "", "```json",
              json.dumps(dict(versions=versions, extra=extra or {},
                              analyses={a.name: a.config for a in analyses}), indent=2,
                         default=str), "```", ""]
    write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def _check(analyses) -> None:
    if not analyses:
        raise PathensError("report.write needs at least one analysis")
    seen = {}  # slug -> the first name that took it
    for a in analyses:
        if not hasattr(a, "delete_each") or not hasattr(a, "depth"):
            raise PathensError(f"report.write takes Analysis objects (pathens.analyze), got "
                               f"{type(a).__name__}")
        slug = _slug(a.name)
        if slug in seen:
            raise PathensError(f"analyses {seen[slug]!r} and {a.name!r} would write the same "
                               f"files ({slug}_*): give them names that differ in letters or "
                               f"digits")
        seen[slug] = a.name


# ---- tables ----------------------------------------------------------------------------------

def _depth_table(analyses) -> str:
    levels = {d.level for a in analyses for k, d in a.depth.items() if k != "lesion"}
    mass = f"{levels.pop():.0%}" if len(levels) == 1 else "level (see configuration)"
    head = (f"| model | blocks | intact error | gradient (exact): mean / mode / {mass} interval "
            f"(% of paths) | gradient (sampled): mean / {mass} interval | gradient energy "
            f"(exact): mean | variance model: mean | lesion: random blocks deletable within "
            f"margin (95% CI) | single blocks each deletable within margin |")
    rows = [head, "|" + "---|" * 9]
    for a in analyses:
        d = a.depth
        g, s, e, v = (d.get(k) for k in ("gradient (exact)", "gradient (sampled)",
                                          "gradient energy (exact)", "variance"))
        cells = [a.name, str(a.num_blocks), f"{a.intact_error:.2%}"]
        if a.residual:
            cells += [f"{g.mean:.2f} / {g.mode} / {g.interval[0]}-{g.interval[1]} "
                      f"({100 * g.path_fraction:.3g}%)",
                      "not run" if s is None else f"{s.mean:.2f} / {s.interval[0]}-{s.interval[1]}",
                      f"{e.mean:.2f}", f"{v.mean:.2f}"]
        else:
            cells += [NOT_PLAIN] * 2 + ["n/a"] * 2
        cells += _lesion_cells(a)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _lesion_cells(a) -> list:
    """The lesion depth with its interval and margin, and the single-block count."""
    l = a.depth.get("lesion")
    if l is None:
        return ["n/a (no block can be drawn)", _single_count(a)]
    lo, hi = l.interval
    return [f"{int(l.depth)} (CI {lo}-{hi}; margin {100 * l.details['margin']:.3g} points)",
            _single_count(a)]


def _single_count(a) -> str:
    l = a.depth.get("lesion")
    if l is not None and l.details.get("single_tested") is not None:
        return f"{l.details['single_within']} of {l.details['single_tested']}"
    rows = [r for r in a.delete_each.rows if r["kind"] == "delete"]
    return f"{len(rows)} deletable, none tested against a margin" if rows else "none deletable"


def _section(a, slug: str, figs: dict) -> str:
    each = a.delete_each
    non_down = [r["error"] for r in each.rows if r["kind"] == "delete" and not r["downsampling"]]
    down = [r["error"] for r in each.rows if r["kind"] == "delete" and r["downsampling"]]
    lines = [f"## {a.name}", "",
             f"Model: `{json.dumps(a.model, default=str)}`  ",
             f"Data: `{json.dumps(a.data, default=str)}`  ",
             f"Intact error {each.intact_error:.2%} on {each.num_examples} examples "
             f"(loss {each.intact_loss:.4f}).", ""]
    if a.residual:
        ex = a.exact
        lines.append(f"- Exact decomposition: sum of the G_k matches autograd to "
                     f"{ex.residual:.1e} (relative); most gradient at length "
                     f"{int(ex.lengths[np.argmax(ex.total)])}.")
        if a.sampled is not None:
            lines.append(f"- Sampled protocol ({int(a.sampled.samples.max())} paths per length): "
                         f"mean length {a.depth['gradient (sampled)'].mean:.2f} against the "
                         f"exact {a.depth['gradient (exact)'].mean:.2f} (sum of norms vs norm "
                         f"of the sum: see under the effective-depth table).")
        lines.append(f"- Deleting one non-downsampling block: error {_range(non_down)}; a "
                     f"downsampling block: {_range(down)}.")
    else:
        lines += ["- Path gradients, branch variance: not applicable: a plain network has a "
                  "single path (no shortcuts), so there is nothing to split by length.",
                  f"- Deleting one layer that keeps the shape (replaced by the identity): error "
                  f"{_range(non_down)}; layers that change the shape cannot be deleted "
                  f"({len(each.downsampling_blocks)} of {a.num_blocks})."]
    l = a.depth.get("lesion")
    if l is not None:
        lines.append(f"- Lesion depth: {l.describe().removeprefix('lesion: ')}.")
    else:
        lines.append("- Random deletions: none (no block can be drawn: each one changes the "
                     "shape or is a downsampling block).")
    tables = [f"`{slug}_{k}.csv`" for k in ("delete_random", "reorder") if getattr(a, k)]
    if a.reorder is None:
        lines.append("- Reordering: none (no two blocks have the same shape).")
    if tables:
        lines.append(f"- Random deletions and reorderings: see the figures and "
                     f"{', '.join(tables)}.")
    lines.append("")
    for caption, name in figs.items():
        lines += [f"![{caption}]({name})", ""]
    lines += ["| effective depth | value | distribution mean | mode | interval | mass | % of paths |",
              "|---|---|---|---|---|---|---|"]
    for key, d in a.depth.items():
        lo, hi = d.interval
        if d.source == "lesion":  # not a distribution over lengths: its interval is a CI
            lines.append(f"| {key} | {int(d.depth)} blocks | - | - | {lo}-{hi} "
                         f"({d.level:.0%} CI) | - | - |")
            continue
        percent = None if d.path_fraction is None else 100 * d.path_fraction
        lines.append(f"| {key} | {_fmt(d.depth)} | {_fmt(d.mean)} | {_fmt(d.mode)} | "
                     f"{lo}-{hi} | {_fmt(d.mass)} | {_fmt(percent)} |")
    if not a.residual:
        lines.append(f"| gradient, variance | {NOT_PLAIN} | | | | | |")
    return "\n".join(lines) + "\n"


def _ks(v) -> str:
    return ", ".join(map(str, v))


def _range(v) -> str:
    v = [e for e in v if np.isfinite(e)]
    if not v:
        return "n/a"
    return f"{min(v):.2%} to {max(v):.2%} (median {np.median(v):.2%})"


# ---- figures ---------------------------------------------------------------------------------

def _save(fig, out: Path, name: str) -> str:
    save_figure(fig, out / name, dpi=110)  # atomic; a full disk names the file; rank 0 only
    return name


def _model_figures(out: Path, slug: str, a) -> dict:
    figs = {}
    if a.residual:
        n = a.exact.num_blocks
        # the title names the model, so the legend says which measurement each line is
        grads = {"exact: norm of the sum": a.exact}
        if a.sampled is not None:
            grads["sampled: sum of norms"] = a.sampled
        overlays = {"Binomial(n, 1/2)": paths.binomial_distribution(n),
                    "BN variance model": paths.bn_variance_distribution(n),
                    "measured variance ratios": a.variance.distribution}
        fig, (l, r) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
        plots.plot_path_length_distribution(n, ax=l, variance_ratios=a.variance.ratios,
                                            title="path lengths: all paths and the variance "
                                                  "models")
        plots.plot_total_gradient(grads, ax=r, overlays=overlays,
                                  title="gradient magnitude by path length")
        fig.suptitle(f"{a.name} ({n} blocks): path lengths and gradient by path length")
        figs["path lengths and gradient by path length"] = _save(fig, out, f"{slug}_paths.png")
        if a.sampled is not None:
            per = int(a.sampled.samples.max())
            fig = plots.plot_per_path({f"{a.name}, {per} paths per length": a.sampled},
                                      title=f"{a.name}: gradient of one path vs its length")
            figs["one path's gradient vs its length"] = _save(fig, out, f"{slug}_per_path.png")
    fixed = [] if a.residual else list(a.delete_each.downsampling_blocks)
    unit = "block" if a.residual else "layer"
    panels = [("each", f"each {unit} deleted alone" + (
        f" (identity instead; {_ks(fixed)} change shape: never deleted)" if fixed else ""))]
    if a.delete_random is not None:
        trials = "/".join(str(t) for t in sorted({s["trials"] for s in a.delete_random.summary()}))
        panels.append(("random", f"k random {unit}s deleted ({trials} trials per k)"))
    if a.reorder is not None:
        panels.append(("reorder", f"reordering: swaps of same-shape {unit}s"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.7 * len(panels), 4.7),
                             layout="constrained", squeeze=False)
    for (kind, caption), ax in zip(panels, axes[0]):
        draw = dict(each=lambda **kw: plots.plot_delete_each(a.delete_each, **kw),
                    random=lambda **kw: plots.plot_delete_random(a.delete_random, **kw),
                    reorder=lambda **kw: plots.plot_reorder(a.reorder, **kw))[kind]
        draw(ax=ax, title=caption)
    fig.suptitle(f"{a.name} ({a.num_blocks} blocks): lesions" if a.residual else
                 f"{a.name}: lesions of a plain network ({a.num_blocks} layers, no shortcuts)")
    figs["lesions: " + ", ".join(c for _, c in panels)] = _save(fig, out, f"{slug}_lesions.png")
    return figs


def _comparison_figures(out: Path, analyses) -> dict:
    figs = {}
    residual = [a for a in analyses if a.residual]
    if len(residual) > 1:
        fig = plots.plot_compare({a.name: a.exact for a in residual},
                                 title="share of gradient energy by path length (exact): "
                                       + " vs ".join(a.name for a in residual))
        figs["comparison of path-length mixes"] = _save(fig, out, "comparison.png")
    names = " vs ".join(a.name + ("" if a.residual or "plain" in a.name.lower() else " (plain)")
                        for a in analyses)
    randoms = {a.name: a.delete_random for a in analyses if a.delete_random is not None}
    fig, axes = plt.subplots(1, 1 + bool(randoms), figsize=(6.5 * (1 + bool(randoms)), 4.8),
                             layout="constrained", squeeze=False)
    plots.plot_compare_lesions({a.name: a.delete_each for a in analyses}, ax=axes[0][0],
                               title="each block deleted alone")
    if randoms:
        plots.plot_compare_lesions(randoms, ax=axes[0][1], title="k random blocks deleted")
    fig.suptitle(f"lesions compared: {names}")
    figs["comparison of lesions"] = _save(fig, out, "comparison_lesions.png")
    return figs


# ---- files -----------------------------------------------------------------------------------

def _tables(out: Path, slug: str, a) -> None:
    if a.exact is not None:
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
    if a.variance is not None:
        write_text(out / f"{slug}_branch_variance.csv", a.variance.to_csv())
    rows = [dict(measure=k, **d.table()[0]) for k, d in a.depth.items()]
    if rows:
        header = list(rows[0])
        write_text(out / f"{slug}_effective_depth.csv",
                   "\n".join([",".join(header)]
                             + [",".join(_fmt(r[h], 6) for h in header) for r in rows]))


def _result_dict(a) -> dict:
    def d(res):
        return None if res is None else res.to_dict()

    return dict(model=a.model, data=a.data, config=a.config, residual=a.residual,
                intact_error=a.intact_error, exact=d(a.exact), sampled=d(a.sampled),
                delete_each=d(a.delete_each), delete_random=d(a.delete_random),
                reorder=d(a.reorder), branch_variance=d(a.variance),
                effective_depth={k: v.to_dict() for k, v in a.depth.items()})
