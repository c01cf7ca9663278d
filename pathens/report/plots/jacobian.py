"""Block Jacobian spectra (pathens.block_jacobian_spectra) of several networks on one figure:
how far each block, and its branch alone, is from an isometry (Zaeemzadeh et al. 2020).

    plot_jacobian_spectra({"BN": js_bn, "plain": js_plain})
    plot_jacobian_spectra(js, panels=("block",), ax=ax)

Per network, against the block index: the largest singular value over the measured examples
(solid line) and the smallest (dashed), and a band between the k-th largest and the k-th
smallest; y = 1 (an isometry) dotted; transitions (downsampling blocks) marked by vertical
lines. Panels: "block" (the whole block's Jacobian) and "branch" (the branch alone; a plain
network has none). The y axis is logarithmic, from FLOOR: smaller values (numerical zeros,
e.g. sigma_min under a ReLU after the sum, or a SkipInit branch at alpha = 0) are drawn at
FLOOR, and counted in the legend's title.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from ...errors import PathensError
from .common import (DOWNSAMPLING_COLOR, NETWORK_STYLES, comparison_of, draw_panels, figure_of,
                     given_axes, named_results)

__all__ = ["plot_jacobian_spectra"]

FLOOR = 1e-3  # singular values below this are drawn at it (1 is the isometry's)

PANELS = {"block": ("", "singular values of the block's Jacobian"),
          "branch": ("branch_", "singular values of the branch a_i R_i alone")}


def plot_jacobian_spectra(results, *, labels: Sequence[str] | None = None, ax=None,
                          panels: Sequence[str] | None = None, title: str | None = None):
    """One pair of curves (sigma_max solid, sigma_min dashed) per network in each panel.

    results: a JacobianSpectra, a list of them (labels= names them) or a {label: result}.
    panels:  some of "block", "branch" (default: both, or "block" alone when no network has a
             branch).
    ax:      None (a new figure, panels side by side) or one Axes per panel.
    Returns the Figure.
    """
    named = named_results(results, labels, plot="plot_jacobian_spectra", kind="JacobianSpectra",
                          fields=("top", "branch_top"))
    if panels is None:
        panels = ("block", "branch") if any(any(r.residual) for _, r in named) else ("block",)
    panels = list(panels)
    if not panels or any(p not in PANELS for p in panels):
        raise PathensError(f"panels must be some of {', '.join(PANELS)}, got {panels!r}")
    if ax is None:
        fig, grid = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4.0),
                                 squeeze=False, layout="constrained")
        axs = list(grid[0])
    else:
        fig, axs = given_axes(ax, len(panels))
    return draw_panels(fig, axs, panels, lambda a, p: _panel(a, p, named), title, ax is None)


def _panel(ax, panel: str, named: list) -> None:
    prefix, ylabel = PANELS[panel]
    transitions, missing, floored = set(), [], 0
    for j, (label, r) in enumerate(named):
        top, bottom = getattr(r, prefix + "top"), getattr(r, prefix + "bottom")
        x = np.asarray(r.blocks)
        hi, lo = _reduce(np.nanmax, top[:, :, 0]), _reduce(np.nanmin, bottom[:, :, 0])
        kth_hi, kth_lo = _reduce(np.nanmax, top[:, :, -1]), _reduce(np.nanmin, bottom[:, :, -1])
        ok = np.isfinite(hi) & np.isfinite(lo)
        if not ok.any():
            missing.append(label or "the network")
            continue
        floored += int((hi[ok] < FLOOR).sum() + (lo[ok] < FLOOR).sum())
        hi, lo, kth_hi, kth_lo = (np.maximum(v, FLOOR) for v in (hi, lo, kth_hi, kth_lo))
        style = NETWORK_STYLES[j % len(NETWORK_STYLES)]
        name = (label + ": ") if label else ""
        ax.plot(x[ok], hi[ok], ms=3.5, lw=1.2, label=name + "sigma_max", **style)
        ax.plot(x[ok], lo[ok], ms=3.5, lw=1.2, ls="--", mfc="none", label=name + "sigma_min",
                **style)
        band = ok & np.isfinite(kth_hi) & np.isfinite(kth_lo)
        ax.fill_between(x[band], kth_lo[band], kth_hi[band], color=style["color"], alpha=0.08,
                        lw=0)
        transitions.update(b for b, d in zip(r.blocks, r.downsample) if d)
    ax.axhline(1.0, color="black", ls=":", lw=1.0, label="isometry (1)")
    for k, i in enumerate(sorted(transitions)):
        ax.axvline(i, color=DOWNSAMPLING_COLOR, ls=":", lw=1.0,
                   label="downsampling block" if k == 0 else None)
    ax.set_yscale("log")
    ax.set_ylim(bottom=FLOOR / 2)
    ax.set_xlabel("block index")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    notes = ([f"{floored} value{'s' * (floored != 1)} < {FLOOR:g} drawn at {FLOOR:g}"]
             if floored else []) + (["no branch: " + ", ".join(missing)] if missing else [])
    ax.legend(fontsize=7, title="\n".join(notes) or None, title_fontsize=7)


def _reduce(fn, a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[0], np.nan)
    for j, row in enumerate(a):
        if np.isfinite(row).any():
            out[j] = fn(row)
    return out


@figure_of("jacobian_spectra", "jacobians")
def jacobian_figure(js, name: str):
    """The report's figure: the block's and the branch's extreme singular values per block."""
    e = js.config.get("examples")
    return plot_jacobian_spectra({name: js}, title=f"{name}: block Jacobian spectra (largest "
                                                   f"and smallest of k = {js.config.get('k')}, "
                                                   f"{e} examples)")


@comparison_of("jacobian_spectra", "comparison_jacobians.png",
               "block Jacobian spectra compared: sigma_max and sigma_min per block")
def jacobian_comparison(results: dict):
    return plot_jacobian_spectra(results, title="block Jacobian spectra: " +
                                 " vs ".join(results))
