"""Figures from result objects: Veit et al. (2016) Figs. 3, 5 and 6, and model comparisons.

    plot_path_length_distribution(54, alpha=0.5)      # fraction of paths per length + models
    plot_total_gradient({"exact": pg, "sampled": ps}, overlays={"BN model": bn})   # Fig. 6(b)
    plot_per_path({"sampled": ps})                     # one path's gradient vs length, log y
    plot_delete_each(r)   plot_delete_random(r)   plot_reorder(r)       # Figs. 3, 5(a), 5(b)
    plot_compare({"BatchNorm": pg_bn, "SkipInit": pg_si})               # side by side
    plot_compare_lesions({"ResNet": each_res, "plain": each_plain})      # Veit et al. Fig. 3

Each function takes `ax=None` (a new figure when None) and `title=None` (the Axes' title when
given: the caller knows which model it shows), draws labelled axes with a legend, returns the
Figure and never calls plt.show(). Results in, figures out: no torch, no computation beyond
normalising what the results hold. Lesion rows whose error is NaN (non-finite outputs) are
left out and counted in the legend's title. A legend entry is the label the caller gave,
followed by the method ("(exact)", "(sampled)") unless the label already names it.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, MaxNLocator

from . import paths as _paths
from .errors import PathensError

if TYPE_CHECKING:  # for annotations only: plots consume results, never import them
    from .gradients import PathGradients

__all__ = ["plot_path_length_distribution", "plot_total_gradient", "plot_gradient_by_length",
           "plot_per_path", "plot_delete_each", "plot_delete_random", "plot_reorder",
           "plot_compare", "plot_compare_lesions"]

# Line style by method: the exact decomposition solid with circles, Veit's sampling dash-dot
# with squares, so both can share one axis.
_METHOD_STYLE = {"exact": dict(marker="o", ls="-"), "sampled": dict(marker="s", ls="-.")}
_OVERLAY_STYLE = dict(ls="--", lw=1.2, marker=None)
_INTACT_STYLE = dict(color="black", ls=":", lw=1.2)
_DOWNSAMPLING_COLOR = "tab:red"


def _axes(ax, figsize=(6, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def _as_mapping(results) -> Mapping:
    """A single result becomes {its method: result}."""
    return {results.method: results} if hasattr(results, "method") else results


def _label(label: str, res) -> str:
    """label (method), without repeating a method the label already names: a bare sampled
    result is "sampled", not "sampled (sampled)"."""
    return label if re.search(rf"\b{re.escape(res.method)}\b", label) else f"{label} ({res.method})"


def _title(ax, title: Optional[str]) -> None:
    if title:
        ax.set_title(title, fontsize=10)


def _raw(res, quantity: str) -> np.ndarray:
    """Per-length gradient amount: "magnitude" total, "energy" total^2."""
    if quantity not in ("energy", "magnitude"):
        raise PathensError(f"quantity must be 'energy' or 'magnitude', got {quantity!r}")
    return np.asarray(res.total, float) ** (2 if quantity == "energy" else 1)


def _share(res, quantity: str) -> np.ndarray:
    """Per-length share of the gradient: "energy" total^2 / sum total^2, "magnitude"
    total / sum total."""
    v = _raw(res, quantity)
    s = np.nansum(v)
    return v / s if s > 0 else np.full_like(v, np.nan)


def _legend(ax, skipped: int = 0, what: str = "condition"):
    """A legend (when anything is labelled), its title counting the rows left out."""
    title = (f"{skipped} {what}{'s' if skipped != 1 else ''} with NaN error not shown"
             if skipped else None)
    handles, _ = ax.get_legend_handles_labels()
    if handles or title:
        ax.legend(fontsize=8, title=title, title_fontsize=8)


def _intact_line(ax, result):
    if not math.isnan(result.intact_error):
        ax.axhline(result.intact_error, label=f"intact network ({result.intact_error:.3f})",
                   **_INTACT_STYLE)


def _lesion_rows(result, kind: str):
    """(finite rows of this kind, number of rows of this kind with a NaN error)."""
    rows = [r for r in result.rows if r["kind"] == kind]
    ok = [r for r in rows if not _nan(r["error"])]
    return ok, len(rows) - len(ok)


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _wilson_yerr(rows) -> np.ndarray:
    """(2, len(rows)) distances from each error down to error_lo and up to error_hi."""
    e = np.array([r["error"] for r in rows], float)
    lo = np.array([r["error_lo"] for r in rows], float)
    hi = np.array([r["error_hi"] for r in rows], float)
    return np.clip(np.vstack([e - lo, hi - e]), 0, None).reshape(2, len(rows))


# ---- path-length distributions and gradients -------------------------------------------------

def plot_path_length_distribution(n: int, *, ax=None, alpha=None,
                                  variance_ratios: Optional[Sequence[float]] = None,
                                  title: Optional[str] = None):
    """The fraction of the 2^n paths of each length, Binomial(n, 1/2) (Veit et al. Fig. 6a),
    with the BatchNorm variance model beside it and, when given, the SkipInit model for branch
    scale `alpha` (a number, or a sequence of them for one curve each) and the measured model
    from per-block branch-to-shortcut variance ratios (paths.variance_ratio_distribution).

    Lines, in order: all paths (solid), BN model, then SkipInit, then measured (dashed), each
    over k = 0..n; each legend entry says what it is a share of (paths, or the output variance
    for the models) and gives the distribution's mean length.
    """
    binomial = _paths.binomial_distribution(n)  # checks n
    n = len(binomial) - 1
    fig, ax = _axes(ax)
    k = np.arange(n + 1)
    curves = [(f"share of the 2^{n} paths: Binomial(n, 1/2)", binomial,
               dict(marker="o", ms=3, ls="-", color="black"))]
    curves.append(("share of variance, BatchNorm model", _paths.bn_variance_distribution(n),
                   dict(_OVERLAY_STYLE)))
    alphas = [] if alpha is None else list(np.atleast_1d(alpha))
    for a in alphas:
        curves.append((f"share of variance, SkipInit alpha={float(a):g}",
                       _paths.skipinit_distribution(n, float(a)), dict(_OVERLAY_STYLE)))
    if variance_ratios is not None:
        r = np.asarray(variance_ratios, float)
        if r.shape != (n,):
            raise PathensError(f"variance_ratios must hold one ratio per block ({n}), "
                               f"got shape {r.shape}")
        curves.append(("share of variance, measured branch ratios",
                       _paths.variance_ratio_distribution(r), dict(_OVERLAY_STYLE, ls="-.")))
    for label, dist, style in curves:
        ax.plot(k, dist, label=f"{label} (mean {_paths.distribution_mean(dist):.2f})", **style)
    ax.set_xlabel("path length k (residual branches passed)")
    ax.set_ylabel("share at length k (of paths, or of variance)")
    ax.set_xlim(-0.5, n + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(ax)
    _title(ax, title)
    return fig


def plot_total_gradient(results, *, ax=None, overlays: Optional[Mapping[str, np.ndarray]] = None,
                        normalize: bool = True, quantity: str = "magnitude",
                        title: Optional[str] = None):
    """Total gradient magnitude carried by all paths of each length (Veit et al. Fig. 6b),
    one line per result: exact results solid with circles, sampled ones dash-dot with squares
    and, for quantity="magnitude", +- one standard error bars (C(n, k) x per_path_se,
    normalised like the line).

    results:   label -> PathGradients (or a single PathGradients).
    normalize: True plots total[k] / sum(total) (shares summing to 1, so results of different
               scale and the analytic models compare); False plots total (or total^2) itself.
    quantity:  "magnitude" (total, as Veit) or "energy" (total^2; what the analytic variance
               models predict for the exact method).
    overlays:  label -> analytic distribution over lengths 0..n (e.g. paths.bn_variance_
               distribution(n)), drawn dashed; with normalize=False scaled so that it sums to
               the first result's plotted total.
    The exact total is the norm of the *sum* of the paths' gradients, the sampled one the
    *sum of their norms*: compare their shapes (normalize=True), not their scale.
    """
    results = _as_mapping(results)
    fig, ax = _axes(ax)
    scale = None
    for label, res in results.items():
        raw = _raw(res, quantity)
        denom = float(np.nansum(raw)) if normalize else 1.0
        y = raw / denom if denom > 0 else np.full_like(raw, np.nan)
        scale = float(np.nansum(y)) if scale is None else scale
        style = _METHOD_STYLE.get(res.method, dict(marker="^", ls="-"))
        line, = ax.plot(res.lengths, y, ms=4, label=_label(label, res), **style)
        if res.method == "sampled" and quantity == "magnitude" and denom > 0:
            se = np.asarray(res.counts, float) * np.nan_to_num(res.per_path_se) / denom
            ax.errorbar(res.lengths, y, yerr=se, fmt="none", ecolor=line.get_color(),
                        elinewidth=1, alpha=0.7)
    for label, dist in (overlays or {}).items():
        dist = np.asarray(dist, float)
        ax.plot(np.arange(len(dist)), dist * (1.0 if normalize or scale is None else scale),
                label=label, **_OVERLAY_STYLE)
    ax.set_xlabel("path length k (residual branches passed)")
    what = "gradient " + ("energy" if quantity == "energy" else "magnitude")
    ax.set_ylabel(f"share of total {what}" if normalize else f"total {what}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _crop_to_mass(ax)
    _legend(ax)
    _title(ax, title)
    return fig


def _crop_to_mass(ax, rel: float = 1e-3) -> None:
    """Deep networks concentrate the gradient on short paths: a 600-block network would spend
    most of the x axis on lengths with nothing to see. Show lengths up to the last one where
    some curve reaches rel x its own peak, plus a fifth as margin, when that hides more than
    half of the axis (otherwise the whole axis stays)."""
    last, longest = 0, 0
    for ln in ax.lines:
        x, y = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
        if not len(x) or not np.isfinite(y).any():
            continue
        longest = max(longest, int(x.max()))
        big = np.flatnonzero(np.nan_to_num(y) >= rel * np.nanmax(y))
        last = max(last, int(x[big].max()) if len(big) else 0)
    right = last + max(3, last // 5)
    if right < longest / 2:
        ax.set_xlim(-0.5, right + 0.5)


def plot_gradient_by_length(results: Mapping[str, "PathGradients"], *, ax=None,
                            overlays: Optional[Mapping[str, np.ndarray]] = None,
                            quantity: str = "energy", title: Optional[str] = None):
    """Share of the gradient carried by paths of each length, one line per result.

    quantity: "energy" plots total[k]^2 / sum total^2 (for the exact method, the share of
    ||g||^2 carried by length k when paths are uncorrelated: what the analytic variance
    models predict); "magnitude" plots total[k] / sum total (Veit et al.'s Fig. 6 shape).
    overlays: label -> analytic distribution over lengths 0..n, drawn dashed.
    Same as plot_total_gradient(results, normalize=True, quantity=quantity).
    """
    return plot_total_gradient(results, ax=ax, overlays=overlays, normalize=True,
                               quantity=quantity, title=title)


def plot_per_path(results, *, ax=None, title: Optional[str] = None):
    """Gradient magnitude of a single path vs its length, log scale, with standard errors.

    Only sampled results measure single paths; exact results are skipped (their per_path,
    ||G_k|| / C(n, k), is the norm of the *mean* path gradient, which cancellation between
    paths makes far smaller than a typical path's). Lengths whose per_path is 0 (nothing
    measured) are left out. One line per sampled result, y = per_path."""
    results = _as_mapping(results)
    fig, ax = _axes(ax)
    drawn = 0
    for label, res in results.items():
        if res.method != "sampled":
            continue
        keep = np.asarray(res.per_path) > 0
        line, = ax.plot(res.lengths[keep], res.per_path[keep], marker="s", ms=4, ls="-.",
                        label=_label(label, res))
        ax.errorbar(res.lengths[keep], res.per_path[keep], yerr=res.per_path_se[keep],
                    fmt="none", ecolor=line.get_color(), elinewidth=1, capsize=2, alpha=0.7)
        drawn += 1
    if drawn:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no sampled results: single paths are measured\n"
                "only by path_gradients(..., method='sampled')",
                transform=ax.transAxes, ha="center", va="center", fontsize=9)
    ax.set_xlabel("path length k (residual branches passed)")
    ax.set_ylabel("gradient magnitude of one path")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(ax)
    _title(ax, title)
    return fig


def plot_compare(results: Mapping[str, "PathGradients"], *, quantity: str = "energy", axes=None,
                 overlays: Optional[Mapping[str, np.ndarray]] = None,
                 title: Optional[str] = None):
    """Several models side by side (e.g. BatchNorm vs SkipInit): for each, the share of the
    gradient carried by each path length (quantity "energy" or "magnitude", as in
    plot_total_gradient) and its mean length sum_k k share[k] as a vertical line.

    axes: None (a new figure, one panel per model sharing the y axis), a sequence of one
          Axes per model, or a single Axes (every model on it, one colour each).
    overlays: model label -> analytic distribution over 0..n, drawn dashed in that model's
          panel (or colour), with its mean in the legend.
    title: when given, the figure's title, and each panel of a new figure is titled with its
          model's label.
    """
    results = _as_mapping(results)
    m = len(results)
    if m == 0:
        raise PathensError("plot_compare needs at least one result")
    own = axes is None
    if own:
        fig, axes = plt.subplots(1, m, figsize=(4 * m + 1, 3.8), sharey=True,
                                 layout="constrained", squeeze=False)
        axes = list(axes[0])
    elif hasattr(axes, "plot"):  # one shared Axes
        axes = [axes] * m
    else:
        axes = list(np.ravel(axes))
        if len(axes) != m:
            raise PathensError(f"axes must be one Axes or one per model ({m}), got {len(axes)}")
    shared = len(set(map(id, axes))) == 1
    for i, ((label, res), ax) in enumerate(zip(results.items(), axes)):
        color = f"C{i}" if shared else "C0"
        share = _share(res, quantity)
        mean = float(np.nansum(res.lengths * share))
        ax.plot(res.lengths, share, color=color, ms=4, label=_label(label, res),
                **_METHOD_STYLE.get(res.method, dict(marker="^", ls="-")))
        ax.axvline(mean, color=color, ls=":", lw=1.5, label=f"mean length {mean:.2f}")
        if overlays and label in overlays:
            dist = np.asarray(overlays[label], float)
            ax.plot(np.arange(len(dist)), dist, color="gray" if not shared else color,
                    label=f"analytic model (mean {_paths.distribution_mean(dist):.2f})",
                    **_OVERLAY_STYLE)
    what = "energy" if quantity == "energy" else "magnitude"
    for j, ax in enumerate(dict.fromkeys(axes)):  # each distinct Axes once, in order
        ax.set_xlabel("path length k (residual branches passed)")
        if j == 0 or not own:  # our own panels share the y axis: label it once
            ax.set_ylabel(f"share of gradient {what}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend(ax)
    if title:
        if own and not shared:
            for (label, _), ax in zip(results.items(), axes):
                _title(ax, label)
        axes[0].figure.suptitle(title)
    return axes[0].figure


# ---- lesions ---------------------------------------------------------------------------------

def plot_delete_each(result, *, ax=None, max_names: int = 24, title: Optional[str] = None):
    """Error with each block deleted alone (Veit et al. Fig. 3), from delete_each: one point
    per deleted block at x = its index, with its 95% Wilson interval; downsampling blocks in
    red squares (their own legend entry); the intact network's error as a dotted line.
    With at most `max_names` blocks, the block names are written under the indices."""
    fig, ax = _axes(ax, figsize=(min(12, max(6, 0.25 * len(result.block_names) + 2)), 4))
    rows, skipped = _lesion_rows(result, "delete")
    rows = [r for r in rows if len(r["deleted"]) == 1]
    down = set(result.downsampling_blocks)
    groups = [("deleted block, 95% Wilson interval", [r for r in rows if r["deleted"][0] not in down],
               dict(color="tab:blue", marker="o")),
              ("downsampling block", [r for r in rows if r["deleted"][0] in down],
               dict(color=_DOWNSAMPLING_COLOR, marker="s"))]
    for label, rs, style in groups:
        if not rs:
            continue
        x = np.array([r["deleted"][0] for r in rs])
        e = np.array([r["error"] for r in rs], float)
        ax.errorbar(x, e, yerr=_wilson_yerr(rs), fmt="none", ecolor=style["color"],
                    elinewidth=1, capsize=2, alpha=0.8)
        ax.plot(x, e, ls="none", ms=5, label=label, **style)
    _intact_line(ax, result)
    n = len(result.block_names)
    ax.set_xlim(-0.7, n - 0.3)
    if n <= max_names:
        ax.xaxis.set_major_locator(FixedLocator(range(n)))
        ax.xaxis.remove_overlapping_locs = False  # minor ticks sit on the major ones
        ax.set_xticks(range(n), [str(b) for b in result.block_names], minor=True)
        ax.tick_params(axis="x", which="minor", length=0, pad=20, labelsize=7,
                       labelrotation=90 if n > 8 else 0)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("deleted block (index" + (", name)" if n <= max_names else ")"))
    ax.set_ylabel("error (fraction misclassified)")
    _legend(ax, skipped)
    _title(ax, title)
    return fig


def plot_delete_random(result, *, ax=None, title: Optional[str] = None):
    """Error vs the number k of blocks deleted at random (Veit et al. Fig. 5a), from
    delete_random: the mean over trials per k with the band of result.summary() (95%: mean
    +- t sd / sqrt(trials)) shaded, each trial a faint dot, the intact error a dotted line.
    Also accepts a reorder result (x = number of swaps)."""
    fig, ax = _axes(ax)
    kind = "reorder" if result.sweep == "reorder" else "delete"
    rows, skipped = _lesion_rows(result, kind)
    summ = [s for s in result.summary() if not _nan(s["error_mean"])]
    if rows:
        ax.plot([r["k"] for r in rows], [r["error"] for r in rows], ls="none", marker=".",
                color="tab:blue", alpha=0.3, ms=6, label="single trials")
    if summ:
        k = np.array([s["k"] for s in summ], float)
        trials = sorted({s["trials"] for s in summ})
        ax.fill_between(k, [s["error_lo"] for s in summ], [s["error_hi"] for s in summ],
                        color="tab:blue", alpha=0.2, lw=0, label="95% band of the mean")
        ax.plot(k, [s["error_mean"] for s in summ], color="tab:blue", marker="o", ms=4,
                label=f"mean over {'/'.join(map(str, trials))} trials")
    _intact_line(ax, result)
    ax.set_xlabel("number of swaps" if kind == "reorder" else "number of blocks deleted k")
    ax.set_ylabel("error (fraction misclassified)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(ax, skipped, "trial")
    _title(ax, title)
    return fig


def plot_reorder(result, *, ax=None, title: Optional[str] = None):
    """Error vs the Kendall tau between the new block order and the original (Veit et al.
    Fig. 5b), from reorder: each trial a faint dot, the mean error per number of swaps at
    their mean tau as a diamond, the intact error (tau = 1) dotted. The x axis
    runs from 1 (original order) down, left to right."""
    fig, ax = _axes(ax)
    rows, skipped = _lesion_rows(result, "reorder")
    if rows:
        tau = np.array([r["tau"] for r in rows], float)
        ax.scatter(tau, [r["error"] for r in rows], color="tab:blue", s=14, alpha=0.35,
                   lw=0, label="single trials")
        summ = [s for s in result.summary()
                if not (_nan(s["error_mean"]) or _nan(s["tau_mean"]))]
        if summ:
            ax.plot([s["tau_mean"] for s in summ], [s["error_mean"] for s in summ],
                    color="tab:blue", marker="D", ms=5, ls="none",
                    label="mean per number of swaps")
        lo = float(np.nanmin(tau))
        ax.set_xlim(1 + 0.05 * (1 - lo) + 1e-3, lo - 0.05 * (1 - lo) - 1e-3)
    else:
        ax.set_xlim(1.02, 0)
    _intact_line(ax, result)
    ax.set_xlabel("Kendall tau of the block order vs the original")
    ax.set_ylabel("error (fraction misclassified)")
    _legend(ax, skipped, "trial")
    _title(ax, title)
    return fig


def plot_compare_lesions(results, *, ax=None, title: Optional[str] = None):
    """Several networks' lesion results of one kind on one Axes, one colour each (Veit et al.
    Fig. 3 draws a residual network's single deletions beside a plain network's).

    results: label -> LesionResult, all delete_each, or all delete_random / reorder.
    delete_each: error with each block deleted alone vs the block's index (circles, hollow
        squares on downsampling blocks), joined by a thin line that breaks at blocks not
        deleted (a plain network's layers that change shape).
    delete_random / reorder: the mean error per k (blocks deleted or swaps made) with the band
        of result.summary() shaded.
    Each network's intact error is a dotted line in its colour.
    """
    results = dict(results)
    if not results:
        raise PathensError("plot_compare_lesions needs at least one result")
    sweeps = {r.sweep for r in results.values()}
    if not (sweeps == {"delete_each"} or sweeps <= {"delete_random", "reorder"}):
        raise PathensError(f"plot_compare_lesions draws results of one kind (all delete_each, or "
                           f"delete_random / reorder), got {', '.join(sorted(sweeps))}")
    fig, ax = _axes(ax)
    each = sweeps == {"delete_each"}
    skipped = 0
    for i, (label, res) in enumerate(results.items()):
        color = f"C{i}"
        if each:
            rows, nan = _lesion_rows(res, "delete")
            skipped += nan
            # one point per block index, NaN where nothing was deleted (a plain network's
            # shape-changing layers), so the line breaks there instead of bridging the gap
            x = np.arange(len(res.block_names))
            e, down = np.full(len(x), np.nan), np.zeros(len(x), bool)
            for r in rows:
                if len(r["deleted"]) == 1:
                    e[r["deleted"][0]], down[r["deleted"][0]] = r["error"], r["downsampling"]
            ax.plot(x, e, color=color, lw=0.8, alpha=0.6, marker="o", ms=4, label=label)
            if down.any():
                ax.plot(x[down], e[down], ls="none", marker="s", ms=6, mfc="none",
                        color=color, label=f"{label}: downsampling blocks")
        else:
            summ = [s for s in res.summary() if not _nan(s["error_mean"])]
            skipped += sum(s["nonfinite_trials"] for s in res.summary())
            k = np.array([s["k"] for s in summ], float)
            ax.fill_between(k, [s["error_lo"] for s in summ], [s["error_hi"] for s in summ],
                            color=color, alpha=0.15, lw=0)
            ax.plot(k, [s["error_mean"] for s in summ], color=color, marker="o", ms=4,
                    label=f"{label}: mean, 95% band")
        if not math.isnan(res.intact_error):
            ax.axhline(res.intact_error, color=color, ls=":", lw=1.2,
                       label=f"{label}: intact ({res.intact_error:.3f})")
    if each:
        ax.set_xlabel("deleted block (index)")
    else:
        kinds = {r.sweep for r in results.values()}
        ax.set_xlabel("number of swaps" if kinds == {"reorder"} else "number of blocks deleted k")
    ax.set_ylabel("error (fraction misclassified)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(ax, skipped, "condition" if each else "trial")
    _title(ax, title)
    return fig
