"""Lesion and reordering experiments (Veit et al. 2016): how a residual network's test error
changes when blocks are deleted or moved.

    r = pathens.lesion.delete_each(view, (x, y))                # every block deleted alone
    r = pathens.lesion.delete_random(view, loader, ks=range(1, 10), trials=20, out="del.csv")
    r = pathens.lesion.reorder(view, loader, swaps=[1, 2, 3], trials=20)
    r.table(), r.summary(), r.to_csv("rows.csv")

Deleting block i keeps post_i(shortcut_i(x)) and drops its branch. Reordering swaps random
disjoint pairs of blocks of the same input and output shape. BatchNorm runs on the running
statistics the model was trained with (eval mode) unless `recalibrate=` gives a calibration set:
then, for every condition including the intact network, a deep copy of the model has its
BatchNorm statistics re-estimated on that set under the lesion (an extension; the paper did not).

Each condition is evaluated on the whole dataset: error = misclassified / n with its 95% Wilson
interval, loss = mean cross-entropy. A condition whose logits are NaN or infinite on some
examples is recorded with error and loss NaN and the count in `nonfinite`; the sweep goes on.
The engine (sharing the intact network's activations, resumable output files) is in
lesion_sweep.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from .. import checks
from ..errors import PathensError
from ..data.fingerprint import fingerprint_model, fingerprint_tensors
from ..data.batches import Data, calibration_batches
from .lesion_engine import Condition, run_conditions, wilson
from ..data.losses import perplexity
from ..results import Result, csv_text
from ..data.inputs import batch_len
from ..io import write_text
from ..view.residual_view import UNITS, Unit, wrap

__all__ = ["LesionResult", "evaluate", "delete_each", "delete_random", "reorder", "wilson"]


@dataclass(frozen=True)
class LesionResult(Result):
    """A lesion or reordering sweep: one row per condition, the intact network first.

    rows: dicts with
        condition      index of the condition in the sweep (0: the intact network)
        kind           "intact", "delete" or "reorder"
        k, trial       blocks (or layers, unit="layer") deleted, or swaps made, and the trial
                       number for that k
        deleted        indices of the blocks whose branch was removed ([block, branch] for
                       one of a block's parallel branches, evaluate(deleted=...) only)
        order          the block order (a permutation) for reorderings, else None
        downsampling   whether a deleted block is a downsampling block
        tau            Kendall tau of `order` against the original order (reorder only)
        error          misclassified fraction, with error_lo, error_hi its 95% Wilson interval
                       (a language model: the top-1 next-token error over the tokens; tokens of
                       one sequence are not independent, so read that interval as a lower bound
                       on the uncertainty)
        loss           mean loss (cross-entropy per example, or per next token)
        errors, n      misclassified items and items evaluated (examples, or tokens); errors
                       is -1 for a custom loss function (no error rate)
        nonfinite      items with NaN/inf logits (then error and loss are NaN)
        seed           the sweep's seed
        top5_error, top5_errors  (classifiers of at least 5 classes) the fraction and count
                       of examples whose label is not among the 5 largest logits, from the
                       same pass (timm's validate.py top-5); absent for language models and
                       for sweep files written before they were recorded
        perplexity     (table() of a language model's sweep) exp(loss)
    sweep: "evaluate", "delete_each", "delete_random" or "reorder".
    config: the sweep's configuration (as written in an output file's first line).
    sublayers: per block, its sublayer's name within its module ("attn", "mlp": Block.sublayer),
        for views whose modules hold several blocks (transformers); () when every module holds
        one block (CNNs), and for results made before it was recorded.
    layers: the view's layers, view.units("layer"): per module its name and the block indices
        it holds (a CNN's: one per block); () for results made before they were recorded.
        Left out of the JSON, where block_names and sublayers give them. units() reads them.
    """

    sweep: str
    rows: list
    intact_error: float
    intact_loss: float
    num_examples: int
    block_names: tuple
    downsampling_blocks: tuple
    config: dict = field(default_factory=dict)
    sublayers: tuple = ()
    layers: tuple = ()

    _heavy = ("layers",)

    def units(self, unit: Optional[str] = None) -> list[Unit]:
        """The units of the swept view (unit=None: the sweep's own): each block, or each layer
        as recorded in `layers`. A result made before layers were recorded has them rebuilt
        from its block names and sublayers (a block named "<module>.<sublayer>" sits in
        <module>)."""
        unit = checks.choice("unit", self.config.get("unit", "block") if unit is None else unit,
                             UNITS)
        if unit == "block":
            return [Unit(name, (i,)) for i, name in enumerate(self.block_names)]
        if self.layers:
            return list(self.layers)
        subs = self.sublayers or ("",) * len(self.block_names)
        groups: dict = {}
        for i, (name, sub) in enumerate(zip(self.block_names, subs)):
            module = name[:-len(sub) - 1] if sub and name.endswith("." + sub) else name
            groups.setdefault(module, []).append(i)
        return [Unit(module, tuple(blocks)) for module, blocks in groups.items()]

    @property
    def tokens(self) -> bool:
        """True for a language model's sweep: items are tokens, perplexity applies."""
        return self.config.get("items") == "tokens"

    def table(self) -> list[dict]:
        if not self.tokens:
            return [dict(r) for r in self.rows]
        return [dict(r, perplexity=perplexity(r["loss"])) for r in self.rows]

    @property
    def errors(self) -> np.ndarray:
        """Error of every condition but the intact one, in row order."""
        return np.array([r["error"] for r in self.rows if r["kind"] != "intact"], float)

    def summary(self, level: float = 0.95) -> list[dict]:
        """Per k (deleted blocks or swaps): trials, mean error and a `level` band for it across
        trials (mean +- t * sd / sqrt(trials); with a single trial, that trial's Wilson
        interval), mean loss, mean Kendall tau, and trials with non-finite outputs (left out of
        the means). A language model's sweep also gives the mean perplexity and the loss's band
        (loss_lo, loss_hi: the same t band over trials; NaN for a single trial, the loss having
        no interval of its own)."""
        out = []
        for k in sorted({r["k"] for r in self.rows if r["kind"] != "intact"}):
            rs = [r for r in self.rows if r["kind"] != "intact" and r["k"] == k]
            ok = [r for r in rs if not r["nonfinite"]]
            mean, lo, hi, sd = _band([r["error"] for r in ok], level, top=1.0)
            if len(ok) == 1:
                lo, hi = ok[0]["error_lo"], ok[0]["error_hi"]
            taus = [r["tau"] for r in ok if not math.isnan(r["tau"])]
            row = dict(k=k, trials=len(rs), error_mean=mean, error_lo=float(lo),
                       error_hi=float(hi), error_sd=sd,
                       **({"top5_error_mean": float(np.mean([r["top5_error"] for r in ok]))
                           if ok else math.nan} if rs and "top5_error" in rs[0] else {}),
                       loss_mean=float(np.mean([r["loss"] for r in ok])) if ok else math.nan,
                       tau_mean=float(np.mean(taus)) if taus else math.nan)
            if self.tokens:
                _, loss_lo, loss_hi, _ = _band([r["loss"] for r in ok], level, top=math.inf)
                row.update(perplexity_mean=float(np.mean([perplexity(r["loss"]) for r in ok]))
                           if ok else math.nan, loss_lo=loss_lo, loss_hi=loss_hi)
            out.append(dict(row, nonfinite_trials=len(rs) - len(ok),
                            intact_error=self.intact_error))
        return out

    def summary_csv(self, path=None, level: float = 0.95) -> str:
        """summary() as CSV text (written to `path` if given)."""
        text = csv_text(self.summary(level))
        if path is not None:
            write_text(path, text)  # atomic; a full disk names the file
        return text

    def tables(self) -> dict[str, list[dict]]:
        """The rows, and for random deletions and reorderings the summary per k."""
        if self.sweep in ("delete_random", "reorder"):
            return {"": self.table(), f"{self.sweep}_summary": self.summary()}
        return {"": self.table()}

    def __repr__(self) -> str:
        items = "tokens" if self.tokens else "examples"
        return (f"LesionResult({self.sweep}, {len(self.rows) - 1} conditions on "
                f"{self.num_examples} {items}, intact error {self.intact_error:.4f})")


# ---- the generic evaluation -----------------------------------------------------------------

def evaluate(view, data, *, deleted: Sequence = (), order: Optional[Sequence[int]] = None,
             loss=None, batch_size: Optional[int] = 256, progress: bool = False) -> dict:
    """Error and loss of the view on `data` with the branches of `deleted` removed (indices,
    block names, or module names for all the blocks of a module; one of a block's parallel
    branches by its name, "gpt_neox.layers.3.attn", or a (block, branch) pair, as
    ResidualView.run takes them) and/or the blocks run in `order`. Returns one row (see
    LesionResult): error, error_lo, error_hi, loss, errors, n, nonfinite, ... (`deleted` lists
    a branch deleted alone as [block, branch index]).

    data: an (inputs, targets) pair (cut into batches of batch_size) or a DataLoader (or any
    re-iterable) of (inputs, targets) batches; moved to the model's device and dtype.
    loss: "classification", "next_token" (a language model: n counts tokens; targets the inputs),
    "next_token_aligned" (targets already shifted, nanoGPT's (x, y)) or a function; None: the
    view's own.
    """
    view = wrap(view)
    data = Data(view, data, batch_size, loss)  # checks data first: the commonest mistake
    deleted = view.deletions(deleted, "deleted")  # block indices, (block, branch) pairs
    order = None if order is None else tuple(view.check_order(order))
    kind = "reorder" if order is not None and list(order) != sorted(order) else (
        "delete" if deleted else "intact")
    tau = _tau(order) if order is not None else math.nan
    cond = Condition(kind, len(deleted), 0, deleted, order, tau)
    return run_conditions(view, data, [cond], config={}, seed=None, progress=progress,
                          desc="evaluate")[0]


def units(view, unit: str = "block") -> list[tuple]:
    """What a lesion deletes or moves as one: each block ("block"; a transformer's attention
    and MLP sublayers apart), or each module with all the blocks it holds ("layer": a whole
    transformer layer). A list of tuples of block indices (view.units(unit), names aside)."""
    return [u.blocks for u in wrap(view).units(unit)]


def _sweep(view, data, sweep: str, conds: list, config: dict, *, seed, out, progress,
           recalibrate, batch_size, group_size, loss=None, unit="block",
           cache: bool = True) -> LesionResult:
    d = Data(view, data, batch_size, loss)
    cal = calibration_batches(view, recalibrate, batch_size) if recalibrate is not None else None
    # loss and unit are recorded only where they are not the defaults, so that sweep files
    # written before they existed still resume
    extra = dict(loss=d.loss.name, items=d.loss.unit) if d.loss.name != "classification" else {}
    config = dict(sweep=sweep, **config, num_blocks=view.num_blocks,
                  num_examples=d.num_examples, data=d.fingerprint(),
                  model=fingerprint_model(view.model),
                  dtype=str(view.param.dtype),
                  recalibrate=None if cal is None else sum(batch_len(x) for x in cal),
                  recalibrate_data=None if cal is None else fingerprint_tensors(cal),
                  batchnorm="recalibrated per condition" if cal is not None else
                  "eval (running statistics)", **extra,
                  **(dict(unit=unit) if unit != "block" else {}))
    rows = run_conditions(view, d, [Condition("intact", 0, 0)] + conds, config=config, seed=seed,
                          out=out, group_size=group_size, recalibrate=cal, progress=progress,
                          cache=cache, desc=sweep)
    intact = rows[0]
    return LesionResult(sweep, rows, intact["error"], intact["loss"], intact["n"],
                        tuple(b.name for b in view.blocks),
                        tuple(b.index for b in view.blocks if b.downsample), config,
                        sublayers=sublayers(view), layers=tuple(view.units("layer")))


def sublayers(view) -> tuple:
    """Each block's sublayer name (LesionResult.sublayers): () when no module holds several."""
    names = tuple(b.sublayer for b in wrap(view).blocks)
    return names if any(names) else ()


_COMMON = """
    data:        an (inputs, targets) pair or a DataLoader of (inputs, targets) batches.
    unit:        "block" (default: each residual block; a transformer's attention and MLP
                 sublayers apart) or "layer" (each module with all its blocks: whole
                 transformer layers); k counts units.
    loss:        "classification", "next_token" (a language model: errors and n count
                 tokens, loss is the mean next-token loss, perplexity its exp),
                 "next_token_aligned" (the same with targets already shifted: nanoGPT's
                 (x, y)), a function fn(logits, targets) -> mean loss, or None: the view's own.
    out:         a .csv or .jsonl file: each finished condition is appended as it completes;
                 re-running the same sweep with the same out resumes (conditions on disk are
                 not recomputed); a file from a different sweep (settings, model, or data:
                 size and a fingerprint of the contents) is refused.
    group_size:  with out, conditions evaluated per pass over the data before being written
                 (default 16; None without out: all in one pass).
    recalibrate: calibration inputs (a tensor, pair or loader): re-estimate BatchNorm
                 statistics under each condition on a copy of the model (default: off).
    batch_size:  examples per batch when data is a pair; progress: a tqdm bar (conditions).
"""


def _deletable(view, unit: str) -> list[tuple]:
    return [u for u in units(view, unit) if all(view.blocks[i].deletable for i in u)]


def delete_each(view, data, *, unit: str = "block", loss=None, out=None, progress: bool = True,
                recalibrate=None, batch_size: Optional[int] = 256,
                group_size: Optional[int] = None, cache: bool = True) -> LesionResult:
    """Every block (or layer) deleted alone (Veit et al., Fig. 3): rows k=1, trial=0,
    deleted=[i] (a layer: all its blocks), with downsampling marking the downsampling blocks
    (in a plain network, the layers that change shape cannot be deleted and are left out).
    cache=False re-runs every condition from the input instead of sharing the intact
    activations (the naive loop; for benchmarks)."""
    view = wrap(view)
    conds = [Condition("delete", 1, 0, u) for u in _deletable(view, unit)]
    return _sweep(view, data, "delete_each", conds, {}, seed=None, out=out, progress=progress,
                  recalibrate=recalibrate, batch_size=batch_size, group_size=group_size,
                  loss=loss, unit=unit, cache=cache)


def delete_random(view, data, *, ks: Optional[Sequence[int]] = None, trials: int = 10,
                  seed: int = 0, exclude_downsampling: bool = True, unit: str = "block",
                  loss=None, out=None, progress: bool = True, recalibrate=None,
                  batch_size: Optional[int] = 256,
                  group_size: Optional[int] = None) -> LesionResult:
    """k blocks (or layers) drawn at random (without replacement) and deleted together,
    `trials` draws per k (Veit et al., Fig. 5a). ks default: 1 .. the number of deletable
    units. Downsampling blocks are never drawn unless exclude_downsampling=False. Trial t of k
    is drawn from numpy's generator seeded with (seed, k, t): the same seed gives the same
    conditions."""
    view = wrap(view)
    pool = random_units(view, exclude_downsampling, unit)
    ks = list(range(1, len(pool) + 1)) if ks is None else check_counts(ks, "ks")
    trials = checks.positive("trials", trials)
    seed = checks.seed(seed)
    for k in ks:
        if k > len(pool):
            raise PathensError(
                f"k={k} is more than the {len(pool)} {unit}s that can be deleted"
                + (" (downsampling blocks excluded; pass exclude_downsampling=False to include "
                   "them)" if exclude_downsampling else ""))
    conds = []
    for k in ks:
        for t in range(trials):
            rng = np.random.default_rng([seed, k, t])
            picked = rng.choice(len(pool), k, replace=False)
            conds.append(Condition("delete", k, t, tuple(sorted(i for j in picked
                                                                for i in pool[int(j)]))))
    config = dict(ks=ks, trials=trials, seed=seed, exclude_downsampling=exclude_downsampling)
    return _sweep(view, data, "delete_random", conds, config, seed=seed, out=out,
                  progress=progress, recalibrate=recalibrate, batch_size=batch_size,
                  group_size=group_size, loss=loss, unit=unit)


def reorder(view, data, *, swaps: Optional[Sequence[int]] = None, trials: int = 10,
            seed: int = 0, unit: str = "block", loss=None, out=None, progress: bool = True,
            recalibrate=None, batch_size: Optional[int] = 256,
            group_size: Optional[int] = None) -> LesionResult:
    """k random swaps of disjoint pairs of blocks (or layers) with the same input and output
    shapes (Veit et al., Fig. 5b), `trials` per k; each row carries the Kendall tau of the new
    block order against the original. swaps default: 1 .. the most disjoint swaps possible.
    Trial t of k is drawn from numpy's generator seeded with (seed, k, t)."""
    view = wrap(view)
    groups = shape_groups(view, unit)
    most = most_swaps(view, unit)
    if most == 0:
        raise PathensError(f"no two {unit}s of this network have the same shapes: there is "
                           f"nothing to reorder")
    swaps = list(range(1, most + 1)) if swaps is None else check_counts(swaps, "swaps")
    trials = checks.positive("trials", trials)
    seed = checks.seed(seed)
    for k in swaps:
        if k > most:
            raise PathensError(f"{k} swaps are more than possible: the {unit}s of equal shape "
                               f"allow at most {most} disjoint swaps")
    pool = units(view, unit)
    conds = []
    for k in swaps:
        for t in range(trials):
            moved = _random_swaps(len(pool), groups, k, np.random.default_rng([seed, k, t]))
            order = tuple(i for u in moved for i in pool[u])  # units -> their blocks, in order
            conds.append(Condition("reorder", k, t, (), order, _tau(order)))
    config = dict(swaps=swaps, trials=trials, seed=seed)
    return _sweep(view, data, "reorder", conds, config, seed=seed, out=out, progress=progress,
                  recalibrate=recalibrate, batch_size=batch_size, group_size=group_size,
                  loss=loss, unit=unit)


for _f in (delete_each, delete_random, reorder):
    _f.__doc__ += _COMMON


def random_units(view, exclude_downsampling: bool = True, unit: str = "block") -> list[tuple]:
    """The units (tuples of block indices) delete_random draws from: the deletable ones,
    without those holding a downsampling block unless exclude_downsampling=False."""
    view = wrap(view)
    return [u for u in _deletable(view, unit)
            if not (exclude_downsampling and any(view.blocks[i].downsample for i in u))]


def random_pool(view, exclude_downsampling: bool = True) -> list:
    """Indices of the blocks delete_random draws from: the deletable ones, without the
    downsampling ones unless exclude_downsampling=False."""
    return [u[0] for u in random_units(view, exclude_downsampling)]


def shape_groups(view, unit: str = "block") -> list:
    """Unit indices (into units(view, unit); for blocks, block indices) grouped by their
    blocks' input and output shapes: the units reorder may swap with one another."""
    view = wrap(view)
    groups = {}
    for j, u in enumerate(units(view, unit)):
        key = tuple((view.blocks[i].in_shape, view.blocks[i].out_shape) for i in u)
        groups.setdefault(key, []).append(j)
    return list(groups.values())


def most_swaps(view, unit: str = "block") -> int:
    """The most disjoint swaps of same-shape units a reordering can make."""
    return sum(len(g) // 2 for g in shape_groups(view, unit))


def _random_swaps(n: int, groups: list, k: int, rng) -> tuple:
    """The identity order with k disjoint pairs of same-shape blocks swapped: each pair drawn
    uniformly among the pairs of still-unmoved blocks (never stuck: a swap uses two blocks of
    one group, lowering the number of possible swaps by exactly one)."""
    order, free = list(range(n)), [list(g) for g in groups]
    for _ in range(k):
        pairs = [(gi, a, b) for gi, g in enumerate(free) for a in range(len(g))
                 for b in range(a + 1, len(g))]
        gi, a, b = pairs[rng.integers(len(pairs))]
        i, j = free[gi][a], free[gi][b]
        order[i], order[j] = j, i
        free[gi] = [v for v in free[gi] if v not in (i, j)]
    return tuple(order)


def _band(values, level: float, top: float) -> tuple:
    """(mean, lo, hi, sd) of values across trials: the t band mean +- t sd / sqrt(trials),
    clipped to [0, top]; lo and hi NaN for fewer than two values (mean NaN for none)."""
    e = np.array(values, float)
    mean = float(e.mean()) if len(e) else math.nan
    if len(e) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(e.std(ddof=1))
    half = stats.t.ppf(0.5 + level / 2, len(e) - 1) * sd / math.sqrt(len(e))
    return mean, float(max(0.0, mean - half)), float(min(top, mean + half)), sd


def _tau(order) -> float:
    if list(order) == sorted(order):
        return 1.0
    return float(stats.kendalltau(list(order), list(range(len(order))))[0])


def check_counts(ks, what: str, top: int | None = None, of: str = "") -> list:
    """ks / swaps: distinct positive integers (at most top, the number of `of`, where given).
    A repeated k would re-draw the same seeded trials and count them twice, narrowing its
    interval for nothing."""
    ks = list(ks)
    if not ks:
        raise PathensError(f"{what} is empty: give at least one count")
    for k in ks:
        checks.lesion_count(k, what)
        if top is not None and k > top:
            raise PathensError(f"{what}: {k} is more than the {top} {of}")
    twice = sorted({int(k) for k in ks if ks.count(k) > 1})
    if twice:
        raise PathensError(f"{what} lists {twice[0]} more than once: each count is drawn `trials` "
                           f"times already; list each once (more trials: raise trials)")
    return [int(k) for k in ks]
