"""Singularities per layer, measured on activations (Orhan & Pitkow, ICLR 2018, "Skip
Connections Eliminate Singularities"): the three degeneracies that make a layer's units
redundant, and that skip connections were shown to break.

    s = singularities(view, (x, y))     # one row per layer: eliminated, overlapping, ...
    s.table()

Layers. For every block of the view, in order: the residual stream entering the block
(kind "stream", named "<block>.input"), then each hidden layer of its branch (kind "hidden")
after its nonlinearity, in the order the branch calls them. Hidden layers are found while the
branch alone runs (never its shortcut or post, so the ReLU after a ResNet block's sum is not
one): every call of an activation module inside the block's module (nn.ReLU, nn.GELU, nn.SiLU,
... and classes of a module named like `*.activations`, e.g. Hugging Face's GELUs; caught by
forward hooks, named by the module's path within the block's module, e.g.
"layer1.0.relu") and every functional activation call outside such a module (F.relu,
torch.relu, F.gelu, F.silu, torch.tanh, x.relu(), ...; caught by a TorchFunctionMode, named
by the function, e.g. "layer1.0.relu", as pathens's own blocks call F.relu). A layer called
again in the same branch gets "#2", "#3", ... (a pre-activation block's second ReLU).

Activations A (samples x units). Units are the channels of an (N, C, *spatial) activation
(dim 1), the features of a (N, T, d) one (the last dim: a transformer's tokens) or of a
(N, d) one. positions="mean" (default): one sample per example, each unit averaged over the
positions (pixels, tokens); positions="all": every example x position is a sample.

Per layer of U units, with q = share, eps, delta, variance the arguments:
- eliminated:        the fraction of the U units with |A_u| <= eps * typical on at least a
                     share q of the samples, typical = mean |A| over all the layer's samples
                     and units (q = 1: a unit that is (nearly) zero everywhere, a dead ReLU).
- constant:          the fraction of the U units not eliminated whose standard deviation is
                     <= 1e-6 * typical (a correlation is undefined for them).
- overlapping:       over the pairs (u, v) of the *compared* units (neither eliminated nor
                     constant), the fraction with |corr(A_u, A_v)| >= 1 - delta (copies and
                     negated copies of one unit); NaN with fewer than 2 compared units.
- overlapping_units: the fraction of the U units in at least one such pair.
- max_corr:          the largest |corr| over the pairs of compared units (NaN below 2).
- participation_ratio: (sum s)^2 / sum s^2 / U, s the eigenvalues of the covariance of A (all
                     U units: eliminated units add zero eigenvalues): 1 when the variance is
                     spread evenly over U directions, 1/U when one direction holds it all.
- components:        the fewest principal components holding `variance` (0.99) of the total
                     variance, / U (linear dependence: U - rank units are redundant).
Both spectral numbers are NaN for a layer without variance.

Streaming, exact: two passes over the data, in eval mode (BatchNorm on running statistics,
dropout off). Pass 1 accumulates per layer, in float64, the count, sum |A|, and the shifted
sums sum (A - K) and sum (A - K)^T (A - K) (K the first batch's mean, against cancellation);
the covariance (ddof 1) follows exactly. The elimination threshold eps * typical needs the
mean |A| over all the data, so pass 2 runs the same data again and counts, per unit, the
samples below it; it also re-adds sum |A| and refuses data that changed in between (a
shuffled loader cut by max_examples, random augmentation). At most max_examples examples are
read (the first ones); config says how many were and whether the data held more.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import checks, distributed
from ..errors import PathensError
from ..data.batches import Data
from ..data.inputs import batch_len, take
from ..models.modes import eval_mode
from ..results import Result, fmt
from ..view.residual_view import wrap
from .registry import Measurement, check_options, register

POSITIONS = ("mean", "all")
CONSTANT_RTOL = 1e-6  # a unit whose std is below this x typical |A| counts as constant

_ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.GLU, nn.Threshold)
_ACTIVATION_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu,
    F.elu_, F.celu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.softplus, F.glu, F.sigmoid, F.tanh, torch.sigmoid, torch.tanh, torch.sigmoid_,
    torch.tanh_, torch.Tensor.relu, torch.Tensor.relu_, torch.Tensor.sigmoid,
    torch.Tensor.sigmoid_, torch.Tensor.tanh, torch.Tensor.tanh_}


@dataclass(frozen=True)
class Singularities(Result):
    """Singularities of every layer of a view (see the module docstring for each number).

    names:       per layer, "<block>.input" (the residual stream entering the block) or
                 "<block>.<activation>" (a hidden layer of its branch), e.g. "layer2.0.relu".
    blocks:      (layers,) the index of the block each layer belongs to.
    kinds:       per layer, "stream" or "hidden".
    units:       (layers,) U; samples: (layers,) the rows of A (examples, or examples x
                 positions with positions="all").
    typical:     (layers,) mean |A|: the elimination threshold is eps x typical.
    eliminated, constant, overlapping_units: (layers,) fractions of the U units.
    overlapping: (layers,) fraction of the pairs of compared units; max_corr: the largest
                 |corr| over them.
    participation_ratio, components: (layers,) fractions of U.
    eigenvalues: per layer, the covariance's eigenvalues, descending (float64; not in JSON).
    covariances: per layer, the (U, U) covariance of A (ddof 1), with covariances=True.
    config:      the thresholds and how the data were read.
    """

    names: tuple
    blocks: np.ndarray
    kinds: tuple
    units: np.ndarray
    samples: np.ndarray
    typical: np.ndarray
    eliminated: np.ndarray
    constant: np.ndarray
    overlapping: np.ndarray
    overlapping_units: np.ndarray
    max_corr: np.ndarray
    participation_ratio: np.ndarray
    components: np.ndarray
    eigenvalues: tuple = ()
    covariances: tuple | None = None
    config: dict = field(default_factory=dict)

    _heavy = ("eigenvalues", "covariances")

    def table(self) -> list[dict]:
        return [{"index": i, "name": self.names[i], "block": int(self.blocks[i]),
                 "kind": self.kinds[i], "units": int(self.units[i]),
                 "samples": int(self.samples[i]), "typical": self.typical[i],
                 "eliminated": self.eliminated[i], "constant": self.constant[i],
                 "overlapping": self.overlapping[i],
                 "overlapping_units": self.overlapping_units[i], "max_corr": self.max_corr[i],
                 "participation_ratio": self.participation_ratio[i],
                 "components": self.components[i]}
                for i in range(len(self.names))]

    def rows(self, kind: str | None = None) -> list[int]:
        """Indices of the layers of one kind ("stream", "hidden"; None: all)."""
        return [i for i, k in enumerate(self.kinds) if kind is None or k == kind]

    # ---- the report's text (the Result protocol) -------------------------------------------

    FIGURE = "eliminated and overlapping units, participation ratio and components per layer"

    @property
    def unit(self) -> str:
        """"block", or "layer" for a plain network (as the view's blocks are called)."""
        return "layer" if self.config.get("network") == "plain" else "block"

    def counts(self, kind: str = "hidden") -> dict:
        """Over the layers of one kind: units in all, eliminated, in an overlapping pair (both
        counted from the fractions), the mean participation ratio and components (fractions
        of the width, over the layers where they are defined) and the layer of the lowest
        participation ratio (index or -1)."""
        rows = self.rows(kind)
        units = np.asarray(self.units, float)[rows]
        pr = np.asarray(self.participation_ratio, float)[rows]
        comp = np.asarray(self.components, float)[rows]
        finite = np.isfinite(pr)
        return {"layers": len(rows), "units": int(units.sum()),
                "eliminated": int(round(float((self.eliminated[rows] * units).sum()))),
                "overlapping": int(round(float((self.overlapping_units[rows] * units).sum()))),
                "participation_ratio": float(pr[finite].mean()) if finite.any() else math.nan,
                "components": float(np.nanmean(comp)) if np.isfinite(comp).any() else math.nan,
                "lowest": rows[int(np.argmin(np.where(finite, pr, np.inf)))] if finite.any()
                else -1}

    def notes(self) -> list[str]:
        return [NOTE]

    def headline(self) -> dict:
        c = self.counts("hidden")
        return {"hidden units eliminated / overlapping":
                f"{_share(c['eliminated'], c['units'])} / {_share(c['overlapping'], c['units'])}",
                "hidden layers: mean participation ratio": fmt(c["participation_ratio"])}

    def thresholds(self) -> str:
        c = self.config
        where = "each unit averaged over an example's positions" if c.get("positions") == \
            "mean" else "every position a sample"
        return (f"{c.get('num_examples')} examples{' (capped)' if c.get('capped') else ''}; "
                f"eliminated: |A_u| <= {c.get('eps'):g} x the layer's mean |A| on at least "
                f"{c.get('share'):.0%} of the samples; overlapping: |corr| >= "
                f"{1 - c.get('delta'):g}; components for {c.get('variance'):.0%} of the "
                f"variance; {where}")

    def summary_lines(self) -> list[str]:
        u = self.unit
        h, st = self.counts("hidden"), self.counts("stream")
        text = f"- Singularities ({self.thresholds()}): "
        if h["layers"]:
            max_corr = np.asarray(self.max_corr, float)[self.rows("hidden")]
            top = fmt(float(np.nanmax(max_corr))) if np.isfinite(max_corr).any() else "n/a"
            low = h["lowest"]
            where = "of the blocks' branches" if u == "block" else "within the layers"
            text += (f"in the {h['layers']} hidden layers {where}, "
                     f"{_share(h['eliminated'], h['units'])} of {h['units']} units eliminated, "
                     f"{_share(h['overlapping'], h['units'])} in an overlapping pair (largest "
                     f"|corr| {top}); participation ratio {fmt(h['participation_ratio'])} of "
                     f"the width on average" + (f" (lowest {fmt(self.participation_ratio[low])}"
                                                f" at `{self.names[low]}`)" if low >= 0 else "")
                     + f", components {fmt(h['components'])}; ")
        else:
            text += f"no hidden layer found in the {u}s (no activation in them); "
        text += (f"the stream entering each {u}: participation ratio "
                 f"{fmt(st['participation_ratio'])}, {_share(st['eliminated'], st['units'])} of "
                 f"its units eliminated.")
        return [text]

    def markdown(self, *, name: str, slug: str, figure=None, most: int = 40) -> list[str]:
        u = self.unit
        plain = "" if u == "block" else " (plain network: per layer)"
        rows = list(range(len(self.names)))
        lines = ["", f"### {name}: singularities{plain}", "", f"Thresholds: {self.thresholds()}"
                 f". Rows: the residual stream entering each {u} (`.input`) and each hidden "
                 f"layer of its branch, after its activation.", ""]
        if len(rows) > most:
            rows = sorted(self.rows("hidden"), key=lambda i: (-self.eliminated[i],
                                                                self.participation_ratio[i]))
            rows = sorted(rows[:most // 2])
            lines += [f"The {len(rows)} hidden layers with the most eliminated units (then the "
                      f"lowest participation ratio); all {len(self.names)} layers in "
                      f"`{slug}_singularities.csv`.", ""]
        lines += ["| layer | kind | units | eliminated | overlapping units | overlapping pairs "
                  "| largest abs(corr) | participation ratio | components |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i in rows:
            lines.append("| " + " | ".join([
                f"`{self.names[i]}`", self.kinds[i], str(int(self.units[i])),
                fmt(float(self.eliminated[i])), fmt(float(self.overlapping_units[i])),
                fmt(float(self.overlapping[i])), fmt(float(self.max_corr[i])),
                fmt(float(self.participation_ratio[i])), fmt(float(self.components[i]))]) + " |")
        lines.append("")
        if figure:
            lines += [f"![{name}: {self.FIGURE}]({figure})", ""]
        return lines

    def __repr__(self) -> str:
        hidden = self.rows("hidden")
        dead = float(np.mean(self.eliminated[hidden])) if hidden else math.nan
        return (f"Singularities({len(self.names)} layers ({len(hidden)} hidden) on "
                f"{self.config.get('num_examples')} examples; mean eliminated in hidden layers "
                f"{dead:.3g})")


@torch.no_grad()
def singularities(view, data, *, eps: float = 1e-3, share: float = 1.0, delta: float = 0.01,
                  variance: float = 0.99, positions: str = "mean", batch_size: int = 256,
                  max_examples: int | None = 10_000, covariances: bool = False,
                  progress: bool = True) -> Singularities:
    """Elimination, overlap and linear-dependence singularities of every layer of the view.

    view:      a ResidualView (or a model, which is wrapped).
    data:      inputs (a tensor or a dict of tensors), an (inputs, targets) pair (targets
               unused), or a re-iterable loader of such batches; read twice (see the module
               docstring), so a loader must yield the same examples both times.
    eps:       elimination threshold, relative to the layer's mean |A| (>= 0; default 1e-3).
    share:     q in (0, 1]: a unit is eliminated when below the threshold on at least this
               share of the samples (default 1: on every sample).
    delta:     in (0, 1): a pair overlaps when |corr| >= 1 - delta (default 0.01).
    variance:  in (0, 1]: the share of variance `components` counts components for (0.99).
    positions: "mean" (default: each unit averaged over an example's positions) or "all"
               (every position a sample).
    batch_size: examples per forward pass for tensor inputs (a loader's batches are its own).
    max_examples: read at most this many examples (the first ones; >= 2), None: all.
    covariances: also return each layer's covariance matrix (memory: sum of U^2 floats).
    progress:  tqdm bars over the batches of the two passes.
    """
    view = wrap(view)
    eps, share, delta, variance = _check_thresholds(eps, share, delta, variance)
    if positions not in POSITIONS:
        raise PathensError(f"positions must be 'mean' (units averaged over positions) or 'all' "
                           f"(every position a sample), got {positions!r}")
    if max_examples is not None:
        max_examples = checks.integer("max_examples", max_examples, least=2, hint="None: all")
    if distributed.active():
        raise PathensError("singularities runs in one process: call it outside torch.distributed "
                           "(or on rank 0 only)")

    sums = _Sums(view, positions)
    with eval_mode(view.model), _Capture(view) as capture:
        read = _Reader(view, data, batch_size, max_examples)
        for x in read.batches(progress, "singularities: moments"):
            _forward(view, x, capture, sums.first)
        first = read.stats()
        if first["examples"] < 2:
            raise PathensError(f"data holds {first['examples']} example: pass at least 2")
        for lay in sums.layers.values():
            lay.finish(eps)
        for x in read.batches(progress, "singularities: elimination"):
            _forward(view, x, capture, sums.second)
    if read.stats()["examples"] != first["examples"] or any(
            not lay.same_data() for lay in sums.layers.values()):
        raise PathensError("data changed between the two passes (a shuffled loader cut by "
                           "max_examples, or random augmentation): pass an (inputs, targets) "
                           "pair or a loader that yields the same examples every time")
    lays = list(sums.layers.values())
    stats = [lay.result(share, delta, variance) for lay in lays]

    def col(key):
        return np.array([st[key] for st in stats])

    config = {"eps": eps, "share": share, "delta": delta, "variance": variance,
              "positions": positions, "batch_size": batch_size, "max_examples": max_examples,
              "num_examples": first["examples"], "capped": first["capped"],
              "typical": "mean |A| over the layer's samples and units",
              "eliminated": "|A_u| <= eps x typical on >= share of the samples",
              "overlap": f"pairs of units neither eliminated nor constant (std <= "
                         f"{CONSTANT_RTOL:g} x typical)",
              "units": "channels (dim 1) of (N, C, ...) activations, the last dim of (N, T, d) "
                       "and (N, d) ones",
              "covariance": "float64, ddof 1, two passes (moments, then elimination counts)",
              "mode": "eval (running statistics, no dropout)",
              "network": "residual" if any(b.residual for b in view.blocks) else "plain"}
    return Singularities(
        names=tuple(lay.name for lay in lays), blocks=np.array([lay.block for lay in lays]),
        kinds=tuple(lay.kind for lay in lays), units=col("units"), samples=col("samples"),
        typical=col("typical"), eliminated=col("eliminated"), constant=col("constant"),
        overlapping=col("overlapping"), overlapping_units=col("overlapping_units"),
        max_corr=col("max_corr"), participation_ratio=col("participation_ratio"),
        components=col("components"), eigenvalues=tuple(s["eigenvalues"] for s in stats),
        covariances=tuple(s["cov"] for s in stats) if covariances else None, config=config)


def _share(part: int, whole: int) -> str:
    return f"{part} ({part / whole:.1%})" if whole else "n/a"


def _check_thresholds(eps, share, delta, variance) -> tuple:
    eps = checks.number("eps", eps, low=0, example="1e-3",
                        hint="a threshold relative to the layer's mean |A|")
    share = checks.number("share", share, low=0, high=1, open_low=True,
                          hint="1: eliminated on every sample")
    delta = checks.number("delta", delta, low=0, high=1, open_low=True, open_high=True,
                          example="0.01", hint="pairs with |corr| >= 1 - delta overlap")
    variance = checks.number("variance", variance, low=0, high=1, open_low=True,
                             example="0.99")
    return eps, share, delta, variance


# ---- running the view with the branch's activations captured ---------------------------------

def _forward(view, x, capture, sink) -> None:
    """One pass of the view on inputs x: sink((block, "input"), "stream", h) for the stream
    entering every block, sink((block, name), "hidden", a) for every activation its branch
    calls. The shortcut and post run outside the capture."""
    h, ctx = view.embed(x)
    for blk in view.blocks:
        sink((blk.index, "input"), "stream", h)
        with capture.branch_of(blk, sink):
            r = blk.branch(h, ctx)
        h = blk.post(blk.shortcut(h) + r) if blk.residual else blk.post(r)


class _Capture:
    """Calls sink(key, "hidden", output) for every activation run while branch_of(block) is
    open: activation modules of the block's module by forward hooks, functional activations
    outside them by a TorchFunctionMode (entered only around the branch)."""

    def __init__(self, view):
        self.view, self.block, self.sink, self.depth, self.seen = view, None, None, 0, {}
        self.names, self.handles = {}, []

    def __enter__(self):
        for blk in self.view.blocks:
            for name, m in blk.module.named_modules():
                if _is_activation(m) and id(m) not in self.names:
                    self.names[id(m)] = name
                    self.handles.append(m.register_forward_pre_hook(self._pre))
                    self.handles.append(m.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    @contextmanager
    def branch_of(self, blk, sink):
        self.block, self.sink, self.depth, self.seen = blk, sink, 0, {}
        try:
            with _Functional(self):
                yield
        finally:
            self.block = self.sink = None

    def emit(self, name: str, out) -> None:
        if not torch.is_tensor(out):
            return
        k = self.seen[name] = self.seen.get(name, 0) + 1
        self.sink((self.block.index, name if k == 1 else f"{name}#{k}"), "hidden", out)

    def _pre(self, module, args):
        if self.block is not None:
            self.depth += 1

    def _post(self, module, args, out):
        if self.block is None:
            return
        self.depth -= 1
        if self.depth == 0:  # the outermost activation module (not one nested in another)
            self.emit(self.names[id(module)], out)


class _Functional(TorchFunctionMode):
    """Hands every functional activation called outside an activation module to the capture
    (the mode is off while its own handler runs: F.relu's inner torch.relu is not seen)."""

    def __init__(self, capture: _Capture):
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.capture.depth == 0 and _is_activation_function(func):
            self.capture.emit(getattr(func, "__name__", "activation").rstrip("_"), out)
        return out


def _is_activation_function(func) -> bool:
    try:
        return func in _ACTIVATION_FUNCTIONS
    except TypeError:  # an unhashable callable: not one of them
        return False


def _is_activation(m: nn.Module) -> bool:
    cls = type(m)
    return isinstance(m, _ACTIVATION_MODULES) or (
        cls.__module__.rsplit(".", 1)[-1] in ("activations", "activation") and
        not list(m.children()))


# ---- per-layer sums ----------------------------------------------------------------------------

class _Sums:
    """The _Layer of every layer, keyed (block index, local name), in the order first seen."""

    def __init__(self, view, positions: str):
        self.view, self.positions, self.layers = view, positions, {}

    def name(self, key) -> str:
        return f"{self.view.blocks[key[0]].name}.{key[1]}"

    def first(self, key, kind, a) -> None:
        lay = self.layers.get(key)
        if lay is None:
            lay = self.layers[key] = _Layer(key, kind, self.name(key))
        lay.add(_samples(a, self.positions, lay.name))

    def second(self, key, kind, a) -> None:
        lay = self.layers.get(key)
        if lay is None:
            raise PathensError(f"layer {self.name(key)} appeared only in the second pass: the "
                               f"branch calls its activations differently from batch to batch")
        lay.count(_samples(a, self.positions, lay.name))


def _samples(a: torch.Tensor, positions: str, name: str) -> torch.Tensor:
    """A (samples, units) float64 copy of an activation (see the module docstring's units)."""
    if a.ndim < 2:
        raise PathensError(f"layer {name} has an activation of shape {tuple(a.shape)}: it needs "
                           f"a batch and a unit axis")
    if not a.is_floating_point():
        raise PathensError(f"layer {name} holds {a.dtype} values, not activations")
    device = "cpu" if a.device.type == "mps" else a.device  # no float64 on mps
    a = a.detach().to(device=device, dtype=torch.float64)
    if a.ndim != 3:
        a = a.movedim(1, -1)  # (N, C, *spatial) -> (N, *spatial, C)
    if positions == "mean":
        return a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)
    return a.reshape(-1, a.shape[-1])


class _Layer:
    """One layer's float64 sums: pass 1 (add) the moments, pass 2 (count) the elimination."""

    def __init__(self, key, kind, name):
        self.key, self.kind, self.name = key, kind, name
        self.n = 0
        self.shift = self.s1 = self.s2 = None
        self.sum_abs = self.sum_abs2 = 0.0
        self.n2 = 0
        self.below = None

    @property
    def block(self) -> int:
        return self.key[0]

    def add(self, a: torch.Tensor) -> None:
        if self.shift is None:
            self.shift = a.mean(0)
            u = a.shape[1]
            self.s1 = torch.zeros(u, dtype=torch.float64, device=a.device)
            self.s2 = torch.zeros(u, u, dtype=torch.float64, device=a.device)
        self._same_units(a)
        d = a - self.shift
        self.s1 += d.sum(0)
        self.s2 += d.T @ d
        self.sum_abs += float(a.abs().sum())
        self.n += a.shape[0]

    def _same_units(self, a):
        if a.shape[1] != self.s1.shape[0]:
            raise PathensError(f"layer {self.name} has {a.shape[1]} units in one batch and "
                               f"{self.s1.shape[0]} in another")

    def finish(self, eps: float) -> None:
        u = self.s1.shape[0]
        if u < 2:
            raise PathensError(f"layer {self.name} has {u} unit: singularities need at least 2 "
                               f"units per layer")
        self.typical = self.sum_abs / (self.n * u)
        self.threshold = eps * self.typical
        self.below = torch.zeros(u, dtype=torch.float64, device=self.s1.device)

    def count(self, a: torch.Tensor) -> None:
        self._same_units(a)
        self.below += (a.abs() <= self.threshold).sum(0)
        self.sum_abs2 += float(a.abs().sum())
        self.n2 += a.shape[0]

    def same_data(self) -> bool:
        return self.n2 == self.n and math.isclose(self.sum_abs2, self.sum_abs, rel_tol=1e-9,
                                                  abs_tol=1e-300)

    def result(self, share: float, delta: float, variance: float) -> dict:
        n, u = self.n, self.s1.shape[0]
        mean_d = self.s1 / n
        cov = ((self.s2 - n * torch.outer(mean_d, mean_d)) / (n - 1)).cpu().numpy()
        cov = (cov + cov.T) / 2  # exactly symmetric
        var = np.clip(np.diag(cov), 0.0, None)
        below = self.below.cpu().numpy()
        eliminated = below >= share * n - 1e-9 * n
        constant = ~eliminated & (np.sqrt(var) <= CONSTANT_RTOL * self.typical)
        compared = np.flatnonzero(~eliminated & ~constant)
        out = {"units": u, "samples": n, "typical": self.typical,
               "eliminated": eliminated.mean(), "constant": constant.mean(),
               "overlapping": math.nan, "max_corr": math.nan, "overlapping_units": 0.0,
               "cov": cov}
        if len(compared) >= 2:
            sd = np.sqrt(var[compared])
            corr = np.clip(cov[np.ix_(compared, compared)] / np.outer(sd, sd), -1.0, 1.0)
            upper = np.triu_indices(len(compared), 1)
            r = np.abs(corr[upper])
            close = r >= 1.0 - delta
            paired = np.zeros(u, bool)
            paired[compared[upper[0][close]]] = paired[compared[upper[1][close]]] = True
            out.update(overlapping=close.mean(), max_corr=r.max(),
                       overlapping_units=paired.mean())
        s = np.clip(np.linalg.eigvalsh(cov), 0.0, None)[::-1]
        total = s.sum()
        out["eigenvalues"] = s
        if total > 0:
            out["participation_ratio"] = total ** 2 / (s ** 2).sum() / u
            k = int(np.searchsorted(np.cumsum(s), variance * total * (1 - 1e-12))) + 1
            out["components"] = min(k, u) / u
        else:
            out["participation_ratio"] = out["components"] = math.nan
        return out


class _Reader:
    """The inputs of the data, batch by batch, cut at max_examples; the same for each pass."""

    def __init__(self, view, data, batch_size, max_examples):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PathensError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.data, self.max = Data(view, data, batch_size, labelled=False), max_examples
        self.examples, self.capped = 0, False

    def batches(self, progress: bool, desc: str):
        from tqdm.auto import tqdm
        self.examples, self.capped = 0, False
        bar = tqdm(desc=desc, unit="example", leave=False, disable=not progress,
                   total=self.max)
        try:
            for x in self.data.inputs():
                if self.max is not None and self.examples >= self.max:
                    self.capped = True
                    return
                n = batch_len(x)
                if self.max is not None and self.examples + n > self.max:
                    x, self.capped = take(x, slice(0, self.max - self.examples)), True
                    n = batch_len(x)
                mask = x.get("attention_mask") if isinstance(x, dict) else None
                if mask is not None and not bool((mask != 0).all()):
                    raise PathensError("inputs with padding (zeros in attention_mask) are not "
                                       "supported: pass sequences of equal length, unpadded")
                self.examples += n
                yield x
                bar.update(n)
        finally:
            bar.close()

    def stats(self) -> dict:
        return {"examples": self.examples, "capped": self.capped}


# Said once in a report that holds singularities.
NOTE = (
    "**Singularities.** Orhan & Pitkow (ICLR 2018): three degeneracies that make units of a "
    "layer redundant, each a flat (degenerate) direction of the loss Hessian that slows "
    "learning, towards which plain networks drift as they train and which skip connections "
    "break. Per layer (the residual stream entering each block, and each hidden layer of its "
    "branch after the activation), on the activations A (samples x units; a convolution's "
    "channels, averaged over positions): *eliminated* units, (nearly) zero on (nearly) every "
    "sample (|A_u| <= eps x the layer's mean |A| on at least a share q of the samples; dead "
    "ReLUs: q = 1); *overlapping* units, pairs whose activations are copies or negated copies "
    "(|corr| >= 1 - delta), as the fraction of units in such a pair; *linearly dependent* "
    "units, from the eigenvalues s of the covariance of A: the participation ratio "
    "(sum s)^2 / sum s^2 and the number of principal components holding 99% of the variance, "
    "both as fractions of the width (1: the variance spread over every unit; 1/U: one "
    "direction). Expect more eliminated and overlapping units and a lower participation ratio "
    "in a plain network than in a residual one of the same depth. The thresholds are stated "
    "with each network's numbers.")

# the diagnostic's options: singularities()'s own defaults
OPTIONS = dict(eps=1e-3, share=1.0, delta=0.01, variance=0.99, positions="mean",
               max_examples=10_000)


def _options(given: dict) -> dict:
    if distributed.active():  # before an analysis's other work, not after it
        raise PathensError("the diagnostic 'singularities' runs in one process: leave it out "
                           "under torchrun (e.g. --diagnose signal jacobians)")
    o = check_options(given, OPTIONS, "the diagnostic 'singularities'")
    o["eps"], o["share"], o["delta"], o["variance"] = _check_thresholds(
        o["eps"], o["share"], o["delta"], o["variance"])
    if o["positions"] not in POSITIONS:
        raise PathensError(f"positions must be 'mean' or 'all', got {o['positions']!r}")
    m = o["max_examples"]
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2):
        raise PathensError(f"max_examples must be an integer >= 2 or None (all), got {m!r}")
    return o


def _run(view, data, settings: dict, results: dict) -> dict:
    """The diagnostic "singularities": every layer of the view, two passes over the data."""
    o = settings.get("diagnose", {}).get("singularities")
    if o is None:
        return {}
    settings["log"](f"[{settings['name']}] singularities per layer")
    return {"singularities": singularities(view, data, batch_size=settings["batch_size"],
                                           progress=settings["progress"], **o)}


register(Measurement("singularities", run=_run, yields=("singularities",), residual=False,
                     diagnostic=True, options=_options))
