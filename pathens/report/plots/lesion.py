"""Lesion figures (Veit et al. 2016 Figs. 3, 5a, 5b) from LesionResults, and several networks'
lesions on one axis. Importable as pathens.plots.<name>.

    plot_delete_each(r)   plot_delete_random(r)   plot_reorder(r)
    plot_compare_lesions({"ResNet": each_res, "plain": each_plain})

A classifier's results are drawn as the error, a language model's as the mean next-token loss
with the perplexity on the right-hand axis (plots_common.py says why; metric= chooses).
Per-block figures mark what each block is: a CNN's downsampling blocks in red squares, a
transformer's attention and MLP sublayers (LesionResult.sublayers) each in their own colour and
marker with their own legend entry; a unit="layer" sweep is drawn per layer (both sublayers
deleted together), at the layer's index. Rows whose value is NaN (non-finite outputs) are left
out and counted in the legend's title.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from matplotlib.ticker import MaxNLocator

from ...errors import PathensError
from .common import (BLOCK_STYLE, DOWNSAMPLING_COLOR, INTACT_STYLE, Metric, axes, legend, nan,
                     name_axis, sublayer_label, sublayer_styles, title as set_title)

__all__ = ["plot_delete_each", "plot_delete_random", "plot_reorder", "plot_compare_lesions"]


def _intact_line(ax, result, m: Metric):
    v = m.intact(result)
    if not math.isnan(v):
        ax.axhline(v, label=m.intact_label(result), **INTACT_STYLE)


def _lesion_rows(result, kind: str, m: Metric):
    """(rows of this kind whose value is finite, number of rows of this kind with NaN)."""
    rows = [r for r in result.rows if r["kind"] == kind]
    ok = [r for r in rows if not nan(m.value(r))]
    return ok, len(rows) - len(ok)


def _wilson_yerr(rows) -> np.ndarray:
    """(2, len(rows)) distances from each error down to error_lo and up to error_hi."""
    e = np.array([r["error"] for r in rows], float)
    lo = np.array([r["error_lo"] for r in rows], float)
    hi = np.array([r["error_hi"] for r in rows], float)
    return np.clip(np.vstack([e - lo, hi - e]), 0, None).reshape(2, len(rows))


def unit_of(result) -> str:
    """"block" or "layer": what one deletion of the sweep removed."""
    return result.config.get("unit", "block")


def positions(result) -> tuple:
    """(x of each block index, the names along the x axis): blocks at their index, or for a
    unit="layer" sweep every block at its layer's index, the axis naming the layers (the
    layers as the result recorded them: LesionResult.units)."""
    if unit_of(result) != "layer":
        return {i: i for i in range(len(result.block_names))}, list(result.block_names)
    layers = result.units("layer")
    at = {i: j for j, u in enumerate(layers) for i in u.blocks}
    return {i: at[i] for i in range(len(result.block_names))}, [u.name for u in layers]


def _each_groups(result, rows, m: Metric) -> list:
    """(label, rows, style) per marker group of a single-deletion figure."""
    down = set(result.downsampling_blocks)
    interval = ", 95% Wilson interval" if m.name == "error" else ""
    plain = [r for r in rows if not down & set(r["deleted"])]
    downs = ("downsampling block", [r for r in rows if down & set(r["deleted"])],
             dict(color=DOWNSAMPLING_COLOR, marker="s"))
    if unit_of(result) == "layer":
        what = "all its sublayers" if result.sublayers else "its block"
        return [(f"deleted layer ({what}){interval}", plain, BLOCK_STYLE),
                ("layer holding a downsampling block",) + downs[1:]]
    if not result.sublayers:
        return [(f"deleted block{interval}", plain, BLOCK_STYLE), downs]
    subs = result.sublayers
    styles = sublayer_styles(subs)
    return [(f"{sublayer_label(s)}{interval}", [r for r in plain if subs[r["deleted"][0]] == s],
             st) for s, st in styles.items()] + [downs]


def plot_delete_each(result, *, ax=None, max_names: int = 24, title: Optional[str] = None,
                     metric: Optional[str] = None):
    """The cost of deleting each block alone (Veit et al. Fig. 3), from delete_each: one point
    per deleted block at x = its index (a unit="layer" sweep: per layer at the layer's index).
    A classifier: the error with its 95% Wilson interval; a language model: the mean
    next-token loss, perplexity on the right-hand axis (metric= "error" or "loss" overrides).
    Downsampling blocks in red squares, a transformer's sublayers (result.sublayers) each in
    their own colour and marker, each group its own legend entry; the intact network as a
    dotted line. The x axis names the blocks (common.name_axis): a transformer's shortened
    ("3a" = h.3.attn), thinned when more than fit; other names under the indices when at most
    `max_names`."""
    m = Metric.of(result, metric)
    pos, names = positions(result)
    n = len(names)
    fig, ax = axes(ax, figsize=(min(12, max(6, 0.25 * n + 2)), 4))
    rows, skipped = _lesion_rows(result, "delete", m)
    if unit_of(result) != "layer":
        rows = [r for r in rows if len(r["deleted"]) == 1]
    for label, rs, style in _each_groups(result, rows, m):
        if not rs:
            continue
        x = np.array([pos[r["deleted"][0]] for r in rs])
        e = np.array([m.value(r) for r in rs], float)
        if m.name == "error":
            ax.errorbar(x, e, yerr=_wilson_yerr(rs), fmt="none", ecolor=style["color"],
                        elinewidth=1, capsize=2, alpha=0.8)
        ax.plot(x, e, ls="none", ms=5, label=label, **style)
    _intact_line(ax, result, m)
    ax.set_xlim(-0.7, n - 0.3)
    name_axis(ax, names, what=f"deleted {unit_of(result)}", max_names=max_names)
    ax.set_ylabel(m.ylabel)
    m.perplexity_axis(ax)
    legend(ax, skipped)
    set_title(ax, title)
    return fig


def plot_delete_random(result, *, ax=None, title: Optional[str] = None,
                       metric: Optional[str] = None):
    """The cost of deleting k blocks at random vs k (Veit et al. Fig. 5a), from delete_random:
    the mean over trials per k with the band of result.summary() (95%: mean +- t sd /
    sqrt(trials)) shaded, each trial a faint dot, the intact network dotted. The error for a
    classifier, the mean next-token loss for a language model (as plot_delete_each). Also
    accepts a reorder result (x = number of swaps)."""
    m = Metric.of(result, metric)
    fig, ax = axes(ax)
    kind = "reorder" if result.sweep == "reorder" else "delete"
    rows, skipped = _lesion_rows(result, kind, m)
    summ = [s for s in result.summary() if not nan(m.band(s)[0])]
    if rows:
        ax.plot([r["k"] for r in rows], [m.value(r) for r in rows], ls="none", marker=".",
                color="tab:blue", alpha=0.3, ms=6, label="single trials")
    if summ:
        k = np.array([s["k"] for s in summ], float)
        trials = sorted({s["trials"] for s in summ})
        mean, lo, hi = (np.array(v, float) for v in zip(*(m.band(s) for s in summ)))
        if np.isfinite(lo).any():
            ax.fill_between(k, lo, hi, color="tab:blue", alpha=0.2, lw=0,
                            label="95% band of the mean")
        ax.plot(k, mean, color="tab:blue", marker="o", ms=4,
                label=f"mean over {'/'.join(map(str, trials))} trials")
    _intact_line(ax, result, m)
    ax.set_xlabel("number of swaps" if kind == "reorder" else
                  f"number of {unit_of(result)}s deleted k")
    ax.set_ylabel(m.ylabel)
    m.perplexity_axis(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend(ax, skipped, "trial")
    set_title(ax, title)
    return fig


def plot_reorder(result, *, ax=None, title: Optional[str] = None, metric: Optional[str] = None):
    """The cost of reordering vs the Kendall tau between the new block order and the original
    (Veit et al. Fig. 5b), from reorder: each trial a faint dot, the mean per number of swaps
    at their mean tau as a diamond, the intact network (tau = 1) dotted. The error for a
    classifier, the mean next-token loss for a language model. The x axis runs from 1
    (original order) down, left to right, as in Veit et al. and as the axis label says: more
    reordering to the right, as more blocks deleted in plot_delete_random."""
    m = Metric.of(result, metric)
    fig, ax = axes(ax)
    rows, skipped = _lesion_rows(result, "reorder", m)
    if rows:
        tau = np.array([r["tau"] for r in rows], float)
        ax.scatter(tau, [m.value(r) for r in rows], color="tab:blue", s=14, alpha=0.35,
                   lw=0, label="single trials")
        summ = [s for s in result.summary()
                if not (nan(m.band(s)[0]) or nan(s["tau_mean"]))]
        if summ:
            ax.plot([s["tau_mean"] for s in summ], [m.band(s)[0] for s in summ],
                    color="tab:blue", marker="D", ms=5, ls="none",
                    label="mean per number of swaps")
        lo = float(np.nanmin(tau))
        ax.set_xlim(1 + 0.05 * (1 - lo) + 1e-3, lo - 0.05 * (1 - lo) - 1e-3)
    else:
        ax.set_xlim(1.02, 0)
    _intact_line(ax, result, m)
    # reversed, as Veit et al. Fig. 5b: reordering grows to the right, as the number of blocks
    # deleted does in the panel beside it, so both read "more damage to the right"
    ax.set_xlabel(f"Kendall tau of the {unit_of(result)} order vs the original\n"
                  "(axis reversed, as Veit et al. Fig. 5b: more reordering to the right)")
    ax.set_ylabel(m.ylabel)
    m.perplexity_axis(ax)
    legend(ax, skipped, "trial")
    set_title(ax, title)
    return fig


def plot_compare_lesions(results, *, ax=None, title: Optional[str] = None,
                         metric: Optional[str] = None):
    """Several networks' lesion results of one kind on one Axes, one colour each (Veit et al.
    Fig. 3 draws a residual network's single deletions beside a plain network's).

    results: label -> LesionResult, all delete_each, or all delete_random / reorder.
    metric: "error" or "loss"; None: the loss when every result is a language model's, else
        the error (the one number a classifier and a language model share: a language model's
        is its top-1 next-token error).
    delete_each: the cost of deleting each block alone vs the block's index (a unit="layer"
        sweep: the layer's), joined by a thin line that breaks at blocks not deleted (a plain
        network's layers that change shape); circles, hollow squares on downsampling blocks,
        and for a transformer one marker per sublayer (attention, MLP), each with its entry.
    delete_random / reorder: the mean per k (blocks deleted or swaps made) with the band of
        result.summary() shaded.
    Each network's intact value is a dotted line in its colour.
    """
    results = dict(results)
    if not results:
        raise PathensError("plot_compare_lesions needs at least one result")
    sweeps = {r.sweep for r in results.values()}
    if not (sweeps == {"delete_each"} or sweeps <= {"delete_random", "reorder"}):
        raise PathensError(f"plot_compare_lesions draws results of one kind (all delete_each, or "
                           f"delete_random / reorder), got {', '.join(sorted(sweeps))}")
    if metric is None:
        metric = "loss" if all(r.tokens for r in results.values()) else "error"
    fig, ax = axes(ax)
    each = sweeps == {"delete_each"}
    skipped = 0
    for i, (label, res) in enumerate(results.items()):
        color, m = f"C{i}", Metric(metric, res.tokens)
        if each:
            skipped += _compare_each(ax, label, res, m, color)
        else:
            summ = [s for s in res.summary() if not nan(m.band(s)[0])]
            skipped += sum(s["nonfinite_trials"] for s in res.summary())
            k = np.array([s["k"] for s in summ], float)
            mean, lo, hi = (np.array(v, float) for v in zip(*(m.band(s) for s in summ))) \
                if summ else (np.array([]),) * 3
            ax.fill_between(k, lo, hi, color=color, alpha=0.15, lw=0)
            ax.plot(k, mean, color=color, marker="o", ms=4, label=f"{label}: mean, 95% band")
        v = m.intact(res)
        if not math.isnan(v):
            ax.axhline(v, color=color, ls=":", lw=1.2, label=f"{label}: intact ({v:.3f})")
    units = {unit_of(r) for r in results.values()}
    if each:
        ax.set_xlabel("deleted block (index)" if units == {"block"} else
                      "deleted layer (index)" if units == {"layer"} else
                      "deleted block or layer (index)")
    else:
        kinds = {r.sweep for r in results.values()}
        ax.set_xlabel("number of swaps" if kinds == {"reorder"} else "number of blocks deleted k")
    ms = [Metric(metric, r.tokens) for r in results.values()]
    labels = list(dict.fromkeys(m.ylabel for m in ms))
    ax.set_ylabel(labels[0] if len(labels) == 1 else
                  "error (fraction misclassified; language models: of next tokens)")
    if len(results) == 1:
        ms[0].perplexity_axis(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend(ax, skipped, "condition" if each else "trial")
    set_title(ax, title)
    return fig


def _compare_each(ax, label, res, m: Metric, color) -> int:
    """One network's single deletions on a comparison axis; returns the rows left out."""
    rows, nan_rows = _lesion_rows(res, "delete", m)
    pos, names = positions(res)
    # one point per block (or layer) index, NaN where nothing was deleted (a plain network's
    # shape-changing layers), so the line breaks there instead of bridging the gap
    x = np.arange(len(names))
    e, down = np.full(len(x), np.nan), np.zeros(len(x), bool)
    sub = np.full(len(x), "", dtype=object)
    for r in rows:
        if len(r["deleted"]) == 1 or unit_of(res) == "layer":
            j = pos[r["deleted"][0]]
            e[j], down[j] = m.value(r), r["downsampling"]
            if res.sublayers and unit_of(res) == "block":
                sub[j] = res.sublayers[r["deleted"][0]]
    if not sub.any():
        ax.plot(x, e, color=color, lw=0.8, alpha=0.6, marker="o", ms=4, label=label)
    else:  # a transformer's sublayers: the line in the network's colour, a marker per sublayer
        ax.plot(x, e, color=color, lw=0.8, alpha=0.6, label=label)
        for s, style in sublayer_styles(sub[np.isfinite(e)]).items():
            at = (sub == s) & ~down
            ax.plot(x[at], e[at], ls="none", marker=style["marker"], ms=5, color=color,
                    label=f"{label}: {sublayer_label(s)}")
    if down.any():
        ax.plot(x[down], e[down], ls="none", marker="s", ms=6, mfc="none",
                color=color, label=f"{label}: downsampling blocks")
    return nan_rows
