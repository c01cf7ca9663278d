"""ShortGPT's Block Influence per unit, and against the cost of deleting the unit alone, from an
InfluenceVsDeletion (pathens.influence_cost). Importable as pathens.plots.<name>.

    plot_block_influence(c)          # BI per block (or layer), attention and MLP apart
    plot_influence_vs_deletion(c)    # BI (x) against the loss increase (y), Spearman's rho

A transformer's attention and MLP sublayers each have their own colour, marker and legend entry
(the same as in the lesion figures); units without a Block Influence (a CNN's downsampling
blocks: the stream changes shape) are counted in the legend's title.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import matplotlib.pyplot as plt

from .common import (axes, figure_of, legend, name_axis, sublayer_label, sublayer_styles,
                     title as set_title)

__all__ = ["plot_block_influence", "plot_influence_vs_deletion"]


SPREAD = 30.0  # values spanning more than this factor get a logarithmic axis


def _scale(set_scale, values) -> None:
    """A logarithmic axis when the finite values span more than SPREAD x, symmetric-log (linear
    within the smallest non-zero magnitude) when some are <= 0; else linear. Both scores often
    span orders of magnitude (a transformer's first blocks against its last), where a linear
    axis piles the small ones into one corner."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    mags = np.abs(v[v != 0])
    if len(mags) < 2 or mags.max() <= SPREAD * mags.min():
        return
    if (v > 0).all():
        set_scale("log")
    else:
        set_scale("symlog", linthresh=float(mags.min()))


def _groups(c, keep) -> list:
    """(label, unit indices, style) per sublayer among the units `keep` marks."""
    out = []
    for s, style in sublayer_styles(c.sublayers).items():
        js = [j for j in range(len(c.names)) if keep[j] and c.sublayers[j] == s]
        label = sublayer_label(s) if s else ("layer" if c.unit == "layer" else "block")
        out.append((label, js, style))
    return out


def _undefined_note(c) -> Optional[str]:
    missing = int(np.isnan(np.asarray(c.influence, float)).sum())
    if not missing:
        return None
    return (f"{missing} {c.unit}{'s' if missing != 1 else ''} without a Block Influence "
            f"(the stream changes shape)")


def plot_block_influence(c, *, ax=None, max_names: int = 24, title: Optional[str] = None):
    """Block Influence 1 - cos(input, output) of every unit vs its index, one marker group per
    sublayer; ShortGPT removes the units of lowest influence. The x axis names the units
    (common.name_axis: a transformer's shortened, "3a" = h.3.attn; other names under the
    indices when at most `max_names`). The y axis is logarithmic when the values span
    more than SPREAD x."""
    n = len(c.names)
    fig, ax = axes(ax, figsize=(min(12, max(6, 0.25 * n + 2)), 4))
    bi = np.asarray(c.influence, float)
    for label, js, style in _groups(c, np.isfinite(bi)):
        if js:
            ax.plot(js, bi[js], ls="none", ms=6, label=label, **style)
    ax.set_xlim(-0.7, n - 0.3)
    name_axis(ax, list(c.names), what=c.unit, max_names=max_names)
    _scale(ax.set_yscale, bi)
    if ax.get_yscale() == "linear":
        ax.set_ylim(bottom=0)
    ax.set_ylabel("Block Influence, 1 - cos(input, output)")
    legend(ax, note=_undefined_note(c))
    set_title(ax, title)
    return fig


def plot_influence_vs_deletion(c, *, ax=None, annotate: int = 24, title: Optional[str] = None):
    """Each compared unit at x = its Block Influence, y = the increase of the mean loss when it
    is deleted alone (c.loss_increase), one marker group per sublayer, each point labelled with
    its index when there are at most `annotate` units; Spearman's rho over the compared units
    in the legend's title; y = 0 (a free deletion) dotted. Each axis is logarithmic when its
    values span more than SPREAD x (symmetric-log when some are <= 0): a rank correlation does
    not depend on the scale, and the small values stay apart."""
    fig, ax = axes(ax)
    bi, cost = np.asarray(c.influence, float), np.asarray(c.loss_increase, float)
    keep = np.zeros(len(c.names), bool)
    keep[list(c.compared)] = True
    for label, js, style in _groups(c, keep):
        if js:
            ax.plot(bi[js], cost[js], ls="none", ms=6, label=label, **style)
    if len(c.names) <= annotate:
        for j in c.compared:
            ax.annotate(str(j), (bi[j], cost[j]), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
    _scale(ax.set_xscale, bi[list(c.compared)])
    _scale(ax.set_yscale, cost[list(c.compared)])
    if ax.get_yscale() != "log":
        ax.axhline(0.0, color="black", ls=":", lw=1.0)
    ax.set_xlabel("Block Influence, 1 - cos(input, output)")
    ax.set_ylabel("loss increase when deleted alone" + (" (nats per token)" if c.tokens else ""))
    k = len(c.compared)
    rho = ("undefined" if np.isnan(c.spearman) else f"{c.spearman:.2f}")
    note = f"Spearman rho {rho} over {k} {c.unit}{'s' if k != 1 else ''}"
    extra = _undefined_note(c)
    legend(ax, note=note if extra is None else f"{note}\n{extra}")
    set_title(ax, title)
    return fig


@figure_of("influence_vs_deletion", "influence")
def influence_figure(c, name: str):
    """The report's figure: Block Influence per unit, and against the cost of deleting it."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    plot_block_influence(c, ax=left, title=f"Block Influence per {c.unit}: ShortGPT "
                                           f"removes the lowest")
    plot_influence_vs_deletion(c, ax=right, title=f"Block Influence vs the loss increase "
                                                  f"of deleting the {c.unit} alone")
    fig.suptitle(f"{name}: Block Influence (1 - cos of a {c.unit}'s input and output) "
                 f"against single-deletion cost")
    return fig
