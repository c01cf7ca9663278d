"""ShortGPT's Block Influence of each unit beside what deleting that unit alone costs, and the
rank correlation of the two: does the forward-only score pick the units a lesion finds cheap?

    bi = pathens.importance.block_influence(view, data, unit="block")
    each = pathens.lesion.delete_each(view, data, unit="block")
    c = influence_vs_deletion(bi, each)        # c.table(), c.spearman

The cost is the increase of the mean loss (a language model: the next-token loss, whose
increase is the log of the perplexity's ratio, so it ranks the units as the perplexity does),
for classifiers too, rather than the error's increase: the loss is continuous, where the error
of N examples moves in steps of 1/N, so single deletions of a small test set tie and the ranks
tie with them; and the loss is defined for every loss pathens takes (a custom loss has no error
rate). The error increase is kept beside it in the table. ShortGPT removes the layers of lowest
Block Influence, so a good score has a high positive Spearman correlation with the cost.
Units left out of the correlation: those whose influence is undefined (a CNN's downsampling
blocks change the stream's shape) and those not deleted (a plain network's shape-changing
layers) or whose deletion gave non-finite outputs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ..errors import PathensError
from ..data.losses import perplexity
from ..results import Result, fmt
from .importance import block_influence
from .registry import Measurement, register

__all__ = ["InfluenceVsDeletion", "influence_vs_deletion", "MIN_UNITS"]

MIN_UNITS = 3  # a rank correlation of two units is +-1 whatever they are: not a measurement


@dataclass(frozen=True)
class InfluenceVsDeletion(Result):
    """Block Influence and single-deletion cost per unit, and their rank correlation.

    unit:           "block" or "layer" (as the BlockInfluence and the delete_each sweep).
    names, blocks:  per unit, its name and the block indices it spans.
    sublayers:      per unit, its sublayer ("attn", "mlp"; "" for a one-block module, or a
                    whole layer).
    influence:      (units,) Block Influence, 1 - mean cosine (NaN: the unit changes shape).
    deleted_loss:   (units,) mean loss with the unit deleted alone (NaN: not deleted).
    loss_increase:  (units,) deleted_loss - intact_loss: the deletion cost that is ranked.
    error_increase: (units,) error with the unit deleted - intact_error (NaN: no error rate).
    downsampling:   (units,) whether the unit holds a downsampling block.
    intact_loss, intact_error: of the intact network on the same data.
    compared:       the unit indices in the correlation (influence and cost both finite).
    spearman, pvalue: Spearman's rho of influence and loss_increase over `compared`, and
                    scipy's two-sided p-value (NaN with fewer than MIN_UNITS units, or when
                    either is constant over them).
    tokens:         a language model's (the loss per next token).
    config:         what was compared (the cost's definition, the data fingerprint).
    """

    unit: str
    names: tuple
    blocks: tuple
    sublayers: tuple
    influence: np.ndarray
    deleted_loss: np.ndarray
    loss_increase: np.ndarray
    error_increase: np.ndarray
    downsampling: tuple
    intact_loss: float
    intact_error: float
    compared: tuple
    spearman: float
    pvalue: float
    tokens: bool = False
    config: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        return [dict(index=j, name=n, blocks=" ".join(map(str, b)), sublayer=s, influence=bi,
                     deleted_loss=dl, loss_increase=li, error_increase=ei, downsampling=d,
                     compared=j in self.compared)
                for j, (n, b, s, bi, dl, li, ei, d) in enumerate(zip(
                    self.names, self.blocks, self.sublayers, self.influence, self.deleted_loss,
                    self.loss_increase, self.error_increase, self.downsampling))]

    def lowest(self) -> int:
        """The unit of lowest Block Influence among those compared (the one ShortGPT would
        remove first), or -1 when none is."""
        if not self.compared:
            return -1
        return min(self.compared, key=lambda j: (self.influence[j], j))

    def cheapest(self) -> int:
        """The compared unit whose deletion costs least, or -1."""
        if not self.compared:
            return -1
        return min(self.compared, key=lambda j: (self.loss_increase[j], j))

    def __repr__(self) -> str:
        return (f"InfluenceVsDeletion({len(self.names)} {self.unit}s, Spearman {self.spearman:.3g}"
                f" over {len(self.compared)})")

    # ---- the report's text (the Result protocol) -------------------------------------------

    FIGURE = "Block Influence per unit and against the cost of deleting the unit alone"

    def tables(self) -> dict[str, list[dict]]:
        return {"block_influence": self.table()}

    def notes(self) -> list[str]:
        return [NOTE]

    def rho_text(self) -> str:
        """Spearman's rho with the units compared and its p-value, or why there is none."""
        k = len(self.compared)
        if np.isnan(self.spearman):
            least = self.config.get("min_units", 3)
            why = f"fewer than {least}" if k < least else "one of them constant"
            return f"n/a ({k} compared: {why})"
        return f"{self.spearman:+.2f} ({k} {self.unit}s; p {self.pvalue:.2g})"

    def summary_lines(self) -> list[str]:
        text = (f"- Block Influence (ShortGPT) per {self.unit} against the loss increase of "
                f"deleting it alone: Spearman rho {self.rho_text()}")
        lo, cheap = self.lowest(), self.cheapest()
        if lo >= 0:
            text += (f"; lowest influence `{self.names[lo]}` (BI {self.influence[lo]:.3g}; "
                     f"deleting it costs {self.loss_increase[lo]:+.4g}), cheapest deletion "
                     f"`{self.names[cheap]}` ({self.loss_increase[cheap]:+.4g})")
        return [text + "; table and figure below."]

    def markdown(self, *, name: str, slug: str, figure=None, most: int = 24) -> list[str]:
        """Its subsection: every unit up to `most`, else the lowest-influence ones (the CSV has
        all), then the figure."""
        lines = ["", f"### {name}: Block Influence against single-deletion cost", ""]
        order = list(range(len(self.names)))
        if len(order) > most:
            order = sorted(self.compared, key=lambda j: (self.influence[j], j))[:most // 2]
            lines += [f"The {len(order)} {self.unit}s of lowest Block Influence; all "
                      f"{len(self.names)} in `{slug}_block_influence.csv`.", ""]
        ppl = " | perplexity with it deleted" if self.tokens else ""
        lines += [f"| {self.unit} | name | sublayer | Block Influence | loss with it deleted | "
                  f"loss increase{ppl} |", "|---|---|---|---|---|---|" + ("---|" if ppl else "")]
        for j in order:
            cells = [str(j), f"`{self.names[j]}`",
                     self.sublayers[j] or ("whole layer" if self.unit == "layer" else "-"),
                     "n/a (changes shape)" if np.isnan(self.influence[j]) else
                     f"{self.influence[j]:.4g}",
                     fmt(float(self.deleted_loss[j]), 5), _signed(self.loss_increase[j])]
            if ppl:
                cells.append(fmt(perplexity(float(self.deleted_loss[j])), 4))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if figure:
            lines += [f"![{self.FIGURE}]({figure})", ""]
        return lines


def influence_vs_deletion(influence, each) -> InfluenceVsDeletion:
    """Pair a BlockInfluence (pathens.importance.block_influence) with the delete_each
    LesionResult of the same view and unit, unit by unit (by the blocks each spans), and rank
    correlate the influence with the loss increase of deleting the unit alone."""
    if getattr(each, "sweep", None) != "delete_each":
        raise PathensError(f"influence_vs_deletion needs a delete_each result, got "
                           f"{getattr(each, 'sweep', type(each).__name__)}")
    unit = each.config.get("unit", "block")
    if influence.unit != unit:
        raise PathensError(f"the Block Influence is per {influence.unit} but the deletions are "
                           f"per {unit}: compute both with the same unit")
    rows = {tuple(r["deleted"]): r for r in each.rows if r["kind"] == "delete"}
    spans = [tuple(b) for b in influence.blocks]
    if not set(rows) <= set(spans) or max((max(s) for s in spans), default=-1) >= \
            len(each.block_names):
        raise PathensError("the Block Influence and the deletions come from different networks "
                           "(their units differ)")
    subs = each.sublayers
    sublayers = tuple(subs[s[0]] if subs and len(s) == 1 else "" for s in spans)
    nan = math.nan
    deleted = np.array([rows[s]["loss"] if s in rows else nan for s in spans], float)
    error = np.array([rows[s]["error"] if s in rows else nan for s in spans], float)
    bi = np.asarray(influence.influence, float)
    cost = deleted - each.intact_loss
    compared = tuple(j for j in range(len(spans)) if np.isfinite(bi[j]) and np.isfinite(cost[j]))
    rho = p = nan
    if len(compared) >= MIN_UNITS:
        with warnings.catch_warnings():  # constant input: scipy warns and returns NaN
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            res = stats.spearmanr(bi[list(compared)], cost[list(compared)])
        rho, p = float(res.statistic), float(res.pvalue)
    down = set(each.downsampling_blocks)
    return InfluenceVsDeletion(
        unit, tuple(influence.names), tuple(spans), sublayers, bi, deleted, cost,
        error - each.intact_error, tuple(bool(down & set(s)) for s in spans), each.intact_loss,
        each.intact_error, compared, rho, p, bool(each.tokens),
        dict(cost="mean loss with the unit deleted alone minus the intact network's",
             correlation="Spearman", min_units=MIN_UNITS, data=each.config.get("data"),
             influence_positions=influence.num_items))


def _signed(v) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:+.4g}"


# Said once in a report that holds a Block Influence.
NOTE = (
    "**Block Influence against single-deletion cost.** ShortGPT's Block Influence (Men et al. "
    "2024) of a unit is 1 - the mean cosine between its input and its output (per token; per "
    "spatial position of a CNN), forward only; ShortGPT removes the units of lowest influence. "
    "The cost it is compared with is the increase of the mean loss when the unit is deleted "
    "alone (its branch removed, as in the lesions), for classifiers too: the loss is continuous "
    "where the error of N examples moves in steps of 1/N (single deletions tie, and so would "
    "their ranks), it is defined for every loss, and for a language model it ranks the units as "
    "the perplexity does. The error increase is in the CSV beside it. Spearman's rho near +1: "
    "the forward-only score ranks the units as the lesions do. Units that change the stream's "
    "shape (downsampling blocks) have no influence and are left out.")


def _run(view, data, settings: dict, results: dict) -> dict:
    """analyze's Block Influence: per unit, beside the cost of deleting the unit alone."""
    if not settings["influence"]:
        return {}
    settings["log"](f"[{settings['name']}] Block Influence per {settings['unit']}")
    bi = block_influence(view, data, unit=settings["unit"], batch_size=settings["batch_size"])
    return dict(influence=bi, influence_vs_deletion=influence_vs_deletion(
        bi, results["delete_each"]))


register(Measurement("influence", run=_run, yields=("influence", "influence_vs_deletion")))
