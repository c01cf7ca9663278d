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
from ..results import Result

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
