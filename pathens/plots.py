"""Figures from result objects. Each function takes `ax=None`, returns the figure and never
calls plt.show(); results in, matplotlib out, nothing else."""
from __future__ import annotations

from typing import Mapping, Optional

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _axes(ax):
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    return ax.figure, ax


def plot_gradient_by_length(results: Mapping[str, "PathGradients"], *, ax=None,
                            overlays: Optional[Mapping[str, np.ndarray]] = None,
                            quantity: str = "energy"):
    """Share of the gradient carried by paths of each length, one line per result.

    quantity: "energy" plots total[k]^2 / sum total^2 (for the exact method, the share of
    ||g||^2 carried by length k when paths are uncorrelated: what the analytic variance
    models predict); "magnitude" plots total[k] / sum total (Veit et al.'s Fig. 6 shape).
    overlays: label -> analytic distribution over lengths 0..n, drawn dashed.
    """
    fig, ax = _axes(ax)
    for label, res in results.items():
        share = res.total ** 2 if quantity == "energy" else res.total
        ax.plot(res.lengths, share / share.sum(), marker="o", ms=3, label=f"{label} ({res.method})")
    for label, dist in (overlays or {}).items():
        ax.plot(np.arange(len(dist)), dist, ls="--", lw=1, label=label)
    ax.set_xlabel("path length k (residual branches passed)")
    ax.set_ylabel("share of gradient " + ("energy" if quantity == "energy" else "magnitude"))
    ax.legend(fontsize=8)
    return fig


def plot_per_path(results: Mapping[str, "PathGradients"], *, ax=None):
    """Gradient magnitude of a single path vs its length, log scale, with standard errors.

    Only sampled results measure single paths; exact results are skipped (their per_path,
    ||G_k|| / C(n, k), is the norm of the *mean* path gradient, which cancellation between
    paths makes far smaller than a typical path's)."""
    fig, ax = _axes(ax)
    for label, res in results.items():
        if res.method != "sampled":
            continue
        keep = res.per_path > 0
        ax.errorbar(res.lengths[keep], res.per_path[keep], yerr=res.per_path_se[keep],
                    marker="o", ms=3, capsize=2, label=f"{label} (sampled)")
    ax.set_yscale("log")
    ax.set_xlabel("path length k")
    ax.set_ylabel("gradient magnitude of one path")
    ax.legend(fontsize=8)
    return fig
