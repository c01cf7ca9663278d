"""The engine behind pathens.lesion: evaluate many variants (conditions) of a view on a dataset,
sharing what they share with the intact network, and keep every finished condition on disk.

Sharing. A condition (some branches deleted and/or the blocks reordered) first differs from the
intact network at position p; everything before p is the same. For each data batch the stem and
the intact blocks run once, position by position, and each condition runs from the intact
activation h_p entering its own p: `view.run_from(h_p, p, ...)` (memory: one activation of the
batch besides the condition's own run, instead of keeping all n+1). Batches are the outer loop
and conditions the inner one, so each batch is loaded once per *group* of conditions.
Single-block deletions then cost about half of a naive loop.

Groups and files. Without an output file all conditions form one group (one pass over the data).
With `out=` the conditions run in groups of `group_size`: each group makes one pass over the
data and its rows are appended to the file (one line each, flushed) when the group ends, so an
interrupted sweep loses at most one group. The file's first line records the sweep's
configuration; a re-run with the same configuration skips the conditions already on disk, a
different configuration is refused. With BatchNorm recalibration every condition changes the
whole network's statistics, so each condition is its own group and nothing is shared.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import checks, distributed
from ..data.batches import Data
from ..errors import PathensError
from ..models.modes import eval_mode
from .lesion_rows import COLUMNS, TOP5, SweepFile  # noqa: F401 (COLUMNS: the row layout)
from ..view.residual_view import wrap

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal



def wilson(errors: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion errors / n (95% by default)."""
    if n <= 0:
        return math.nan, math.nan
    p, z2 = errors / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Condition:
    """One variant of the network: branches of `deleted` removed, blocks run in `order`."""

    kind: str                         # "intact", "delete" or "reorder"
    k: int                            # blocks deleted, or swaps made
    trial: int
    deleted: tuple = ()               # block indices, and (block, branch) pairs for one of a
    #                                   block's parallel branches (ResidualView.deletions)
    order: Optional[tuple] = None     # None: the original order
    tau: float = math.nan             # Kendall tau of order against the original

    def start(self, n: int) -> int:
        """The first position at which this condition differs from the intact network."""
        order = self.order or tuple(range(n))
        moved = [p for p in range(n) if order[p] != p]
        where = [order.index(i) for i in blocks_of(self.deleted)]
        return min(moved + where, default=n)


def blocks_of(deleted) -> set:
    """The blocks a condition's deletions touch (a (block, branch) pair: its block)."""
    return {d[0] if isinstance(d, (tuple, list)) else d for d in deleted}


# ---- evaluation ----------------------------------------------------------------------------

@torch.no_grad()
def evaluate_group(view, data: Data, conds: list, *, cache: bool = True, bar=None) -> np.ndarray:
    """Per condition: [errors, summed loss, items, items with non-finite logits, top-5 errors]
    over all of `data` (one pass), by data.loss (items: examples, or tokens for a language
    model; top-5 errors NaN where they do not apply: Loss.top5_errors).

    cache=True walks the intact network once per batch, h = stem(x), h = block_p(h), ..., and
    runs each condition from h at its first changed position p; cache=False re-runs every
    condition from the input (the naive loop, for benchmarks). Both give the same numbers.
    """
    n = view.num_blocks
    starts = [c.start(n) for c in conds] if cache else [0] * len(conds)
    at = {}  # position -> indices of the conditions that start there
    for j, p in enumerate(starts):
        at.setdefault(p, []).append(j)
    acc = np.zeros((len(conds), 5))
    last = max(at)
    for b, (x, y) in enumerate(data):
        h, ctx = view.embed(x) if cache else (x, None)
        for p in range(last + 1):
            for j in at.get(p, ()):
                c = conds[j]
                logits = (view.run_from(h, p, deleted=c.deleted, order=c.order, ctx=ctx) if cache
                          else view.run(x, deleted=c.deleted, order=c.order))
                acc[j] += (*data.loss.stats(logits, y), data.loss.top5_errors(logits, y))
            if p < last:
                h = view.blocks[p](h, ctx)  # the intact network's input to position p + 1
        if bar is not None and data.num_batches:
            bar.set_postfix_str(f"batch {b + 1}/{data.num_batches}", refresh=False)
    return acc


def make_row(index: int, c: Condition, stats, seed, downsampling: bool) -> dict:
    errors, loss_sum, n, nonfinite, *top5 = (float(v) for v in stats)
    ok = nonfinite == 0
    counted = ok and math.isfinite(errors)  # a custom loss gives no error count
    lo, hi = wilson(int(errors), int(n)) if counted else (math.nan, math.nan)
    row = dict(condition=index, kind=c.kind, k=c.k, trial=c.trial,
               deleted=[list(d) if isinstance(d, tuple) else d for d in c.deleted],
               order=None if c.order is None else list(c.order), downsampling=downsampling,
               tau=c.tau, error=errors / n if counted else math.nan, error_lo=lo, error_hi=hi,
               loss=loss_sum / n if ok else math.nan,
               errors=int(errors) if math.isfinite(errors) else -1, n=int(n),
               nonfinite=int(nonfinite), seed=seed)
    if top5 and math.isfinite(top5[0]):  # a classifier of >= 5 classes (lesion_rows.TOP5)
        row.update(top5_error=top5[0] / n if ok else math.nan, top5_errors=int(top5[0]))
    return row


class Recalibrator:
    """A deep copy of the model, re-wrapped, whose BatchNorm statistics are reset and re-estimated
    on calibration inputs for each condition (the user's model is never changed)."""

    def __init__(self, view, batches: list):
        model = copy.deepcopy(view.model)
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.norms:
            raise PathensError("recalibrate= needs BatchNorm layers, but the model has none")
        with eval_mode(model):
            self.view = wrap(model, example_input=batches[0])
        self.batches = batches

    @torch.no_grad()
    def __call__(self, c: Condition):
        saved = [m.momentum for m in self.norms]
        self.view.model.eval()
        for m in self.norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
            m.train()
        try:
            for x in self.batches:
                self.view.run(x, deleted=c.deleted, order=c.order)
        finally:
            for m, momentum in zip(self.norms, saved):
                m.momentum = momentum
            self.view.model.eval()
        return self.view


def run_conditions(view, data: Data, conds: list, *, config: dict, seed, out=None,
                   group_size: Optional[int] = None, recalibrate=None, progress: bool = True,
                   cache: bool = True, desc: str = "lesion") -> list:
    """Rows of all conditions, computing only those not already in `out`.

    Under torch.distributed every rank evaluates its shard of the data and the sums are
    all-reduced, so that every rank holds the rows one process would compute; rank 0 alone
    reads and appends to `out`, and tells the others which conditions are done."""
    down = {b.index for b in view.blocks if b.downsample}
    if distributed.active():
        distributed.same_everywhere("sweeps", config)
    store = SweepFile(out, config) if out is not None and distributed.is_writer() else None
    rows = distributed.agree(lambda: store.load(conds)) if out is not None else [None] * len(conds)
    todo = [i for i, r in enumerate(rows) if r is None]
    progress = progress and distributed.is_writer()
    recal = Recalibrator(view, recalibrate) if recalibrate is not None and todo else None
    if recal is not None:
        size = 1
    elif group_size is not None:
        size = checks.positive("group_size", group_size)
    else:
        # with a row file, groups of 16 (each written as it finishes); decided from `out`, not
        # from `store` (rank 0's alone): every rank must all-reduce groups of the same size
        size = 16 if out is not None else max(1, len(todo))
    bar = tqdm(total=len(conds), initial=len(conds) - len(todo), desc=desc, disable=not progress,
               leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                       "conditions [{elapsed}<{remaining}{postfix}]")
    try:
        with eval_mode(view.model):
            for g in range(0, len(todo), size):
                group = todo[g:g + size]
                cs = [conds[i] for i in group]
                net = recal(cs[0]) if recal is not None else view
                stats = distributed.all_sum(evaluate_group(net, data, cs, cache=cache, bar=bar))
                if stats.size and stats[0, 2] == 0:
                    raise PathensError("data is empty: it yielded no examples")
                new = [make_row(i, c, s, seed, bool(down & blocks_of(c.deleted)))
                       for i, c, s in zip(group, cs, stats)]
                if store is not None:
                    store.append(new)
                for i, r in zip(group, new):
                    rows[i] = r
                bar.update(len(group))
    finally:
        bar.close()
    if not all(TOP5[0] in r for r in rows):  # a sweep file from before top-5 was recorded:
        for r in rows:                         # its rows and the new ones alike, without it
            for key in TOP5:
                r.pop(key, None)
    bad = [r for r in rows if r["nonfinite"]]
    if bad and distributed.is_writer():
        warnings.warn(f"{len(bad)} of {len(rows)} conditions gave non-finite logits (NaN/inf); "
                      f"their error and loss are recorded as NaN (see the nonfinite column)",
                      RuntimeWarning, stacklevel=3)
    return rows
