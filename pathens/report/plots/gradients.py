"""Figures of the gradient by path length (Veit et al. 2016, Figs. 6(a), 6(b)) and of
path-length distributions, for one model or several side by side (the conventions every
figure follows: plots/__init__.py)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from ... import combinatorics as _paths
from ...errors import PathensError
from .common import axes as _axes, legend as _legend, title as _title

if TYPE_CHECKING:  # for annotations only: plots consume results, never import them
    from ...measure.path_gradients import PathGradients

__all__ = ["plot_path_length_distribution", "plot_total_gradient", "plot_gradient_by_length",
           "plot_per_path", "plot_compare", "share_label"]

# Line style by method: the exact decomposition solid with circles, Veit's sampling dash-dot
# with squares, so both can share one axis.
_METHOD_STYLE = {"exact": dict(marker="o", ls="-"), "sampled": dict(marker="s", ls="-.")}
_OVERLAY_STYLE = dict(ls="--", lw=1.2, marker=None)


def _as_mapping(results) -> Mapping:
    """A single result becomes {its method: result}."""
    return {results.method: results} if hasattr(results, "method") else results


def _label(label: str, res) -> str:
    """label (method), without repeating a method the label already names: a bare sampled
    result is "sampled", not "sampled (sampled)"."""
    return label if re.search(rf"\b{re.escape(res.method)}\b", label) else f"{label} ({res.method})"


def _raw(res, quantity: str) -> np.ndarray:
    """Per-length gradient amount: "magnitude" total, "energy" total^2."""
    if quantity not in ("energy", "magnitude"):
        raise PathensError(f"quantity must be 'energy' or 'magnitude', got {quantity!r}")
    return np.asarray(res.total, float) ** (2 if quantity == "energy" else 1)


def share_label(quantity: str) -> str:
    """The y label of a normalised gradient by length, saying which normalisation: the two
    differ (energy weighs long, weak lengths less) and must never stand side by side
    unlabelled."""
    return ("share of gradient energy, total[k]² / Σ total²" if quantity == "energy" else
            "share of gradient magnitude, total[k] / Σ total")


def _share(res, quantity: str) -> np.ndarray:
    """Per-length share of the gradient: "energy" total^2 / sum total^2, "magnitude"
    total / sum total."""
    v = _raw(res, quantity)
    s = np.nansum(v)
    return v / s if s > 0 else np.full_like(v, np.nan)


def plot_path_length_distribution(n: int, *, ax=None, alpha=None,
                                  variance_ratios: Optional[Sequence[float]] = None,
                                  bn: bool = True, title: Optional[str] = None):
    """The fraction of the 2^n paths of each length, Binomial(n, 1/2) (Veit et al. Fig. 6a),
    with the BatchNorm variance model beside it and, when given, the SkipInit model for branch
    scale `alpha` (a number, or a sequence of them for one curve each) and the measured model
    from per-block branch-to-shortcut variance ratios (paths.variance_ratio_distribution).

    Lines, in order: all paths (solid), BN model (unless bn=False: a network without
    BatchNorm, e.g. SkipInit), then SkipInit, then measured (dashed), each over k = 0..n; each
    legend entry says what it is a share of (paths, or the output variance for the models) and
    gives the distribution's mean length.
    n may also be the per-block branch counts (view.branch_counts) of a view with parallel
    branches: the paths are then the prod(b_i + 1) that paths.path_counts counts.
    """
    binomial = _paths.binomial_distribution(n)  # checks n
    everything = (f"the 2^{len(binomial) - 1} paths: Binomial(n, 1/2)"
                  if isinstance(n, (int, np.integer)) else
                  f"the {_paths.num_paths(n)} paths: prod(1 + b_i t)")  # parallel branches
    n = len(binomial) - 1
    fig, ax = _axes(ax)
    k = np.arange(n + 1)
    curves = [(f"share of {everything}", binomial,
               dict(marker="o", ms=3, ls="-", color="black"))]
    if bn:
        curves.append(("share of variance, BatchNorm model", _paths.bn_variance_distribution(n),
                       dict(_OVERLAY_STYLE)))
    alphas = [] if alpha is None else list(np.atleast_1d(alpha))
    for a in alphas:
        curves.append((f"share of variance, SkipInit model, alpha={float(a):.3g}",
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
    ax.set_ylabel(share_label(quantity) if normalize else
                  "total gradient " + ("energy" if quantity == "energy" else "magnitude"))
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
    for j, ax in enumerate(dict.fromkeys(axes)):  # each distinct Axes once, in order
        ax.set_xlabel("path length k (residual branches passed)")
        if j == 0 or not own:  # our own panels share the y axis: label it once
            ax.set_ylabel(share_label(quantity))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend(ax)
    if title:
        if own and not shared:
            for (label, _), ax in zip(results.items(), axes):
                _title(ax, label)
        axes[0].figure.suptitle(title)
    return axes[0].figure
