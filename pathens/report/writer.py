"""Writing analyses as a report a researcher can read: report.md with figures, an
effective-depth table and what its numbers mean, the configuration and versions;
results.json; a CSV per table.

    a = pathens.analyze(view, (x, y), name="ResNet-56")
    pathens.report.write("out", [a])                      # one network
    pathens.report.write("out", [resnet, plain])          # several, compared

Consumes Analysis objects only (see analysis.py); computes nothing about networks. Figures
are drawn by plots.py; the report gives each a title naming the network and what it shows.

Language models (Analysis.tokens): the error is the top-1 next-token error, given beside the
mean next-token loss and the perplexity, and the lesion figures plot the loss (plots_common.py
says why). Transformers: every per-block figure draws the attention and the MLP sublayers in
their own colour and marker. Residual networks: ShortGPT's Block Influence of every unit beside
the cost of deleting it alone, in a table and a figure, with Spearman's rank correlation.
"""
from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import __version__, combinatorics as paths
from . import html, plots
from ..errors import PathensError
from ..io import save_figure, write_text
from ..measure.registry import result_names
from ..results import csv_text
from .markdown import (EXACT_VS_SAMPLED, LESION_DEPTH, LM_METRICS, PATHS_SHARE, depth_table,
                       listed, num_layers, perplexity, section, unit_of)

__all__ = ["write"]


def file_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


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
    with figures, configuration and versions); report.html (the same as one self-contained
    page, figures embedded, tables sortable: report/html.py); results.json (every number, with each
    analysis's configuration and the versions); per network `<slug>_gradients_exact.csv`,
    `_gradients_sampled.csv`, `_delete_each.csv`, `_delete_random.csv` (+ `_summary.csv`),
    `_reorder.csv` (+ `_summary.csv`), `_branch_variance.csv`, `_effective_depth.csv`,
    `_block_influence.csv` (those that apply), and figures `<slug>_paths.png`,
    `<slug>_per_path.png`, `<slug>_lesions.png`, `<slug>_influence.png`; with several
    networks, `comparison.png` (gradient by path length, residual networks) and
    `comparison_lesions.png`. A language model's lesions are given as next-token error, loss
    and perplexity, and plotted as the loss; a transformer's attention and MLP sublayers are
    told apart in every per-block figure.
    """
    analyses = list(analyses)
    _check(analyses)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections, results = [], {}
    for a in analyses:
        slug = file_slug(a.name)
        figs = model_figures(out, slug, a)
        extras = {key: result_figure(out, slug, a, key) for key in a.results}
        _tables(out, slug, a)
        results[a.name] = _result_dict(a)
        sections.append(section(a, slug, figs, extras))
    compare = _comparison_figures(out, analyses) if len(analyses) > 1 else {}
    write_text(out / "results.json", json.dumps(dict(title=title, command=command,
                                                     versions=versions(), extra=extra or {},
                                                     models=results), indent=2, default=str))
    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += ["## Effective depth", "", depth_table(analyses), ""]
    if any(a.residual for a in analyses):
        lines += [PATHS_SHARE, ""]
    if any(a.sampled is not None for a in analyses):
        lines += [EXACT_VS_SAMPLED, ""]
    if any(a.delete_random is not None for a in analyses):
        lines += [LESION_DEPTH, ""]
    if any(a.tokens for a in analyses):
        lines += [LM_METRICS, ""]
    for note in dict.fromkeys(n for a in analyses for r in a.results.values() for n in r.notes()):
        lines += [note, ""]  # each said once, in the order the measurements are registered
    for caption, name in compare.items():
        lines += [f"![{caption}]({name})", ""]
    lines += sections
    lines += ["## Configuration and versions", "", "```json",
              json.dumps(dict(versions=versions(), extra=extra or {},
                              analyses={a.name: a.config for a in analyses}), indent=2,
                         default=str), "```", ""]
    return finish(out, lines)


def versions() -> dict:
    """The versions a report records (results.json and its last section)."""
    return dict(pathens=__version__, torch=torch.__version__, numpy=np.__version__,
                python=platform.python_version(), platform=platform.platform())


def finish(out: Path, lines: list) -> Path:
    """report.md from its lines, and the same as one self-contained report.html beside it."""
    write_text(out / "report.md", "\n".join(lines))
    write_text(out / "report.html", html.report("\n".join(lines), out))
    return out / "report.md"


def _check(analyses) -> None:
    if not analyses:
        raise PathensError("report.write needs at least one analysis")
    for a in analyses:
        if not hasattr(a, "delete_each") or not hasattr(a, "depth"):
            raise PathensError(f"report.write takes Analysis objects (pathens.analyze), got "
                               f"{type(a).__name__}")
    distinct_slugs(analyses, "analyses")


def distinct_slugs(items, what: str) -> None:
    """Refuse two networks whose names give the same file-name prefix (their files would
    overwrite each other)."""
    seen = {}  # slug -> the first name that took it
    for a in items:
        slug = file_slug(a.name)
        if slug in seen:
            raise PathensError(f"{what} {seen[slug]!r} and {a.name!r} would write the same "
                               f"files ({slug}_*): give them names that differ in letters or "
                               f"digits")
        seen[slug] = a.name


# ---- figures ---------------------------------------------------------------------------------

def _save(fig, out: Path, name: str) -> str:
    save_figure(fig, out / name, dpi=110)  # atomic; a full disk names the file; rank 0 only
    return name


def model_figures(out: Path, slug: str, a) -> dict:
    figs = {}
    if a.residual:
        n = a.exact.num_blocks
        # the title names the model, so the legend says which measurement each line is
        grads = {"exact: norm of the sum": a.exact}
        if a.sampled is not None:
            grads["sampled: sum of norms"] = a.sampled
        b = a.exact.config.get("branches", n)  # parallel branches: prod(b_i + 1) paths
        alpha = _skipinit_alpha(a)  # SkipInit: its model, not the BatchNorm one
        model = {"BN variance model": paths.bn_variance_distribution(n)} if alpha is None else \
            {f"SkipInit model, alpha = {alpha:.3g}": paths.skipinit_distribution(n, alpha)}
        overlays = {"Binomial(n, 1/2)" if b == n else "all paths": paths.binomial_distribution(b),
                    **model, "measured variance ratios": a.variance.distribution}
        fig, (l, r) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
        plots.plot_path_length_distribution(b, ax=l, variance_ratios=a.variance.ratios,
                                            alpha=alpha, bn=alpha is None,
                                            title="path lengths: all paths and the variance "
                                                  "models")
        plots.plot_total_gradient(grads, ax=r, overlays=overlays,
                                  title="gradient by path length: share of magnitude")
        fig.suptitle(f"{a.name} ({n} blocks): path lengths and gradient by path length")
        figs["path lengths and gradient by path length"] = _save(fig, out, f"{slug}_paths.png")
        if a.sampled is not None:
            per = int(a.sampled.samples.max())
            fig = plots.plot_per_path({f"{a.name}, {per} paths per length": a.sampled},
                                      title=f"{a.name}: gradient of one path vs its length")
            figs["one path's gradient vs its length"] = _save(fig, out, f"{slug}_per_path.png")
    fixed = [] if a.residual else list(a.delete_each.downsampling_blocks)
    unit = "block" if a.residual and unit_of(a) == "block" else "layer"
    subs = " (attention and MLP sublayers apart)" if a.delete_each.sublayers and \
        unit == "block" else " (attention and MLP together)" if a.delete_each.sublayers else ""
    panels = [(plots.plot_delete_each, a.delete_each, f"each {unit} deleted alone{subs}" + (
        f" (identity instead; {listed(fixed)} change shape: never deleted)" if fixed else ""))]
    if a.delete_random is not None:
        trials = "/".join(str(t) for t in sorted({s["trials"] for s in a.delete_random.summary()}))
        panels.append((plots.plot_delete_random, a.delete_random,
                       f"k random {unit}s deleted ({trials} trials per k)"))
    if a.reorder is not None:
        panels.append((plots.plot_reorder, a.reorder, f"reordering: swaps of same-shape {unit}s"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.7 * len(panels), 4.7),
                             layout="constrained", squeeze=False)
    for (plot, result, caption), ax in zip(panels, axes[0]):
        plot(result, ax=ax, title=caption)
    metric = ": mean next-token loss (perplexity on the right)" if a.tokens else ""
    layers = f", {num_layers(a)} layers" if subs else ""
    fig.suptitle(f"{a.name} ({a.num_blocks} blocks{layers}): lesions{metric}" if a.residual else
                 f"{a.name}: lesions of a plain network ({a.num_blocks} layers, no shortcuts)")
    figs["lesions: " + ", ".join(c for _, _, c in panels)] = _save(fig, out, f"{slug}_lesions.png")
    return figs


def result_figure(out: Path, slug: str, a, key: str):
    """The file of result `key`'s figure, drawn by the function plots registers for it (None
    when it draws none)."""
    if key not in plots.FIGURES:
        return None
    suffix, draw = plots.FIGURES[key]
    return _save(draw(a.results[key], a.name), out, f"{slug}_{suffix}.png")


def _skipinit_alpha(a):
    """For a SkipInit network (model info "norm" or "arch": {"norm"} is "skipinit"), the alpha
    of its analytic model, Binomial(n, alpha^2 / (1 + alpha^2)): every block's trained alpha
    differs, so alpha^2 is the mean measured branch-to-shortcut variance ratio; else None."""
    info = a.model if isinstance(a.model, dict) else {}
    arch = info.get("arch") if isinstance(info.get("arch"), dict) else {}
    if (info.get("norm") or arch.get("norm")) != "skipinit" or a.variance is None:
        return None
    return float(np.sqrt(np.mean(a.variance.ratios)))


def _comparison_figures(out: Path, analyses) -> dict:
    figs = {}
    residual = [a for a in analyses if a.residual]
    if len(residual) > 1:
        fig = plots.plot_compare({a.name: a.exact for a in residual},
                                 title="gradient by path length: share of energy (exact), "
                                       + " vs ".join(a.name for a in residual))
        figs["comparison of path-length mixes"] = _save(fig, out, "comparison.png")
    names = " vs ".join(a.name + ("" if a.residual or "plain" in a.name.lower() else " (plain)")
                        for a in analyses)
    randoms = {a.name: a.delete_random for a in analyses if a.delete_random is not None}
    fig, axes = plt.subplots(1, 1 + bool(randoms), figsize=(6.5 * (1 + bool(randoms)), 4.8),
                             layout="constrained", squeeze=False)
    block = "block" if all(unit_of(a) == "block" for a in analyses) else "block (or layer)"
    plots.plot_compare_lesions({a.name: a.delete_each for a in analyses}, ax=axes[0][0],
                               title=f"each {block} deleted alone")
    if randoms:
        plots.plot_compare_lesions(randoms, ax=axes[0][1],
                                   title=f"k random {block.replace('block', 'blocks')} deleted")
    fig.suptitle(f"lesions compared: {names}")
    figs["comparison of lesions"] = _save(fig, out, "comparison_lesions.png")
    return {**figs, **registered_comparisons(out, analyses)}


def registered_comparisons(out: Path, networks) -> dict:
    """caption -> file of each registered measurement's comparison figure (plots.COMPARISONS)
    that two networks or more have results for."""
    figs = {}
    for key, (file, caption, draw) in plots.COMPARISONS.items():
        found = {a.name: a.results[key] for a in networks if key in a.results}
        if len(found) > 1:
            figs[caption] = _save(draw(found), out, file)
    return figs


# ---- files -----------------------------------------------------------------------------------

def _tables(out: Path, slug: str, a) -> None:
    """Every table of the analysis (Analysis.tables(): the cells of its DataFrames) as
    `<slug>_<key>.csv`."""
    for key, rows in a.tables().items():
        write_text(out / f"{slug}_{key}.csv", csv_text(rows))


def _result_dict(a) -> dict:
    def d(res):
        return None if res is None else res.to_dict()

    lm = dict(intact_loss=a.intact_loss, intact_perplexity=perplexity(a.intact_loss)) if a.tokens \
        else {}
    return dict(model=a.model, data=a.data, config=a.config, residual=a.residual,
                intact_error=a.intact_error, **lm, exact=d(a.exact), sampled=d(a.sampled),
                delete_each=d(a.delete_each), delete_random=d(a.delete_random),
                reorder=d(a.reorder), branch_variance=d(a.variance),
                effective_depth={k: v.to_dict() for k, v in a.depth.items()},
                **{key: d(a.results.get(key)) for key in result_names()})
