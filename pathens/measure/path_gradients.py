"""Gradient by path length: how much of the loss gradient flows through paths of each length.

The gradient is that of the mean loss (cross-entropy over examples, or over next tokens for a
language model: losses.py) with respect to the residual stream entering the first block,
(N, C, H, W) for a CNN, (N, T, d) for a transformer, computed with BatchNorm in eval mode
(running statistics, so each example is independent and nothing in the model changes) and
dropout off. Norms are taken over everything: examples, positions and features.

method="exact"   (pathens's own): one backward sweep splits the true gradient exactly,
                 g = G_0 + ... + G_n, G_k = the sum of the gradients of all paths of length k.
                 `total[k]` = ||G_k||, `per_path[k]` = ||G_k|| / C(n, k) (norm of the mean path
                 gradient).
method="sampled" (Veit et al. 2016): for each length k, `samples_per_length` paths of length k
                 drawn uniformly, each on a batch of examples; `per_path[k]` = mean norm of one
                 path's gradient, `per_path_se[k]` its standard error, `total[k]` = C(n, k) x
                 per_path[k] (Veit's "total gradient magnitude").
Note total differs between methods by design: the exact method gives the norm of the sum of
the paths' gradients, the sampled one the sum of their norms (which is never smaller).

Blocks with parallel branches (Pythia, Phi: view.branch_counts b_i > 1): a path takes the
shortcut or ONE branch of each block, and C(n, k) is everywhere replaced by the number of
paths of length k, N_k = the coefficient of t^k in prod_i (1 + b_i t) (paths.path_counts).
The sampled protocol draws each path of length k with probability 1 / N_k (k blocks, then a
branch of each, uniformly when all b_i are equal; paths.sample_paths), so that
N_k x (mean norm of one path's gradient) estimates the sum of their norms without bias.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checks, distributed, combinatorics as _paths
from ..data.batches import Data
from ..errors import PathensError
from ..data.inputs import batch_len, call_model, logits_of
from . import zero_gradient
from .linearize import branch_parameters, linearize, note_autograd_blocks
from ..models.modes import eval_mode
from ..data.rank_inputs import check_same_inputs
from ..results import Result
from .backward_sweep import exact_sweep, norm, sampled_sweep
from ..view.residual_view import wrap


@dataclass(frozen=True)
class PathGradients(Result):
    """Gradient magnitude by path length (see the module docstring for each method).

    lengths:      path lengths k measured, e.g. 0..n.
    counts:       C(n, k), the number of paths of each length (float, exact below 2^53); with
                  parallel branches, the coefficients of prod_i (1 + b_i t).
    total:        gradient magnitude carried by all paths of length k.
    per_path:     gradient magnitude of one path of length k: sampled, the mean norm of one
                  path's gradient; exact, ||G_k|| / C(n, k), the norm of the *mean* path
                  gradient (smaller: the paths' gradients partly cancel).
    per_path_se:  standard error of per_path (sampled; NaN for exact).
    samples:      measurements per length (sampled; 0 for exact).
    components:   (len(lengths), N, *x_shape) tensors on request: exact, G_k itself; sampled,
                  the mean single-path gradient (x C(n, k) it estimates G_k).
    components_se: elementwise standard error of the sampled components.
    param_norms:  (num_blocks, n+1) exact only, on request: norm of block i's branch-parameter
                  gradient carried by paths of length k (through block i's branch and k-1
                  later ones); row i sums, as vectors, to autograd's gradient.
    param_components: per block, {parameter name: (n+1, *shape) tensor} on request.
    gradient_norm: norm of the full gradient at the first block's input, by the model's own
                  forward and backward (check=False: by the sweep).
    residual:     exact only: ||sum_k G_k - g|| / ||g||, g the gradient by the model's own
                  forward and backward in its own memory layout, as a user would compute it
                  (NaN with check=False): rounding error when exact (in float32 about 1e-6,
                  and up to 1e-4 where a ReLU input is near 0 and rounds to the other side in
                  another layout: use float64, model.double(), for identities to 1e-12), the
                  truncation error with tol > 0.
    config:       the settings that produced this result (with parallel branches, `branches`:
                  view.branch_counts, what counts[k] counts).
    """

    method: str
    num_blocks: int
    lengths: np.ndarray
    counts: np.ndarray
    total: np.ndarray
    per_path: np.ndarray
    per_path_se: np.ndarray
    samples: np.ndarray
    gradient_norm: float
    residual: float = float("nan")
    config: dict = field(default_factory=dict)
    components: Optional[torch.Tensor] = None
    components_se: Optional[torch.Tensor] = None
    param_norms: Optional[np.ndarray] = None
    param_components: Optional[list] = None

    _heavy = ("components", "components_se", "param_components")

    @property
    def norms(self) -> np.ndarray:
        """Alias of `total`: for the exact method, ||G_k|| for each k."""
        return self.total

    def fraction(self) -> np.ndarray:
        """total[k] / sum(total): the share of gradient magnitude carried by each length."""
        return self.total / self.total.sum()

    def table(self) -> list[dict]:
        return [dict(length=int(k), paths=c, total=t, per_path=p, per_path_se=s, samples=int(m))
                for k, c, t, p, s, m in zip(self.lengths, self.counts, self.total,
                                            self.per_path, self.per_path_se, self.samples)]

    def __repr__(self) -> str:
        top = self.lengths[np.argmax(self.total)]
        return (f"PathGradients({self.method}, n={self.num_blocks}, lengths {self.lengths[0]}.."
                f"{self.lengths[-1]}, most gradient at length {top})")


def path_gradients(view, inputs, targets=None, *, method: str = "exact", loss=None,
                   tol: float = 0.0, components: bool = False, parameters: bool = False,
                   batch_size: Optional[int] = None, samples_per_length: int = 1000,
                   lengths: Optional[Sequence[int]] = None, seed: int = 0,
                   check: bool = True, progress: bool = True) -> PathGradients:
    """Gradient magnitude by path length at the first block's input (see module docstring).

    view:       a ResidualView (or a model, which is wrapped).
    inputs, targets: (N, C, H, W) images, (N, T) token ids, or a dict of tensors, and what the
                loss needs ((N,) class indices; for loss="next_token", the token ids); or
                inputs = an (inputs, targets) pair or a DataLoader of (inputs, targets)
                batches and targets=None: streamed batch by batch, so memory does not grow
                with the number of examples. Moved to the model's device (float inputs to its
                dtype: float64 models give float64 results).
    method:     "exact" (one sweep, no sampling error) or "sampled" (Veit's protocol).
    loss:       "classification", "next_token", "next_token_aligned" (targets already shifted,
                nanoGPT's (x, y)), fn(logits, targets) -> mean loss, or None: the view's own
                (a language model's is "next_token").
    tol:        exact only: drop a length's component once its norm is below tol x the largest
                (1e-6 makes the sweep nearly linear in n); 0 = exact. In [0, 1).
    components: also return the gradient vectors by length (memory: (n+1) x inputs).
    parameters: exact only: also split each block's branch-parameter gradient by length.
    batch_size: exact: examples per sweep for tensor inputs (default 128; bounds memory, the
                stack holds n+1 gradients of that many examples; the result does not depend on
                it; a loader's own batches are used as they come). sampled: each measurement
                uses a random batch of this many of the examples (None: all examples every
                time); with a loader, each measurement uses its next batch.
    samples_per_length, lengths, seed: sampled only (lengths default 0..n).
    check:      exact: also compute the gradient by the model's own forward and backward
                (one more pass) for `residual`.
    """
    view = wrap(view)
    if not view.residual:
        raise PathensError("path_gradients needs a residual network: this view has plain layers "
                           "(no shortcuts), hence a single path")
    if method not in ("exact", "sampled"):
        raise PathensError(f"method must be 'exact' or 'sampled', got {method!r}")
    checks.tolerance(tol)
    checks.seed(seed)
    if method == "exact" and lengths is not None:
        raise PathensError("lengths= applies to method='sampled'; the exact sweep measures "
                           "every length at once")
    if method == "sampled" and parameters:
        raise PathensError("parameters=True needs method='exact'")
    if distributed.active() and (components or parameters):
        raise PathensError("components=True and parameters=True run in one process: they are "
                           "per-example (and per-parameter) tensors, not sums to all-reduce")
    pair = targets is not None
    if method == "exact" or not pair:
        chunk = (128 if batch_size is None else batch_size) if method == "exact" else None
        data = Data(view, (inputs, targets) if pair else inputs, chunk, loss)
    else:  # sampled on tensors: random subsets of batch_size examples
        data = Data(view, (inputs, targets), None, loss)
    check_same_inputs(view, data)  # under torch.distributed: one model, one dataset
    loss = data.loss
    config = dict(method=method, num_examples=data.num_examples, batch_size=batch_size,
                  dtype=str(view.param.dtype), device=str(view.param.device),
                  loss=f"mean {loss.name} over {loss.unit}", batchnorm="eval (running statistics)")
    if any(b > 1 for b in view.branch_counts):  # parallel branches: what counts[k] counts
        config["branches"] = list(view.branch_counts)
    start = time.perf_counter()
    with eval_mode(view.model):
        if not parameters and distributed.is_writer():  # said once per analysis
            note_autograd_blocks(view, stacklevel=2)
        if method == "exact":
            result = _exact(view, data, tol, components, parameters, check, progress,
                            dict(config, tol=tol, batch_size=data.batch_size
                                 if data.pair is not None else "the loader's"))
        else:
            samples_per_length = checks.paths_per_length(samples_per_length)
            result = _sampled(view, data, samples_per_length, lengths, seed, batch_size,
                              components, progress,
                              dict(config, samples_per_length=samples_per_length, seed=seed))
    result.config["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _forward(view, x, y, loss, scale: float, params: bool = False, on_block=None):
    """(lins, g): lins[i] block i linearized at its input (linearize.py); g = d(scale *
    summed loss)/d(last block output). params: keep each block's branch parameters for the
    sweep. No autograd graph is kept through the blocks (the linearizations hold what the
    sweep needs)."""
    with torch.no_grad():
        h, ctx = view.embed(x)
        h, lins = _fast_layout(h.detach()), []
        for b in view.blocks:
            lin, h = linearize(b, h, [p for _, p in branch_parameters(b)] if params else (), ctx)
            lins.append(lin)
    with torch.enable_grad():
        last = h.detach().requires_grad_(True)
        value = loss.sum(view.head(last), y) * scale
        _finite(value)
        g = torch.autograd.grad(value, last)[0]
    return lins, _fast_layout(g)


def _finite(value: torch.Tensor) -> None:
    if not torch.isfinite(value):
        raise PathensError("the loss is not finite (NaN or inf) on these inputs; check the "
                           "checkpoint and the input normalisation")


def model_gradient(view, x, y, loss, scale: float) -> torch.Tensor:
    """The loss gradient at the first block's input by the model's own forward and backward:
    model(x) with a hook that makes block 0's input a leaf, in the model's own memory layout."""
    first, leaf = view.blocks[0].module, {}

    def hook(module, args, kwargs):
        if args:
            leaf["h"] = args[0].detach().requires_grad_(True)
            return (leaf["h"], *args[1:]), kwargs
        key = next(iter(kwargs))  # the stream passed by keyword (hidden_states=...)
        leaf["h"] = kwargs[key].detach().requires_grad_(True)
        return args, {**kwargs, key: leaf["h"]}

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.enable_grad():
            value = loss.sum(logits_of(call_model(view.model, x)), y) * scale
            _finite(value)
            return torch.autograd.grad(value, leaf["h"])[0]
    finally:
        handle.remove()


def _exact(view, data, tol, want_components, want_params, check, progress, config):
    """The exact sweep batch by batch on the summed loss; everything is divided by the number of
    items at the end (known only then for a loader), which makes it the mean's gradient."""
    n = view.num_blocks
    sq = torch.zeros(n + 1, dtype=torch.float64)  # sum over batches of ||G_k||^2 (disjoint rows)
    full_sq = err_sq = 0.0  # ||g||^2 and ||sum_k G_k - g||^2, g by the model's own autograd
    items, examples, comps, param_sums = 0, 0, [], None
    head_sq = 0.0  # ||gradient at the head's input||^2: zero for a zero head (zero_gradient.py)
    total = data.num_batches * n if data.num_batches else None
    bar = tqdm(total=total, desc="exact sweep", unit="block", leave=False,
               disable=not (progress and distributed.is_writer()))
    for xb, yb in data:
        lins, g = _forward(view, xb, yb, data.loss, 1.0, params=want_params)
        head_sq += float(norm(g) ** 2)
        G, P = exact_sweep(lins, g, tol=tol, with_params=want_params, on_block=bar.update)
        zero = next(c for c in G if c is not None)
        G = [torch.zeros_like(zero) if c is None else c for c in G]
        sq += torch.stack([norm(c) ** 2 for c in G]).cpu()
        whole = _sum(G)
        if check:
            ref = model_gradient(view, xb, yb, data.loss, 1.0)
            full_sq += float(norm(ref) ** 2)
            err_sq += float(norm(whole - ref) ** 2)
        else:
            full_sq += float(norm(whole) ** 2)
        items += data.loss.count(yb)
        examples += batch_len(xb)
        if want_components:
            comps.append(torch.stack(G))
        if want_params:
            param_sums = _add_param_parts(param_sums, P)
    bar.close()
    # sums over disjoint examples: over ranks too (identity in one process)
    *sq, full_sq, err_sq, items, examples, head_sq = distributed.all_sum(
        [*sq.tolist(), full_sq, err_sq, items, examples, head_sq])
    items, examples = int(items), int(examples)
    if items == 0:
        raise PathensError("data is empty: it yielded no examples")
    totals = np.sqrt(sq) / items
    counts = np.array([float(c) for c in _paths.path_counts(view.branch_counts)])
    param_norms = param_components = None
    if want_params:
        param_components = [
            {name: torch.stack([torch.zeros_like(p) if parts[k] is None else parts[k][j] / items
                                for k in range(n + 1)])
             for j, (name, p) in enumerate(branch_parameters(view.blocks[i]))}
            for i, parts in enumerate(param_sums)]
        param_norms = np.array([
            [math.sqrt(sum(float(norm(t[k])) ** 2 for t in blk.values()))
             for k in range(n + 1)] for blk in param_components])
    residual = (math.sqrt(err_sq / full_sq) if full_sq > 0 else 0.0) if check else math.nan
    config = dict(config, num_examples=examples, items=items,
                  check="model's own autograd" if check else None)
    return zero_gradient.note(PathGradients(
        method="exact", num_blocks=n, lengths=np.arange(n + 1), counts=counts, total=totals,
        per_path=totals / counts, per_path_se=np.full(n + 1, np.nan),
        samples=np.zeros(n + 1, dtype=int), gradient_norm=math.sqrt(full_sq) / items,
        residual=residual, config=config,
        components=torch.cat(comps, 1) / items if want_components else None,
        param_norms=param_norms, param_components=param_components if want_params else None),
        head_sq, exact_lengths=tol == 0, stacklevel=4)


def _add_param_parts(acc, parts):
    """Sum per-chunk parameter parts P[i][k] (lists of tensors or None)."""
    if acc is None:
        return parts
    return [[b if a is None else a if b is None else [u + v for u, v in zip(a, b)]
             for a, b in zip(ra, rb)] for ra, rb in zip(acc, parts)]


def _sampled(view, data, samples_per_length, lengths, seed, batch_size, want_components,
             progress, config):
    n = view.num_blocks
    lengths = np.arange(n + 1) if lengths is None else np.asarray(sorted(set(lengths)))
    if lengths.size == 0 or lengths.min() < 0 or lengths.max() > n:
        raise PathensError(f"lengths must lie in 0..{n} (the view has {n} blocks)")
    batches = data.random_batches(batch_size, np.random.default_rng([seed, 1]))
    fixed = data.pair is not None and batch_size in (None, data.num_examples)
    if want_components and not fixed:
        raise PathensError("components=True needs every measurement on the same examples: "
                           "tensor inputs and batch_size=None")
    rng = np.random.default_rng(seed)  # the same paths on every rank, whatever their number
    norms = np.zeros((samples_per_length, len(lengths)))
    mean = m2 = None  # Welford running mean and sum of squared deviations of the vectors
    head_sq = 0.0  # ||gradient at the head's input||^2 over the rounds (zero_gradient.py)
    rounds = tqdm(range(samples_per_length), desc="sampled paths", unit="round", leave=False,
                  disable=not (progress and distributed.is_writer()))
    for r in rounds:
        # One round: a batch, then one path of each length through one shared sweep, on the
        # summed loss: the squared norms of disjoint rows add up over ranks, then / items.
        xb, yb = next(batches)
        masks = np.stack([_paths.sample_paths(view.branch_counts, int(k), 1, seed=rng)[0]
                          for k in lengths])
        sq, grads, hsq = np.zeros(len(lengths)), None, 0.0
        if yb is not None:
            lins, g = _forward(view, xb, yb, data.loss, 1.0)
            grads = sampled_sweep(lins, g, masks)
            sq, hsq = np.array([float(norm(v)) ** 2 for v in grads]), float(norm(g) ** 2)
        *sq, items, hsq = distributed.all_sum([*sq, 0 if yb is None else data.loss.count(yb),
                                               hsq])
        head_sq += hsq
        norms[r] = np.sqrt(sq) / items
        if want_components:
            v = torch.stack(grads) / items
            if mean is None:
                mean, m2 = v.clone(), torch.zeros_like(v)
            else:
                delta = v - mean
                mean += delta / (r + 1)
                m2 += delta * (v - mean)
    every = _paths.path_counts(view.branch_counts)  # N_k for k = 0..n
    counts = np.array([float(every[int(k)]) for k in lengths])
    per_path = norms.mean(0)
    se = norms.std(0, ddof=1) / math.sqrt(samples_per_length)
    # A length with one path, measured on the same examples every time, is measured without
    # sampling error: its repeats differ only by rounding, so its standard error is 0.
    deterministic = (counts == 1) & fixed
    per_path[deterministic], se[deterministic] = norms[0, deterministic], 0.0
    return zero_gradient.note(PathGradients(
        method="sampled", num_blocks=n, lengths=lengths, counts=counts, total=counts * per_path,
        per_path=per_path, per_path_se=se, samples=np.full(len(lengths), samples_per_length),
        gradient_norm=_gradient_norm(view, data), config=config,
        components=mean if want_components else None,
        components_se=(m2 / (samples_per_length - 1)).sqrt() / math.sqrt(samples_per_length)
        if want_components else None), head_sq, stacklevel=4)


def _gradient_norm(view, data) -> float:
    """||g|| of the mean loss over all of data, by the model's own autograd (batch by batch)."""
    sq, items = 0.0, 0
    for xb, yb in data.batches(128):
        sq += float(norm(model_gradient(view, xb, yb, data.loss, 1.0)) ** 2)
        items += data.loss.count(yb)
    sq, items = distributed.all_sum([sq, items])
    return math.sqrt(sq) / items


def _fast_layout(h: torch.Tensor) -> torch.Tensor:
    """On the CPU, 4-d activations in channels_last: oneDNN's convolutions, forward and
    transposed, then skip their reorders to and from NCHW (measured 1.1-2.4x faster per
    conv_transpose2d at CIFAR ResNet shapes). The numbers are the same up to rounding; only
    the layout of every tensor the sweep makes (components included) changes."""
    if h.ndim == 4 and h.device.type == "cpu":
        return h.contiguous(memory_format=torch.channels_last)
    return h


def _sum(tensors: list) -> torch.Tensor:
    """sum(tensors) with one allocation."""
    total = tensors[0].clone()
    for t in tensors[1:]:
        total.add_(t)
    return total
