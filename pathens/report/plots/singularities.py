"""Singularities per layer (pathens.singularities) of several networks side by side.

    plot_singularities({"BN ResNet-56": s_bn, "Fixup ResNet-56": s_fixup})
    plot_singularities(s, metric="eliminated", ax=ax)

Each network is one line over the layer index (the rows of the chosen kind, in the order of
the view: a branch's hidden layers, or the residual stream entering each block), so networks
of one depth compare layer by layer; the number of units of the layers is not drawn.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from .common import comparison_of, figure_of, legend
from .common import title as set_title

__all__ = ["plot_singularities"]

METRICS = {
    "eliminated": "eliminated units (fraction)",
    "overlapping_units": "units in an overlapping pair (fraction)",
    "overlapping": "overlapping pairs (fraction)",
    "max_corr": "largest |corr| between two units",
    "participation_ratio": "participation ratio / units",
    "components": "components for the variance / units",
}
DEFAULT = ("eliminated", "overlapping_units", "participation_ratio", "components")
KINDS = ("hidden", "stream", None)


def _labelled(results) -> list:
    """[(label, Singularities)] from one result, a sequence or a mapping label -> result."""
    if isinstance(results, Mapping):
        return [(str(k), v) for k, v in results.items()]
    if isinstance(results, Sequence) and not isinstance(results, str):
        return [(f"network {i}", r) for i, r in enumerate(results)]
    return [("", results)]


def plot_singularities(results, ax=None, *, metric=None, kind: str | None = "hidden",
                       title: str | None = None):
    """One panel per metric, each network a line over the layer index.

    results: a Singularities, a list of them, or a dict label -> Singularities.
    metric:  a column of Singularities.table() (eliminated, overlapping_units, overlapping,
             max_corr, participation_ratio, components) or a list of them; None: eliminated,
             overlapping_units, participation_ratio and components.
    ax:      None (a new figure), an Axes for one metric, or one Axes per metric.
    kind:    "hidden" (the branches' hidden layers, default), "stream" (the residual stream
             entering each block) or None (every row, in the view's order).
    """
    metrics = DEFAULT if metric is None else (metric,) if isinstance(metric, str) else \
        tuple(metric)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metric must be among {', '.join(METRICS)}, got {unknown or metric!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be 'hidden', 'stream' or None, got {kind!r}")
    networks = _labelled(results)
    if not networks:
        raise ValueError("results holds no Singularities to plot")
    if ax is None:
        fig, axs = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6),
                                layout="constrained", squeeze=False)
        axs = list(axs[0])
    else:
        axs = list(ax) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
        if len(axs) != len(metrics):
            raise ValueError(f"ax holds {len(axs)} Axes for {len(metrics)} metrics")
        fig = axs[0].figure
    for a, m in zip(axs, metrics):
        for label, s in networks:
            rows = s.rows(kind)
            values = np.asarray(getattr(s, m), float)[rows]
            a.plot(np.arange(len(rows)), values, marker="o", ms=3, lw=1.2, label=label or None)
        what = {"hidden": "hidden layer", "stream": "block input (residual stream)",
                None: "layer"}[kind]
        a.set_xlabel(f"{what} index")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_ylabel(METRICS[m])
        if m != "max_corr":
            a.set_ylim(-0.03, 1.03)
        legend(a)
    set_title(axs[0], title)
    return fig


@figure_of("singularities", "singularities")
def singularities_figure(s, name: str):
    """The report's figure: the hidden layers of the branches (top row) and the residual stream
    entering each block (bottom row)."""
    fig, axs = plt.subplots(2, len(DEFAULT), figsize=(4.2 * len(DEFAULT), 6.8),
                            layout="constrained")
    plot_singularities({name: s}, ax=list(axs[0]), kind="hidden",
                       title="hidden layers of the branches")
    plot_singularities({name: s}, ax=list(axs[1]), kind="stream",
                       title="the stream entering each block")
    fig.suptitle(f"{name}: singularities per layer ({s.config.get('num_examples')} examples)")
    return fig


@comparison_of("singularities", "comparison_singularities.png",
               "singularities compared: each network's hidden layers, layer by layer")
def singularities_comparison(results: dict):
    return plot_singularities(results, kind="hidden",
                              title="singularities of the hidden layers: " + " vs ".join(results))
