"""Forward and backward signal propagation through a view's blocks: Brock, De & Smith's (2021)
signal propagation plots and Zaeemzadeh et al.'s (2020) gradient norm ratios, in one pass.

Forward (DESIGN.md section 5). For the residual stream x_i entering block i, per channel c the
mean m_c and the variance v_c over the examples AND the positions (a CNN's (N, C, H, W):
channel axis 1, positions H x W; a transformer's (N, T, d): channel axis d, positions the T
tokens; (N, d): one position):
    channel_mean_sq[i]  = mean_c m_c^2       (average channel squared mean)
    channel_variance[i] = mean_c v_c          (average channel variance)
at the input of every block and, as entry n, at the last block's output (arrays of n + 1).
v_c is the population variance (divided by the count, as Brock et al.'s jnp.var), from float64
sums of x and x^2 per channel, combined over batches and torch.distributed ranks exactly.
The residual branch's output gets the same two statistics (arrays of n): branch_mean_sq and
branch_variance are those of a_i * R_i(x_i), what the block adds to its shortcut (the end of
the branch, before the add, SkipInit's and ReZero's scale included: with alpha = 0 it is 0);
branch_variance_unscaled is that of R_i(x_i) alone (the same where a block has no scale).

Backward. grad_norm[i] = ||dL/dx_i||, the Frobenius norm over all examples, positions and
channels of the gradient of the MEAN loss over the items (examples, or next tokens for a
language model) at the input of block i, and grad_norm[n] at the last block's output: the
loss and its normalisation of pathens.gradients.path_gradients (whose gradient_norm is this
grad_norm[0] on the same data). norm_ratio[i] = grad_norm[i] / grad_norm[i + 1]: block i's
factor on the gradient's norm (near 1: a norm-preserving block; a plain network's ratios
multiply to the vanishing gradient).

Cost: per batch, one forward pass through the view with autograd's graph (the statistics are
taken on the side, without graph) and one backward pass to the block inputs only (no
parameter gradients, no backward through the stem). Everything runs in eval mode (BatchNorm on
its running statistics, so examples are independent and batches add up; dropout off): to see
a BN network at initialisation as Brock et al. do, on batch statistics, recalibrate its
running statistics on the data first (pathens.modes.recalibrate_batchnorm).

Plain networks (wrap(model, allow_plain=True)): the same per layer; the branch statistics do
not apply to a layer without a shortcut and are NaN there.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checks, distributed
from ..data.batches import Data
from ..errors import PathensError
from ..data.inputs import batch_len
from ..models.modes import eval_mode
from ..results import Result, fmt
from .backward_sweep import norm
from ..view.residual_view import wrap
from .registry import Measurement, register


@dataclass(frozen=True)
class SignalPropagation(Result):
    """Forward and backward signal statistics per block (module docstring for definitions).

    block_names, downsample, residual: per block (n), as the view has them (residual False
    for a plain layer).
    channels:          (n + 1) channels of the stream at each state (block inputs, then the
                       last block's output).
    channel_mean_sq, channel_variance: (n + 1,) at the input of block i, entry n at the last
                       block's output.
    branch_mean_sq, branch_variance: (n,) of the scaled branch output a_i * R_i(x_i);
                       branch_variance_unscaled: (n,) of R_i(x_i); NaN for plain layers.
    grad_norm:         (n + 1,) ||dL/dx_i|| of the mean loss, entry n at the last output.
    norm_ratio:        (n,) grad_norm[i] / grad_norm[i + 1].
    num_examples:      examples measured; num_items: the items the loss is a mean over
                       (examples, or predicted tokens); num_positions: (n + 1,) positions
                       (examples x spatial positions or tokens) each state's statistics are
                       over.
    """

    block_names: tuple
    downsample: tuple
    residual: tuple
    channels: tuple
    channel_mean_sq: np.ndarray
    channel_variance: np.ndarray
    branch_mean_sq: np.ndarray
    branch_variance: np.ndarray
    branch_variance_unscaled: np.ndarray
    grad_norm: np.ndarray
    norm_ratio: np.ndarray
    num_examples: int
    num_items: int
    num_positions: np.ndarray
    config: dict = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return len(self.block_names)

    def table(self) -> list[dict]:
        """One row per state: the input of each block, then the last block's output
        ("output": no branch, no ratio)."""
        n, nan = self.num_blocks, math.nan
        rows = []
        for i in range(n + 1):
            last = i == n
            rows.append({
                "index": i, "name": "output" if last else self.block_names[i],
                "downsample": False if last else bool(self.downsample[i]),
                "residual": None if last else bool(self.residual[i]),
                "channels": int(self.channels[i]), "positions": int(self.num_positions[i]),
                "channel_mean_sq": self.channel_mean_sq[i],
                "channel_variance": self.channel_variance[i],
                "branch_mean_sq": nan if last else self.branch_mean_sq[i],
                "branch_variance": nan if last else self.branch_variance[i],
                "branch_variance_unscaled": nan if last else self.branch_variance_unscaled[i],
                "grad_norm": self.grad_norm[i], "norm_ratio": nan if last else self.norm_ratio[i]})
        return rows

    @property
    def unit(self) -> str:
        """"block" for a residual network, "layer" for a plain one (no block has a branch)."""
        return "block" if any(self.residual) else "layer"

    def gradient_reach(self) -> float:
        """||dL/dx_0|| / ||dL/dx_n||: the gradient reaching the first block's input as a
        fraction of the gradient at the last block's output (Zaeemzadeh et al.: about 0.007
        through 30 plain layers, about 1 through a residual network); NaN when the gradient
        at the output is 0."""
        last = float(self.grad_norm[-1])
        return float(self.grad_norm[0]) / last if last > 0 else math.nan

    def norm_deviation(self) -> tuple:
        """(mean |norm_ratio - 1| over the blocks that keep the shape, the same over the
        transitions (downsampling blocks)), each over its finite ratios; NaN where none."""
        dev = np.abs(np.asarray(self.norm_ratio, float) - 1.0)
        down = np.asarray(self.downsample, bool)
        out = []
        for keep in (~down, down):
            v = dev[keep & np.isfinite(dev)]
            out.append(float(v.mean()) if len(v) else math.nan)
        return tuple(out)

    def variance_falls(self) -> tuple:
        """(transitions across which the stream's average channel variance falls, transitions):
        Brock et al.'s reset of a BN ResNet's variance at each transition block."""
        down = [i for i, d in enumerate(self.downsample) if d]
        var = np.asarray(self.channel_variance, float)
        return sum(bool(var[i + 1] < var[i]) for i in down), len(down)

    def __repr__(self) -> str:
        return (f"SignalPropagation({self.num_blocks} blocks, {self.num_examples} examples: "
                f"channel variance {self.channel_variance[0]:.3g} -> "
                f"{self.channel_variance[-1]:.3g}, gradient norm {self.grad_norm[0]:.3g} at "
                f"block 0, {self.grad_norm[-1]:.3g} at the output)")


    # ---- the report's text (the Result protocol) -------------------------------------------

    FIGURE = ("signal propagation: the stream's average channel squared mean and variance, the "
              "branch's variance, the gradient norm")

    def notes(self) -> list[str]:
        return [NOTE]

    def headline(self) -> dict:
        near, at = self.norm_deviation()
        return {"gradient at block 0 / at the output": fmt(self.gradient_reach()),
                "mean abs(norm ratio - 1): blocks keeping the shape / transitions":
                    f"{fmt(near)} / {fmt(at)}"}

    def summary_lines(self) -> list[str]:
        u, n = self.unit, self.num_blocks
        var, msq = np.asarray(self.channel_variance), np.asarray(self.channel_mean_sq)
        top = int(np.nanargmax(var))
        falls, down = self.variance_falls()
        fwd = (f"- Signal propagation per {u} ({self.num_examples} examples, eval mode): the "
               f"stream's avg. channel variance {fmt(var[0])} at the input of {u} 0, "
               f"{fmt(var[-1])} at the last {u}'s output (largest {fmt(var[top])} at state "
               f"{top}); avg. channel squared mean {fmt(msq[0])} -> {fmt(msq[-1])}")
        if down:
            fwd += f"; the variance falls across {falls} of the {down} transitions"
        branch = np.asarray(self.branch_variance, float)
        branch = branch[np.isfinite(branch)]
        if len(branch):
            fwd += (f"; branch output variance {fmt(float(branch.min()))} to "
                    f"{fmt(float(branch.max()))}")
        near, at = self.norm_deviation()
        bwd = (f"- Gradient: ||dL/dx|| at the input of {u} 0 is {fmt(self.gradient_reach())} x "
               f"its value at the last {u}'s output; norm ratio ||dL/dx_i|| / ||dL/dx_(i+1)||: "
               f"mean |ratio - 1| {fmt(near)} over the {n - down} {u}s that keep the shape")
        bwd += f", {fmt(at)} over the {down} transitions" if down else ""
        if not float(self.grad_norm[-1]) > 0:
            bwd += (f" (n/a: no gradient reaches the last {u}'s output, e.g. a classifier "
                    f"initialised to zero, as Fixup's)")
        return [fwd + ".", bwd + "."]

    def markdown(self, *, name: str, slug: str, figure=None, most: int = 40) -> list[str]:
        """Its subsection: a row per state (every state up to `most`, else evenly spaced ones
        with every transition, the CSV holding all), then the figure."""
        u, n = self.unit, self.num_blocks
        plain = "" if u == "block" else " (plain network: per layer, no branch)"
        lines = ["", f"### {name}: signal propagation{plain}", "",
                 f"Per {u} i: the residual stream x_i entering it (row n: the last {u}'s "
                 f"output), per channel over {self.num_examples} examples and all positions, "
                 f"then averaged over channels; the branch a_i R_i(x_i) before the add; the "
                 f"gradient of the mean loss ({self.config.get('loss', 'mean loss')}) at x_i "
                 f"and the ratio ||dL/dx_i|| / ||dL/dx_(i+1)||. BatchNorm: "
                 f"{self.config.get('batchnorm', 'eval')}.", ""]
        rows = list(range(n + 1))
        if len(rows) > most:
            step = -(-len(rows) // (most // 2))
            keep = set(rows[::step]) | {n} | {i for i, d in enumerate(self.downsample) if d}
            rows = sorted(keep)
            lines += [f"{len(rows)} of the {n + 1} states (every {step}th, the transitions and "
                      f"the output); all in `{slug}_signal_propagation.csv`.", ""]
        lines += [f"| {u} | name | transition | channels | avg. channel squared mean | avg. "
                  f"channel variance | branch variance | gradient norm | norm ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in (self.table()[i] for i in rows):
            last = r["index"] == n
            lines.append("| " + " | ".join([
                "n" if last else str(r["index"]), "output" if last else f"`{r['name']}`",
                "yes" if r["downsample"] else "", str(r["channels"]),
                fmt(r["channel_mean_sq"]), fmt(r["channel_variance"]),
                "-" if last else fmt(r["branch_variance"]), fmt(r["grad_norm"]),
                "-" if last else fmt(r["norm_ratio"])]) + " |")
        lines.append("")
        if figure:
            lines += [f"![{name}: {self.FIGURE}]({figure})", ""]
        return lines


def signal_propagation(view, data, *, loss=None, batch_size: int = 256,
                       channel_dim: int | None = None,
                       progress: bool = True) -> SignalPropagation:
    """Forward and backward signal statistics of every block of the view on `data`.

    view:     a ResidualView (or a model, which is wrapped; a plain network needs
              wrap(model, allow_plain=True)).
    data:     an (inputs, targets) pair or a re-iterable loader of (inputs, targets) batches
              (the targets feed the loss, for the gradients); at least 2 examples.
    loss:     "classification", "next_token", fn(logits, targets) -> mean loss, or None: the
              view's own.
    batch_size: examples per pass for a pair (a loader's batches are its own); the result
              does not depend on it (to rounding).
    channel_dim: the stream's channel axis (default: 1, except for (N, T, d) streams: 2).
    progress: a progress bar over the batches (rank 0 only).
    For dict inputs with an attention_mask, the statistics leave the padding positions out
    (the gradient norms keep every position: the loss defines them).
    """
    view = wrap(view)
    data = Data(view, data, batch_size, loss)
    n = view.num_blocks
    acc = _Sums(n)
    grad_sq = np.zeros(n + 1)
    items = examples = 0
    start = time.perf_counter()
    bar = tqdm(total=data.num_batches, desc="signal propagation", unit="batch", leave=False,
               disable=not (progress and distributed.is_writer()))
    with eval_mode(view.model):
        for x, y in data:
            grad_sq += _batch(view, x, y, data.loss, acc, channel_dim)
            items += data.loss.count(y)
            examples += batch_len(x)
            bar.update()
    bar.close()
    # sums over disjoint examples: over the ranks of a torch.distributed run too
    *grad_sq, items, examples = distributed.all_sum([*grad_sq, items, examples])
    items, examples = int(items), int(examples)
    if examples < 2:
        raise PathensError(f"signal_propagation needs at least 2 examples (statistics over "
                           f"examples), got {examples}")
    if items == 0:
        raise PathensError("the loss has no item to average over (every target is ignored)")
    stats = acc.reduce()
    mean_sq, var = stats["stream"]
    b_mean_sq, b_var = stats["branch"]
    _, b_var_raw = stats["raw"]
    _check_finite(view, mean_sq, var, b_var)
    grad = np.sqrt(np.asarray(grad_sq)) / items
    if not np.isfinite(grad).all():
        i = int(np.argmin(np.isfinite(grad)))
        raise PathensError(f"the loss gradient at state {i} is not finite (overflow): check the "
                           f"checkpoint and the input normalisation")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = grad[:-1] / grad[1:]
    config = {
        "num_examples": examples, "items": items,
        "batch_size": data.batch_size if data.pair is not None else "the loader's",
        "loss": f"mean {data.loss.name} over {data.loss.unit}",
        "batchnorm": "eval (running statistics)",
        "channel_dim": "default (1; 2 for (N, T, d) streams)" if channel_dim is None
        else channel_dim,
        "variance": "population (ddof=0), per channel over examples and positions, averaged "
                    "over channels",
        "branch": "a_i * R_i(x_i) (scaled, before the add); _unscaled: R_i(x_i)",
        "gradient": "||dL/dx_i||, L the mean loss, Frobenius over all the data",
        "dtype": str(view.param.dtype), "device": str(view.param.device),
        "processes": distributed.describe(), "seconds": round(time.perf_counter() - start, 3)}
    blocks = view.blocks
    return SignalPropagation(
        block_names=tuple(b.name for b in blocks), downsample=tuple(b.downsample for b in blocks),
        residual=tuple(b.residual for b in blocks), channels=tuple(acc.channels),
        channel_mean_sq=mean_sq, channel_variance=var, branch_mean_sq=b_mean_sq,
        branch_variance=b_var, branch_variance_unscaled=b_var_raw, grad_norm=grad,
        norm_ratio=ratio, num_examples=examples, num_items=items,
        num_positions=np.array(stats["positions"], dtype=np.int64), config=config)


def _check_finite(view, mean_sq, var, branch_var) -> None:
    """A one-line error naming the first state (or branch) whose statistics overflowed."""
    n = view.num_blocks
    for i in range(n + 1):
        if not (math.isfinite(mean_sq[i]) and math.isfinite(var[i])):
            where = (f"the residual stream entering block {i} ({view.blocks[i].name})" if i < n
                     else "the last block's output")
            raise PathensError(f"{where} has non-finite statistics (NaN or overflow): check the "
                               f"checkpoint and the input normalisation")
    for i, b in enumerate(view.blocks):
        if b.residual and not math.isfinite(branch_var[i]):
            raise PathensError(f"the branch of block {i} ({b.name}) has non-finite statistics "
                               f"(NaN or overflow): check the checkpoint")


def _batch(view, x, y, loss, acc: _Sums, channel_dim) -> np.ndarray:
    """One batch: forward through the view with the graph, statistics on the side, one
    backward to the block inputs; returns the squared gradient norms of the SUMMED loss at
    the n + 1 states (divided by the items once, at the end)."""
    with torch.no_grad():
        h, ctx = view.embed(x)
    keep = _keep(x, h)
    states = [h.detach().requires_grad_(True)]
    h = states[0]
    with torch.enable_grad():
        for i, b in enumerate(view.blocks):
            acc.add("stream", i, h.detach(), keep, channel_dim)
            if b.residual:
                s = b.shortcut(h)
                raw = b.parts.branch(h, {} if ctx is None else ctx) if b.parts.context else \
                    b.parts.branch(h)
                r = raw if b.parts.scale is None else b.parts.scale * raw
                sums = acc.add("raw", i, raw.detach(), keep, channel_dim)
                factor = _scalar(b.parts.scale)
                if factor is not None:  # a scalar a: the same sums times a and a^2
                    acc.add("branch", i, sums, keep, channel_dim, factor=factor)
                else:  # a per-channel (or other) scale: measured on its own
                    acc.add("branch", i, r.detach(), keep, channel_dim)
                h = b.post(s + r)
            else:
                h = b.post(b.branch(h, ctx))
            states.append(h)
        acc.add("stream", view.num_blocks, h.detach(), keep, channel_dim)
        value = loss.sum(view.head(h), y)
        if not torch.isfinite(value):
            raise PathensError("the loss is not finite (NaN or inf) on these inputs; check the "
                               "checkpoint and the input normalisation")
        grads = torch.autograd.grad(value, states, allow_unused=True)
    return np.array([0.0 if g is None else float(norm(g)) ** 2 for g in grads])


def _scalar(scale):
    """A branch scale as a number (1.0 for None), or None when it is not one number."""
    if scale is None:
        return 1.0
    if isinstance(scale, (int, float)):
        return float(scale)
    if torch.is_tensor(scale) and scale.numel() == 1:
        return float(scale.detach())
    return None


def _keep(x, h: torch.Tensor) -> torch.Tensor | None:
    """(N, T) bool of the real tokens of dict inputs with an attention mask, else None."""
    mask = x.get("attention_mask") if isinstance(x, dict) else None
    if mask is None:
        return None
    if h.ndim != 3 or tuple(mask.shape) != tuple(h.shape[:2]):
        raise PathensError(f"attention_mask of shape {tuple(mask.shape)} does not match the "
                           f"residual stream's positions {tuple(h.shape[:2])}")
    return (mask != 0).to(h.device)


def channel_axis(t: torch.Tensor, channel_dim: int | None = None) -> int:
    """The channel axis of a (N, C, ...) or (N, T, d) tensor: 1, or 2 for 3-d tensors (tokens),
    or channel_dim (checked)."""
    if t.ndim < 2:
        raise PathensError(f"the residual stream has shape {tuple(t.shape)}: it needs a batch "
                           f"and a channel axis")
    if channel_dim is None:
        return 2 if t.ndim == 3 else 1
    if not checks.is_integer(channel_dim) or not -t.ndim < channel_dim < t.ndim or \
            channel_dim % t.ndim == 0:
        raise PathensError(f"channel_dim must name a non-batch axis of the residual stream "
                           f"{tuple(t.shape)}, got {channel_dim!r}")
    return int(channel_dim) % t.ndim


def _channel_sums(t: torch.Tensor, c: int, keep) -> tuple:
    """((2, C) float64 per-channel sums of t and t^2 over every axis but c, the number of
    positions summed). The positions first, per example, accumulated in float64 without a
    float64 copy of t (the squares through a float64 vector norm), then the examples.
    keep: (N, T) bool of the real tokens of a (N, T, d) t, or None."""
    if keep is not None:  # padding counts for nothing
        if t.ndim != 3 or c != 2:
            raise PathensError(f"an attention_mask needs a (N, T, d) stream with channels last, "
                               f"got {tuple(t.shape)} with channel_dim {c}")
        t = t * keep.unsqueeze(-1).to(t.dtype)
        count = int(keep.sum())
    else:
        count = t.numel() // t.shape[c]
    inner = [d for d in range(1, t.ndim) if d != c]  # the positions within an example
    if inner:
        s1 = t.sum(inner, dtype=torch.float64)  # (N, C)
        s2 = torch.linalg.vector_norm(t, 2, dim=inner, dtype=torch.float64) ** 2
    else:  # (N, C): one position per example
        s1 = t.to(torch.float64)
        s2 = s1 * s1
    return torch.stack([s1.sum(0), s2.sum(0)]), count


class _Sums:
    """Per state and kind ("stream": n + 1 states; "branch", "raw": n blocks), float64 sums
    over examples and positions of x and x^2 per channel, and the number of positions."""

    KINDS = ("stream", "branch", "raw")

    def __init__(self, n: int):
        self.n = n
        self.sums = {k: [None] * (n + 1 if k == "stream" else n) for k in self.KINDS}
        self.count = {k: [0] * (n + 1 if k == "stream" else n) for k in self.KINDS}
        self.channels = [0] * (n + 1)
        self._last_count = 0

    def add(self, kind: str, i: int, t: torch.Tensor, keep, channel_dim,
            factor=None) -> torch.Tensor:
        """Add t's per-channel sums; returns them, (2, C) float64. factor: instead of t, the
        sums of a scalar times t, from t's (factor^2 for the squares)."""
        if factor is not None:
            s = torch.stack([t[0] * factor, t[1] * factor ** 2])
            count = self._last_count
        else:
            s, count = _channel_sums(t, channel_axis(t, channel_dim), keep)
            self._last_count = count
        if self.sums[kind][i] is not None and self.sums[kind][i].shape != s.shape:
            raise PathensError(f"the {kind} at block {i} changed its channels between batches: "
                               f"{self.sums[kind][i].shape[1]} then {s.shape[1]}")
        self.sums[kind][i] = s if self.sums[kind][i] is None else self.sums[kind][i] + s
        self.count[kind][i] += count
        if kind == "stream":
            self.channels[i] = s.shape[1]
        return s

    def reduce(self) -> dict:
        """{kind: (mean_c m_c^2, mean_c v_c) arrays}, "positions": per stream state; summed
        over the ranks of a torch.distributed run first."""
        parts = [(k, i, s) for k in self.KINDS for i, s in enumerate(self.sums[k])
                 if s is not None]
        if distributed.active():
            flat = torch.cat([s.reshape(-1) for _, _, s in parts]) if parts else \
                torch.zeros(0, dtype=torch.float64)
            flat = distributed.all_sum_tensor(flat)
            at = 0
            for k, i, s in parts:
                self.sums[k][i] = flat[at:at + s.numel()].view_as(s)
                at += s.numel()
            counts = distributed.all_sum([c for k in self.KINDS for c in self.count[k]])
            at = 0
            for k in self.KINDS:
                m = len(self.count[k])
                self.count[k] = [int(c) for c in counts[at:at + m]]
                at += m
            self.channels = [0 if s is None else int(s.shape[1]) for s in self.sums["stream"]]
        out = {}
        for k in self.KINDS:
            mean_sq, var = [], []
            for s, c in zip(self.sums[k], self.count[k]):
                if s is None or c == 0:
                    mean_sq.append(math.nan)
                    var.append(math.nan)
                    continue
                m = s[0] / c
                v = (s[1] / c - m ** 2).clamp_min(0.0)  # rounding can go below 0 when v << m^2
                mean_sq.append(float((m ** 2).mean()))
                var.append(float(v.mean()))
            out[k] = (np.array(mean_sq), np.array(var))
        out["positions"] = self.count["stream"]
        return out


# Said once in a report that holds a signal propagation.
NOTE = (
    "**Signal propagation and norm preservation.** Forward (Brock, De & Smith 2021): for the "
    "residual stream x_i entering block i, per channel c the mean m_c and the variance v_c over "
    "the examples and the positions, then averaged over the channels: the average channel "
    "squared mean mean_c m_c^2 and variance mean_c v_c, and the variance of the residual "
    "branch's output (what the block adds to its shortcut). In a BatchNorm ResNet the variance "
    "grows about linearly with the block index (each branch adds about 1) and resets at the "
    "transitions (downsampling blocks with a normalised shortcut); in an unnormalised ReLU "
    "network without care (no SkipInit, no Fixup) the squared mean grows with depth and the "
    "variance explodes or collapses. Backward (Zaeemzadeh, Rahnavard & Shah 2020): ||dL/dx_i||, "
    "the gradient of the mean loss at each block's input in one backward pass, and the norm "
    "ratio ||dL/dx_i|| / ||dL/dx_(i+1)||: near 1 for a block with an identity shortcut (a "
    "norm-preserving block), with the transitions as outliers; a plain network's ratios "
    "multiply to a vanishing gradient (30 plain layers: the gradient at layer 1 about 0.7% of "
    "the output's). Everything in eval mode: BatchNorm on its running statistics (at "
    "initialisation, recalibrate them on data first to see the batch statistics Brock et "
    "al. plot). A plain network gets the same per layer (no branch).")


def _run(view, data, settings: dict, results: dict) -> dict:
    """The diagnostic "signal": forward statistics and gradient norms per block (per layer of
    a plain network), one forward and one backward pass over the data."""
    if "signal" not in settings.get("diagnose", {}):
        return {}
    unit = "block" if view.residual else "layer"
    settings["log"](f"[{settings['name']}] signal propagation per {unit}")
    return {"signal_propagation": signal_propagation(
        view, data, loss=settings["loss"], batch_size=settings["batch_size"],
        progress=settings["progress"])}


register(Measurement("signal", run=_run, yields=("signal_propagation",), residual=False,
                     diagnostic=True))
