"""Peers' layer-importance scores, forward-only, on the same view and data as pathens's own.

ShortGPT's Block Influence (Men et al. 2024, "ShortGPT: Layers in Large Language Models are
More Redundant Than You Expect"): for unit i with input x_i and output x_{i+1},
    BI_i = 1 - E_positions[ cos(x_i, x_{i+1}) ];
they remove the layers of lowest BI.
Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the Deeper Layers"): the angular
distance between the inputs of units l and l+n,
    d(x_l, x_{l+n}) = E_positions[ arccos(cos(x_l, x_{l+n})) / pi ],
for every l; they prune the n units starting at the l of smallest distance.

Units. unit="layer" (the default, as both papers score whole transformer layers): each module
of the view with all its blocks (input of its first block vs output of its last); unit="block":
each residual block (a transformer's attention and MLP sublayers apart). The states compared
are the residual stream at unit boundaries: x_0 = the stem's output, x_U = the last unit's
output (before the head's final norm), as Hugging Face's hidden_states without the final norm.

Positions. A cosine is taken per position of the residual stream, over its features: per
token for a transformer (N, T, d), over d; per spatial position for a CNN (N, C, H, W), over
the C channels (feature_dim=1; pass feature_dim=-1 for a channels-last stream). Per spatial
position rather than per example over everything: the residual stream of a CNN is a field of
C-vectors, one per position, as a transformer's is one per token, so the score means the same
in both; flattened over everything it would mostly measure the largest activations. A (N, d)
stream gives one cosine per example. With dict inputs carrying an `attention_mask` (N, T), the
positions it marks 0 (padding) are left out. positions="last" (angular distance) uses only each
sequence's last real token, Gromov et al.'s exact protocol for decoder LMs, and is the default
for a language model's view (loss "next_token": the last token has attended to the whole
sequence); positions="all" averages every real position, the default for anything else.

Left out and counted (`undefined`): positions where either vector is zero (a cosine is then
undefined; e.g. all channels of a post-ReLU stream zero there). Units whose input and output
shapes differ (a CNN's downsampling blocks) get NaN: no cosine compares vectors of different
spaces. Everything runs in eval mode (BatchNorm on running statistics, dropout off), batch by
batch; the sums of cosines and distances are accumulated in float64 and divided once.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .. import checks, distributed
from ..data.batches import Data
from ..errors import PathensError
from ..data.inputs import batch_len
from ..models.modes import eval_mode
from ..results import Result
from ..view.residual_view import wrap

UNITS = ("layer", "block")


@dataclass(frozen=True)
class BlockInfluence(Result):
    """ShortGPT's Block Influence of every unit (layer or block) of a view.

    names:      the units: module names ("transformer.h.3") or block names ("...h.3.mlp").
    blocks:     per unit, the view's block indices it spans.
    influence:  (units,) BI = 1 - cosine; NaN where the unit changes the stream's shape.
    cosine:     (units,) the mean cosine between the unit's input and output.
    num_items:  positions of the stream entering the first unit (real tokens; examples x
                spatial positions).
    counts:     (units,) positions each unit's mean is over (a CNN's stream has fewer after
                a downsampling block; zero vectors left out).
    undefined:  (units,) positions left out because a vector there was zero.
    config:     unit, positions, feature_dim, num_examples, mode.
    """

    unit: str
    names: tuple
    blocks: tuple
    influence: np.ndarray
    cosine: np.ndarray
    num_items: int
    counts: np.ndarray
    undefined: np.ndarray
    config: dict = field(default_factory=dict)

    def tables(self) -> dict[str, list[dict]]:
        """None of its own in a report: its numbers are in InfluenceVsDeletion's table
        (block_influence.csv), beside each unit's deletion cost."""
        return {}

    def table(self) -> list[dict]:
        return [dict(index=i, name=n, blocks=" ".join(map(str, b)), influence=bi, cosine=c,
                     count=int(k), undefined=int(u))
                for i, (n, b, bi, c, k, u) in enumerate(zip(self.names, self.blocks,
                                                            self.influence, self.cosine,
                                                            self.counts, self.undefined))]

    def ranking(self) -> list[int]:
        """Unit indices from least to most influential (ShortGPT removes the first ones);
        NaN units last."""
        bi = np.where(np.isnan(self.influence), np.inf, self.influence)
        return [int(i) for i in np.argsort(bi, kind="stable")]

    def __repr__(self) -> str:
        low = self.ranking()[0]
        return (f"BlockInfluence({len(self.names)} {self.unit}s on {self.num_items} positions; "
                f"lowest {self.names[low]} ({self.influence[low]:.4g}))")


@dataclass(frozen=True)
class AngularDistance(Result):
    """Gromov et al.'s angular distance between the inputs of units l and l+n, for every l.

    n:          units spanned (the block of n units l .. l+n-1 that pruning would remove).
    names:      all the units of the view, as in BlockInfluence.
    starts:     l = 0 .. units - n.
    distance:   (len(starts),) mean of arccos(cos(x_l, x_{l+n})) / pi, in [0, 1]; NaN where
                the shapes of x_l and x_{l+n} differ.
    best:       the l of smallest distance (ties: the first); pruned: the names of units
                best .. best+n-1.
    num_items, counts and undefined (per start), config: as in BlockInfluence.
    """

    unit: str
    n: int
    names: tuple
    starts: np.ndarray
    distance: np.ndarray
    best: int
    pruned: tuple
    num_items: int
    counts: np.ndarray
    undefined: np.ndarray
    config: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        return [dict(start=int(l), first=self.names[l], last=self.names[l + self.n - 1],
                     distance=d, count=int(k), undefined=int(u))
                for l, d, k, u in zip(self.starts, self.distance, self.counts, self.undefined)]

    def __repr__(self) -> str:
        return (f"AngularDistance(n={self.n} {self.unit}s: smallest {self.distance[self.best]:.4g}"
                f" from {self.names[self.best]}, pruning {len(self.pruned)})")


@torch.no_grad()
def block_influence(view, data, *, unit: str = "layer", feature_dim: Optional[int] = None,
                    batch_size: int = 64) -> BlockInfluence:
    """ShortGPT's Block Influence of every layer (or block) of the view on `data`.

    data: inputs (a tensor or a dict of tensors, e.g. input_ids and attention_mask), an
    (inputs, targets) pair (targets unused), or a re-iterable loader of such batches.
    feature_dim: the stream's feature axis (default: 1 for (N, C, H, W), else the last)."""
    view = wrap(view)
    spans, names = _units(view, unit)
    pairs = [(i, i + 1) for i in range(len(spans))]
    acc = _accumulate(view, data, spans, pairs, "all", feature_dim, batch_size, angular=False)
    cos = acc.means()
    return BlockInfluence(unit, names, tuple(map(tuple, spans)), 1.0 - cos, cos, acc.items,
                          np.array(acc.count), acc.undefined, _config(acc, unit, "all", feature_dim))


@torch.no_grad()
def angular_distance(view, data, n: int = 1, *, unit: str = "layer",
                     positions: Optional[str] = None,
                     feature_dim: Optional[int] = None, batch_size: int = 64) -> AngularDistance:
    """Gromov et al.'s angular distance d(x_l, x_{l+n}) between the inputs of units l and l+n
    of the view on `data`, for l = 0 .. units - n, and the l pruning n units would start at.

    positions: "last" (each sequence's last real token: the paper's protocol for decoder
    language models; (N, T, d) streams only) or "all" (every real position, averaged);
    default: "last" for a language model's view (loss "next_token"), else "all"."""
    view = wrap(view)
    if positions is None:
        positions = "last" if view.loss == "next_token" else "all"
    spans, names = _units(view, unit)
    n = checks.integer("n", n, least=1, most=len(spans), hint=f"the view's {unit}s")
    if positions not in ("all", "last"):
        raise PathensError(f"positions must be 'all' or 'last', got {positions!r}")
    n = int(n)
    pairs = [(l, l + n) for l in range(len(spans) - n + 1)]
    acc = _accumulate(view, data, spans, pairs, positions, feature_dim, batch_size, angular=True)
    d = acc.means()
    if np.isnan(d).all():
        raise PathensError(f"no angular distance is defined: every pair of states {n} {unit}s "
                           f"apart differs in shape")
    best = int(np.nanargmin(d))
    return AngularDistance(unit, n, names, np.arange(len(pairs)), d, best,
                           names[best:best + n], acc.items, np.array(acc.count), acc.undefined,
                           _config(acc, unit, positions, feature_dim, n=n))


# ---- the pass over the data ------------------------------------------------------------------

def _units(view, unit: str) -> tuple:
    """(spans, names): per unit (view.units) the block indices it spans and its name."""
    units = view.units(checks.choice("unit", unit, UNITS))
    return [list(u.blocks) for u in units], tuple(u.name for u in units)


class _Sums:
    """Per pair of states (a, b): the float64 sum of cosines (or angular distances) over the
    positions where both vectors are non-zero, and how many were left out."""

    def __init__(self, pairs: list, angular: bool):
        self.pairs, self.angular = pairs, angular
        self.total = [0.0] * len(pairs)
        self.count = [0] * len(pairs)
        self.undefined = np.zeros(len(pairs), dtype=np.int64)
        self.shape_differs = [False] * len(pairs)
        self.items = self.examples = 0

    def add(self, j: int, a: torch.Tensor, b: torch.Tensor, keep, fd: int):
        """a, b: (N, ..., features, ...) states; keep(shape): bool over the positions."""
        if a.shape != b.shape:
            self.shape_differs[j] = True
            return
        keep = keep(a.shape[:fd] + a.shape[fd + 1:])
        a, b = a.double(), b.double()
        na, nb = a.norm(dim=fd), b.norm(dim=fd)
        ok = keep & (na > 0) & (nb > 0)
        cos = ((a * b).sum(fd)[ok] / (na[ok] * nb[ok])).clamp(-1.0, 1.0)  # rounding: |cos| <= 1
        value = torch.arccos(cos) / math.pi if self.angular else cos
        self.total[j] += float(value.sum())
        self.count[j] += int(ok.sum())
        self.undefined[j] += int((keep & ~ok).sum())

    def means(self) -> np.ndarray:
        return np.array([math.nan if differs or c == 0 else t / c
                         for t, c, differs in zip(self.total, self.count, self.shape_differs)])


def _accumulate(view, data, spans, pairs, positions, feature_dim, batch_size, *, angular):
    """Runs the view on every batch, keeping only the states a pending pair still needs (at
    most max(b - a) + 1 of them), and adds every pair's cosines."""
    bounds = [s[0] for s in spans] + [view.num_blocks]  # state k enters block bounds[k]
    at = {k: [j for j, (a, b) in enumerate(pairs) if b == k] for k in range(len(bounds))}
    window = max(b - a for a, b in pairs) + 1
    acc = _Sums(pairs, angular)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PathensError(f"batch_size must be a positive integer, got {batch_size!r}")
    with eval_mode(view.model):
        for x in Data(view, data, batch_size, labelled=False).inputs():
            h, ctx = view.embed(x)
            fd = _feature_dim(h, feature_dim)
            keep = _Positions(h, x, fd, positions)
            acc.items += int(keep(h.shape[:fd] + h.shape[fd + 1:]).sum())
            acc.examples += batch_len(x)
            states, k = deque(maxlen=window), 0  # states[-1] is state k
            states.append(h)
            for i, blk in enumerate(view.blocks):
                h = blk(h, ctx)
                if i + 1 == bounds[k + 1]:
                    k += 1
                    states.append(h)
                    for j in at[k]:
                        a = pairs[j][0]
                        acc.add(j, states[a - k - 1], h, keep, fd)
    if distributed.active():  # sums over disjoint examples: over the ranks too
        n = len(pairs)
        sums = distributed.all_sum([*acc.total, *acc.count, *acc.undefined, acc.items,
                                    acc.examples, *acc.shape_differs])
        acc.total, acc.count = list(sums[:n]), [int(c) for c in sums[n:2 * n]]
        acc.undefined = sums[2 * n:3 * n].astype(np.int64)
        acc.items, acc.examples = int(sums[3 * n]), int(sums[3 * n + 1])
        acc.shape_differs = [bool(v) for v in sums[3 * n + 2:]]
    if acc.items == 0:
        raise PathensError("no position to average over: every position is padding")
    return acc


def _feature_dim(h: torch.Tensor, feature_dim: Optional[int]) -> int:
    if h.ndim < 2:
        raise PathensError(f"the residual stream has shape {tuple(h.shape)}: it needs a batch "
                           f"and a feature axis")
    fd = (1 if h.ndim == 4 else h.ndim - 1) if feature_dim is None else feature_dim
    if not checks.is_integer(fd) or not (-h.ndim < fd < h.ndim) or fd % h.ndim == 0:
        raise PathensError(f"feature_dim must name a non-batch axis of the residual stream "
                           f"{tuple(h.shape)}, got {feature_dim!r}")
    return int(fd) % h.ndim


class _Positions:
    """keep(shape) -> bool over a state's positions (the state without its feature axis):
    which ones count. The attention mask's real tokens (or each sequence's last one); every
    position of a stream without a mask, whatever its size (a CNN's shrinks as it goes)."""

    def __init__(self, h: torch.Tensor, x, fd: int, positions: str):
        shape = h.shape[:fd] + h.shape[fd + 1:]
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        if mask is not None and (h.ndim != 3 or tuple(mask.shape) != tuple(shape)):
            raise PathensError(f"attention_mask of shape {tuple(mask.shape)} does not match the "
                               f"residual stream's positions {tuple(shape)}")
        if positions == "last" and (h.ndim != 3 or fd != 2):
            raise PathensError(f"positions='last' needs a (N, T, d) stream of tokens, got "
                               f"{tuple(h.shape)}")
        self.device, self.positions, self.masked = h.device, positions, mask is not None
        keep = torch.ones(shape, dtype=torch.bool, device=h.device) if mask is None else \
            (mask != 0).to(h.device)
        self.keep = self._last(keep) if positions == "last" else keep

    @staticmethod
    def _last(keep: torch.Tensor) -> torch.Tensor:
        t = torch.arange(1, keep.shape[1] + 1, device=keep.device)
        last = (keep * t).argmax(1)  # the last real position (t from 1: 0 marks padding)
        real = keep.any(1)
        out = torch.zeros_like(keep)
        out[real, last[real]] = True
        return out

    def __call__(self, shape) -> torch.Tensor:
        if tuple(shape) == tuple(self.keep.shape):
            return self.keep
        if self.masked or self.positions == "last":
            raise PathensError(f"the residual stream's positions change from "
                               f"{tuple(self.keep.shape)} to {tuple(shape)}: the attention "
                               f"mask no longer applies")
        return torch.ones(tuple(shape), dtype=torch.bool, device=self.device)


def _config(acc: _Sums, unit: str, positions: str, feature_dim, **extra) -> dict:
    return dict(unit=unit, positions=positions,
                feature_dim="default (1 for (N, C, H, W), else last)" if feature_dim is None
                else feature_dim, num_examples=acc.examples, num_items=acc.items,
                mode="eval (running statistics, no dropout)",
                shape_differs=[j for j, d in enumerate(acc.shape_differs) if d], **extra)
