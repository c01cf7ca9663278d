"""Signal propagation plots (Brock, De & Smith 2021) and gradient norms by block, from
SignalPropagation results (pathens.signal), several networks on one figure:

    plot_signal_propagation({"BN": sp_bn, "SkipInit": sp_si})    # 4 panels
    plot_signal_propagation(sp, panels=("variance",), ax=ax)      # one panel on a given Axes

Panels: "mean_sq" (average channel squared mean of the stream), "variance" (average channel
variance of the stream), "branch" (the residual branch output's average channel variance,
a_i * R_i: what is added to the shortcut), "grad" (||dL/dx_i||). The stream and gradient are
drawn at states 0..n (the input of each block, then the last block's output), the branch at
blocks 0..n-1. Downsampling blocks (transitions) are marked by vertical dotted lines. A
y axis is logarithmic when its values span more than SPREAD x (symmetric-log when some are
<= 0, e.g. a SkipInit branch at alpha = 0). Results in, figures out: no torch.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from ...errors import PathensError
from .common import (DOWNSAMPLING_COLOR, NETWORK_STYLES, comparison_of, draw_panels, figure_of,
                     given_axes, named_results)

__all__ = ["PANELS", "plot_signal_propagation"]

SPREAD = 30.0  # values spanning more than this factor get a logarithmic axis

# panel -> (field of the result, y label, drawn at states 0..n (True) or blocks 0..n-1)
PANELS = {
    "mean_sq": ("channel_mean_sq", "avg. channel squared mean", True),
    "variance": ("channel_variance", "avg. channel variance", True),
    "branch": ("branch_variance", "residual branch: avg. channel variance", False),
    "grad": ("grad_norm", "gradient norm ||dL/dx_i||", True),
}


def plot_signal_propagation(results, *, labels: Sequence[str] | None = None, ax=None,
                            panels: Sequence[str] = tuple(PANELS), title: str | None = None):
    """One curve per network in each panel, against the block index.

    results: a SignalPropagation, a list of them (labels= names them; default "network 1",
        ...), or a {label: result} mapping.
    ax: None (a new figure, one Axes per panel side by side in rows of two), or as many Axes
        as panels (a single Axes for one panel).
    panels: which of PANELS to draw, in order.
    Returns the Figure.
    """
    named = named_results(results, labels, plot="plot_signal_propagation",
                          kind="SignalPropagation", fields=("channel_variance", "grad_norm"))
    panels = list(panels)
    unknown = [p for p in panels if p not in PANELS]
    if unknown or not panels:
        raise PathensError(f"panels must be some of {', '.join(PANELS)}, got {panels!r}")
    if ax is None:
        cols = min(2, len(panels))
        rows = -(-len(panels) // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False,
                                 layout="constrained")
        axs = list(grid.ravel())
        for extra in axs[len(panels):]:
            extra.remove()
        axs = axs[:len(panels)]
    else:
        fig, axs = given_axes(ax, len(panels))
    return draw_panels(fig, axs, panels, lambda a, p: _panel(a, p, named), title, ax is None)


def _panel(ax, panel: str, named: list) -> None:
    key, ylabel, states = PANELS[panel]
    values, transitions = [], set()
    for j, (label, r) in enumerate(named):
        y = np.asarray(getattr(r, key), float)
        x = np.arange(len(y))
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], ms=3.5, lw=1.2, label=label, **NETWORK_STYLES[j % len(NETWORK_STYLES)])
        values.append(y[ok])
        transitions.update(i for i, d in enumerate(r.downsample) if d)
    for k, i in enumerate(sorted(transitions)):
        ax.axvline(i, color=DOWNSAMPLING_COLOR, ls=":", lw=1.0,
                   label="downsampling block" if k == 0 else None)
    _scale(ax, np.concatenate(values) if values else np.zeros(0))
    ax.set_xlabel("block index" + (" (n: the last block's output)" if states else ""))
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7)


def _scale(ax, v: np.ndarray) -> None:
    """Logarithmic when the finite values span more than SPREAD x (symmetric-log when some are
    <= 0), else linear."""
    mags = np.abs(v[v != 0])
    if len(mags) < 2 or mags.max() <= SPREAD * mags.min():
        return
    if (v > 0).all():
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=float(mags.min()))


@figure_of("signal_propagation", "signal")
def signal_figure(sp, name: str):
    """The report's figure: the four signal propagation panels of one network."""
    unit = "block" if any(sp.residual) else "layer (plain network)"
    return plot_signal_propagation({name: sp}, title=f"{name}: signal propagation per {unit} "
                                                     f"({sp.num_examples} examples)")


@comparison_of("signal_propagation", "comparison_signal.png",
               "signal propagation compared: every network's curves on one figure")
def signal_comparison(results: dict):
    return plot_signal_propagation(results, title="signal propagation: " +
                                   " vs ".join(results))
