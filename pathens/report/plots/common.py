"""What every pathens figure shares: a new or given Axes, the legend, the title, and the styles
that mean the same thing in every figure (the intact network, downsampling blocks, a
transformer's sublayers), and which lesion metric a result is drawn in.

Metrics. A classifier's lesions are drawn as the error (fraction misclassified, with Wilson
intervals), as Veit et al. draw them. A language model's are drawn as the mean next-token
loss, with the perplexity (its exp) on a second axis: the top-1 next-token error of a small
or partly trained model sits near its ceiling and moves little under a deletion, while the
loss (the log of the perplexity) shows every deletion's damage on a scale that adds up and
does not overflow the way the perplexity does when a block that matters is deleted. A custom
loss gives no error rate: its loss is drawn.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np

from ...errors import PathensError

INTACT_STYLE = dict(color="black", ls=":", lw=1.2)
DOWNSAMPLING_COLOR = "tab:red"

# A transformer's sublayers: one colour and marker each, the same in every figure.
SUBLAYER_STYLE = {"attn": dict(color="tab:orange", marker="^"),
                  "mlp": dict(color="tab:green", marker="o")}
_OTHER_STYLES = [dict(color=c, marker=m) for c, m in
                 (("tab:purple", "D"), ("tab:brown", "v"), ("tab:pink", "P"), ("tab:olive", "X"))]
SUBLAYER_LABEL = {"attn": "attention sublayer (attn)", "mlp": "MLP sublayer (mlp)"}
BLOCK_STYLE = dict(color="tab:blue", marker="o")  # a one-block module (a CNN's block)


def axes(ax, figsize=(6, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def title(ax, text: Optional[str]) -> None:
    if text:
        ax.set_title(text, fontsize=10)


def legend(ax, skipped: int = 0, what: str = "condition", note: Optional[str] = None):
    """A legend (when anything is labelled), its title counting the rows left out (or `note`)."""
    text = (f"{skipped} {what}{'s' if skipped != 1 else ''} with NaN error not shown"
            if skipped else None)
    if note:
        text = note if text is None else f"{text}\n{note}"
    handles, _ = ax.get_legend_handles_labels()
    if handles or text:
        ax.legend(fontsize=8, title=text, title_fontsize=8)


def nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def sublayer_styles(names) -> dict:
    """name -> dict(color, marker) for each distinct sublayer name, in order of appearance
    (attn and mlp fixed, others from a short list); "" (a one-block module) is BLOCK_STYLE."""
    out, others = {}, iter(_OTHER_STYLES * 4)
    for name in dict.fromkeys(names):
        out[name] = BLOCK_STYLE if not name else SUBLAYER_STYLE.get(name) or next(others)
    return out


def sublayer_label(name: str) -> str:
    return SUBLAYER_LABEL.get(name, f"{name} sublayer" if name else "block")


# ---- which number of a lesion row is drawn --------------------------------------------------

class Metric:
    """The quantity a lesion figure draws for one result: "error" or "loss" (see the module
    docstring), with its y label and the keys of rows and summary() it reads."""

    def __init__(self, name: str, tokens: bool):
        self.name, self.tokens = name, tokens

    @classmethod
    def of(cls, result, metric: Optional[str] = None) -> "Metric":
        """metric None: "loss" for a language model's sweep (or a custom loss: no error
        rate), else "error"."""
        if metric is None:
            custom = math.isnan(result.intact_error) and math.isfinite(result.intact_loss)
            metric = "loss" if result.tokens or custom else "error"
        return cls(metric, bool(result.tokens))

    @property
    def ylabel(self) -> str:
        if self.name == "error":
            return ("error (fraction misclassified)" if not self.tokens else
                    "next-token error (fraction of tokens mispredicted)")
        return "mean next-token loss (nats)" if self.tokens else "mean loss"

    def value(self, row) -> float:
        return row[self.name]

    def intact(self, result) -> float:
        return result.intact_error if self.name == "error" else result.intact_loss

    def band(self, summary_row) -> tuple:
        """(mean, lo, hi) of a summary() row."""
        k = self.name
        return (summary_row[f"{k}_mean"], summary_row.get(f"{k}_lo", math.nan),
                summary_row.get(f"{k}_hi", math.nan))

    def intact_label(self, result) -> str:
        v = self.intact(result)
        if self.name == "loss" and self.tokens:
            from ...data.losses import perplexity  # here: the plots need no torch until a result does
            return f"intact network (loss {v:.3f}, perplexity {perplexity(v):.3g})"
        return f"intact network ({v:.3f})"

    def perplexity_axis(self, ax) -> None:
        """For a language model's loss: the perplexity exp(loss) on the right-hand axis."""
        if self.name == "loss" and self.tokens:
            right = ax.secondary_yaxis("right", functions=(_exp_array, _log_array))
            right.set_ylabel("perplexity (exp of the loss)")


def _exp_array(v):
    return np.exp(np.clip(v, -700, 700))


def _log_array(v):
    return np.log(np.clip(v, 1e-300, None))


# ---- block names along an axis ----------------------------------------------------------------

_INDEXED = re.compile(r"^(?P<prefix>.*?)(?P<i>\d+)(?:\.(?P<sub>[A-Za-z_][\w]*))?$")


def short_names(names) -> tuple:
    """(labels, how): tick labels for block (or layer) names, and a phrase saying how they were
    shortened (None when they were not).

    Names `P<i>.<sub>` and `P<i>` sharing one prefix P (a transformer's "transformer.h.3.attn",
    "model.layers.12.mlp", or its layers "h.3") become "<i><s>" and "<i>", s the sublayer's
    first letter ("3a", "12m", "3"), or its whole name when two sublayers share a first letter;
    how is then e.g. "3a = h.3.attn, 3m = h.3.mlp". Any other names (a CNN's "layer2.3"), or
    labels that would collide, are returned as they are."""
    names = [str(n) for n in names]
    found = [_INDEXED.match(n) for n in names]
    if not names or not all(found) or len({m["prefix"] for m in found}) != 1:
        return names, None
    subs = list(dict.fromkeys(m["sub"] for m in found if m["sub"]))
    initials = {s: s[0] for s in subs} if len({s[0] for s in subs}) == len(subs) else \
        {s: s for s in subs}
    labels = [m["i"] + initials.get(m["sub"], "") if m["sub"] else m["i"] for m in found]
    if len(set(labels)) != len(labels) or any(m["sub"] is None for m in found) and subs:
        return names, None
    examples = {}  # per sublayer, its last block: an index that is not 0
    for name, label, m in zip(names, labels, found):
        examples[m["sub"]] = (label, name)
    return labels, ", ".join(f"{label} = {name}" for label, name in examples.values())


def name_axis(ax, names, *, what: str, max_names: int = 24, spacing: float = 9.0) -> None:
    """Block (or layer) names along the x axis of a per-block figure, x = index.

    Names a transformer's sublayers or layers share a prefix with (short_names) are shortened
    to "3a" / "3m" / "3" and written one per tick, rotated when crowded, every k-th one when
    more than fit (one per `spacing` points of the axis' width); the axis label says how
    ("h.3.attn = 3a, ..., every 2nd labelled"). Other names (a CNN's) are written under the
    indices when at most `max_names`, else the indices alone, as before.

    what: the axis' noun, e.g. "deleted block" or "block"."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    n = len(names)
    labels, how = short_names(names)
    if how is None:
        if n <= max_names:
            ax.xaxis.set_major_locator(FixedLocator(range(n)))
            ax.xaxis.remove_overlapping_locs = False  # minor ticks sit on the major ones
            ax.set_xticks(range(n), labels, minor=True)
            ax.tick_params(axis="x", which="minor", length=0, pad=20, labelsize=7,
                           labelrotation=90 if n > 8 else 0)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"{what} (index" + (", name)" if n <= max_names else ")"))
        return
    fig = ax.figure
    width = ax.get_position().width * fig.get_figwidth() * 72  # points, before layout
    fits = max(4, int(width // spacing))
    step = max(1, math.ceil(n / fits))
    at = list(range(0, n, step))
    ax.set_xticks(at, [labels[i] for i in at])
    if step > 1:  # a short tick at every block, labelled or not
        ax.set_xticks([i for i in range(n) if i % step], minor=True)
    longest = max(len(labels[i]) for i in at)
    crowded = len(at) * (0.62 * 7 * longest + 4) > width
    ax.tick_params(axis="x", which="major", labelsize=7, labelrotation=90 if crowded else 0)
    every = "" if step == 1 else f"; every {_ordinal(step)} labelled"
    ax.set_xlabel(f"{what} ({how}{every})")


def _ordinal(k: int) -> str:
    return {2: "2nd", 3: "3rd"}.get(k, f"{k}th")


# result name (Analysis.results) -> (file-name suffix, draw(result, model name) -> Figure):
# the figure the report writes for a registered measurement's result
FIGURES: dict = {}


def figure_of(name: str, suffix: str):
    """Register the decorated draw(result, model_name) -> Figure as result `name`'s figure in
    reports, saved as `<model>_<suffix>.png`."""
    def register(draw):
        FIGURES[name] = (suffix, draw)
        return draw
    return register


# result name -> (file name, caption, draw({network name: result}) -> Figure): the figure that
# compares one registered measurement's results across the networks of a report (two or more)
COMPARISONS: dict = {}


def comparison_of(name: str, file: str, caption: str):
    """Register the decorated draw({model name: result}) -> Figure as the figure comparing
    result `name` across the networks of a report, saved as `file`, under `caption`."""
    def register(draw):
        COMPARISONS[name] = (file, caption, draw)
        return draw
    return register


# ---- several networks, several panels (the diagnostics' figures) -------------------------

# one style per network, in order (cycled beyond eight)
NETWORK_STYLES = [{"color": c, "marker": m} for c, m in
                  (("tab:blue", "o"), ("tab:orange", "s"), ("tab:green", "^"),
                   ("tab:purple", "D"), ("tab:brown", "v"), ("tab:pink", "P"),
                   ("tab:olive", "X"), ("tab:cyan", "*"))]


def named_results(results, labels, *, plot: str, kind: str, fields: tuple) -> list:
    """[(label, result)] from a result, a list of them (labels= names them; default "network
    1", ...) or a {label: result} mapping; each checked to have `fields` (else: `plot` takes
    `kind` results)."""
    if isinstance(results, Mapping):
        if labels is not None:
            raise PathensError("labels= goes with a list of results, not a mapping (its keys "
                               "are the labels)")
        pairs = list(results.items())
    else:
        items = list(results) if isinstance(results, (list, tuple)) else [results]
        if labels is None:
            labels = [f"network {j + 1}" for j in range(len(items))] if len(items) > 1 else [None]
        if len(labels) != len(items):
            raise PathensError(f"{len(labels)} labels for {len(items)} results")
        pairs = list(zip(labels, items))
    if not pairs:
        raise PathensError(f"{plot} needs at least one result")
    for _, r in pairs:
        if not all(hasattr(r, f) for f in fields):
            raise PathensError(f"{plot} takes {kind} results, got {type(r).__name__}")
    return pairs


def given_axes(ax, count: int) -> tuple:
    """(figure, axes) of the Axes a caller passed for `count` panels: one each."""
    axs = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axs) != count:
        raise PathensError(f"ax must hold one Axes per panel ({count}), got {len(axs)}")
    return axs[0].figure, axs


def draw_panels(fig, axs, panels, draw, heading, own_figure: bool):
    """draw(ax, panel) for each panel; the heading over the figure (a new one) or on the first
    Axes (the caller's)."""
    for a, panel in zip(axs, panels):
        draw(a, panel)
    if heading:
        if own_figure:
            fig.suptitle(heading, fontsize=11)
        else:
            title(axs[0], heading)
    return fig
