"""The Hessian's spectral density from a Hessian result (pathens.hessian), drawn as PyHessian
draws it (Yao et al. 2020, Fig. 1; Ghorbani et al. 2019): the Gaussian-broadened SLQ density
on a logarithmic axis, which shows the few large outliers beside the bulk near zero.

    plot_hessian_density(h)              # the density stored in h
    plot_hessian_density(h, sigma=1e-3)  # broadened again, narrower (x the nodes' spread)

Marked: the top eigenvalue (dashed; Lanczos's if measured, else the largest SLQ node) and the
band |lambda| < eps * lambda_max whose quadrature mass is h.degenerate_mass, with the negative
mass beside it in the legend.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ...errors import PathensError
from .common import axes, comparison_of, figure_of, legend
from .common import title as set_title

__all__ = ["plot_hessian_density"]

FLOOR = 1e-6  # values below FLOOR x the peak are drawn at it (the log axis has no zero)


def plot_hessian_density(result, ax=None, *, sigma: Optional[float] = None,
                         title: Optional[str] = None):
    """The spectral density of `result` (a pathens.hessian.Hessian) on a log axis.

    sigma: None draws the stored density; a number re-broadens the quadrature with Gaussians
    of that width relative to the nodes' spread (Hessian.broadened). Returns the Figure."""
    if not getattr(result, "nodes", None):
        raise PathensError("this Hessian result has no spectral density: run hessian() with "
                           "density_probes >= 1")
    if sigma is None:
        grid, values = result.density["grid"], result.density["values"]
    else:
        grid, values = result.broadened(sigma=sigma)
    grid, values = np.asarray(grid, float), np.asarray(values, float)
    fig, ax = axes(ax)
    floor = FLOOR * values.max()
    probes, steps = len(result.nodes), max(len(t) for t in result.nodes)
    ax.semilogy(grid, np.maximum(values, floor), color="tab:blue", lw=1.2,
                label=f"SLQ density ({probes} probe{'s' * (probes != 1)} x {steps} steps)")
    lam, eps = result.lambda_max, result.config.get("eps")
    if math.isfinite(lam):
        ax.axvline(lam, color="tab:red", ls="--", lw=1.0,
                   label=f"top eigenvalue {lam:.4g}")
        if eps and lam > 0 and math.isfinite(result.degenerate_mass):
            ax.axvspan(-eps * lam, eps * lam, color="tab:gray", alpha=0.2, lw=0,
                       label=f"|\u03bb| < {eps:g} \u03bb_max: mass {result.degenerate_mass:.3f}"
                             f" (negative {result.negative_mass:.3f})")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue \u03bb")
    ax.set_ylabel("density (log scale)")
    if title is None and math.isfinite(result.trace):
        title = f"Hessian spectrum, P = {result.num_params:,}; trace {result.trace:.4g} " \
                f"\u00b1 {result.trace_se:.2g}"
    set_title(ax, title)
    legend(ax)
    return fig


@figure_of("hessian", "hessian")
def hessian_figure(h, name: str):
    """The report's figure: the spectral density, the top eigenvalue marked."""
    return plot_hessian_density(h, title=f"{name}: spectral density of the Hessian "
                                         f"({h.num_params:,} parameters)")


@comparison_of("hessian", "comparison_hessian.png",
               "the Hessians' spectral densities compared")
def hessian_comparison(results: dict):
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2),
                            layout="constrained", squeeze=False)
    for (name, h), ax in zip(results.items(), axs[0]):
        plot_hessian_density(h, ax=ax, title=name)
    fig.suptitle("spectral densities of the Hessian: " + " vs ".join(results))
    return fig
