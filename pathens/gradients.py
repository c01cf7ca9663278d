"""Gradient by path length: how much of the loss gradient flows through paths of each length.

The gradient is that of the mean cross-entropy loss over the given examples with respect to
the input of the first residual block, computed with BatchNorm in eval mode (running
statistics, so each example is independent and nothing in the model changes).

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
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import paths as _paths
from .batches import check_batch, chunks
from .errors import PathensError
from .linearize import branch_parameters, linearize
from .modes import eval_mode
from .results import Result
from .sweeps import exact_sweep, sampled_sweep
from .view import wrap


@dataclass(frozen=True)
class PathGradients(Result):
    """Gradient magnitude by path length (see the module docstring for each method).

    lengths:      path lengths k measured, e.g. 0..n.
    counts:       C(n, k), the number of paths of each length (float, exact below 2^53).
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
    gradient_norm: norm of the full gradient at the first block's input (autograd's).
    residual:     exact only: ||sum_k G_k - autograd gradient|| / ||autograd gradient||;
                  rounding error when exact, the truncation error with tol > 0.
    config:       the settings that produced this result.
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


def path_gradients(view, inputs: torch.Tensor, targets, *, method: str = "exact",
                   tol: float = 0.0, components: bool = False, parameters: bool = False,
                   batch_size: Optional[int] = None, samples_per_length: int = 1000,
                   lengths: Optional[Sequence[int]] = None, seed: int = 0,
                   progress: bool = True) -> PathGradients:
    """Gradient magnitude by path length at the first block's input (see module docstring).

    view:       a ResidualView (or a model, which is wrapped).
    inputs:     (N, C, H, W) examples; targets: (N,) class indices. Moved to the model's
                device and dtype (float64 models give float64 results).
    method:     "exact" (one sweep, no sampling error) or "sampled" (Veit's protocol).
    tol:        exact only: drop a length's component once its norm is below tol x the largest
                (1e-6 makes the sweep nearly linear in n); 0 = exact.
    components: also return the gradient vectors by length (memory: (n+1) x inputs).
    parameters: exact only: also split each block's branch-parameter gradient by length.
    batch_size: exact: examples per sweep (default 128; bounds memory, the stack holds n+1
                gradients of that many examples; the result does not depend on it).
                sampled: each measurement uses a random batch of this many examples
                (None: all examples every time).
    samples_per_length, lengths, seed: sampled only (lengths default 0..n).
    """
    view = wrap(view)
    if not view.residual:
        raise PathensError("path_gradients needs a residual network: this view has plain layers "
                           "(no shortcuts), hence a single path")
    inputs, targets = check_batch(view, inputs, targets)
    if method not in ("exact", "sampled"):
        raise PathensError(f"method must be 'exact' or 'sampled', got {method!r}")
    if tol < 0:
        raise PathensError(f"tol must be >= 0, got {tol}")
    if method == "exact":
        batch_size = 128 if batch_size is None else batch_size
    config = dict(method=method, num_examples=len(inputs), batch_size=batch_size,
                  dtype=str(view.param.dtype), device=str(view.param.device),
                  loss="mean cross-entropy", batchnorm="eval (running statistics)")
    start = time.perf_counter()
    with eval_mode(view.model):
        if method == "exact":
            if lengths is not None:
                raise PathensError("lengths= applies to method='sampled'; the exact sweep "
                                   "measures every length at once")
            result = _exact(view, inputs, targets, tol, components, parameters, batch_size,
                            progress, dict(config, tol=tol))
        else:
            if parameters:
                raise PathensError("parameters=True needs method='exact'")
            result = _sampled(view, inputs, targets, samples_per_length, lengths, seed,
                              batch_size, components, progress,
                              dict(config, samples_per_length=samples_per_length, seed=seed))
    result.config["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _forward(view, x: torch.Tensor, y: torch.Tensor, loss_scale: float, params: bool = False,
             check: bool = False):
    """(lins, g, g0): lins[i] block i linearized at its input (linearize.py); g = d(loss_scale
    * sum CE)/d(last block output); with check=True also g0, the same loss's gradient at the
    first block's input by plain autograd (else None), from the same forward pass.
    params: keep each block's branch parameters for the sweep."""
    with torch.set_grad_enabled(check):
        h0 = _fast_layout(view.stem(x).detach()).requires_grad_(check)
        h, lins = h0, []
        for b in view.blocks:
            lin, h = linearize(b, h, [p for _, p in branch_parameters(b)] if params else ())
            lins.append(lin)
    with torch.enable_grad():
        last = h if check else h.detach().requires_grad_(True)
        loss = F.cross_entropy(view.head(last), y, reduction="sum") * loss_scale
        if not torch.isfinite(loss):
            raise PathensError("the loss is not finite (NaN or inf) on these inputs; check the "
                               "checkpoint and the input normalisation")
        g, *g0 = torch.autograd.grad(loss, [last, h0] if check else [last])
    return lins, _fast_layout(g), (g0[0] if check else None)


def _exact(view, x, y, tol, want_components, want_params, batch_size, progress, config):
    n, N = view.num_blocks, len(x)
    sq = torch.zeros(n + 1, dtype=torch.float64)  # sum over chunks of ||G_k||^2 (disjoint rows)
    full_sq = err_sq = 0.0  # ||g_0||^2 and ||sum_k G_k - g_0||^2, g_0 by autograd
    comps, param_sums = [], None
    for sl in tqdm(list(chunks(N, batch_size)), desc="exact sweep", disable=not progress,
                   leave=False):
        lins, g, g0 = _forward(view, x[sl], y[sl], 1.0 / N, params=want_params, check=True)
        G, P = exact_sweep(lins, g, tol=tol, with_params=want_params)
        zero = next(c for c in G if c is not None)
        G = [torch.zeros_like(zero) if c is None else c for c in G]
        sq += torch.stack([_norm(c) ** 2 for c in G]).cpu()
        full_sq += float(_norm(g0) ** 2)
        err_sq += float(_norm(_sum(G) - g0) ** 2)
        if want_components:
            comps.append(torch.stack(G))
        if want_params:
            param_sums = _add_param_parts(param_sums, P)
    total = sq.sqrt().numpy()
    counts = np.array([float(math.comb(n, k)) for k in range(n + 1)])
    param_norms = param_components = None
    if want_params:
        param_components = [
            {name: torch.stack([torch.zeros_like(p) if parts[k] is None else parts[k][j]
                                for k in range(n + 1)])
             for j, (name, p) in enumerate(branch_parameters(view.blocks[i]))}
            for i, parts in enumerate(param_sums)]
        param_norms = np.array([
            [math.sqrt(sum(float(t[k].double().pow(2).sum()) for t in blk.values()))
             for k in range(n + 1)] for blk in param_components])
    return PathGradients(
        method="exact", num_blocks=n, lengths=np.arange(n + 1), counts=counts, total=total,
        per_path=total / counts, per_path_se=np.full(n + 1, np.nan),
        samples=np.zeros(n + 1, dtype=int), gradient_norm=math.sqrt(full_sq),
        residual=math.sqrt(err_sq / full_sq) if full_sq > 0 else 0.0, config=config,
        components=torch.cat(comps, 1) if want_components else None,
        param_norms=param_norms, param_components=param_components if want_params else None)


def _add_param_parts(acc, parts):
    """Sum per-chunk parameter parts P[i][k] (lists of tensors or None)."""
    if acc is None:
        return parts
    return [[b if a is None else a if b is None else [u + v for u, v in zip(a, b)]
             for a, b in zip(ra, rb)] for ra, rb in zip(acc, parts)]


def _sampled(view, x, y, samples_per_length, lengths, seed, batch_size, want_components,
             progress, config):
    n, N = view.num_blocks, len(x)
    lengths = np.arange(n + 1) if lengths is None else np.asarray(sorted(set(lengths)))
    if lengths.size == 0 or lengths.min() < 0 or lengths.max() > n:
        raise PathensError(f"lengths must lie in 0..{n} (the view has {n} blocks)")
    if samples_per_length < 2:
        raise PathensError("samples_per_length must be at least 2 (for a standard error)")
    if batch_size is not None and not 1 <= batch_size <= N:
        raise PathensError(f"batch_size must lie in 1..{N} (the number of examples)")
    if want_components and batch_size not in (None, N):
        raise PathensError("components=True needs every measurement on the same examples: "
                           "leave batch_size=None")
    rng = np.random.default_rng(seed)
    norms = np.zeros((samples_per_length, len(lengths)))
    mean = m2 = None  # Welford running mean and sum of squared deviations of the vectors
    rounds = tqdm(range(samples_per_length), desc="sampled paths", disable=not progress,
                  leave=False)
    for r in rounds:
        # One round: a batch, then one path of each length through one shared sweep.
        idx = slice(None) if batch_size in (None, N) else torch.as_tensor(
            np.sort(rng.choice(N, batch_size, replace=False)), device=x.device)
        xb, yb = x[idx], y[idx]
        lins, g, _ = _forward(view, xb, yb, 1.0 / len(xb))
        masks = np.stack([_paths.sample_paths(n, int(k), 1, seed=rng)[0] for k in lengths])
        grads = sampled_sweep(lins, g, masks)
        norms[r] = [float(_norm(v)) for v in grads]
        if want_components:
            v = torch.stack(grads)
            if mean is None:
                mean, m2 = v.clone(), torch.zeros_like(v)
            else:
                delta = v - mean
                mean += delta / (r + 1)
                m2 += delta * (v - mean)
    counts = np.array([float(math.comb(n, int(k))) for k in lengths])
    per_path = norms.mean(0)
    se = norms.std(0, ddof=1) / math.sqrt(samples_per_length)
    full = float(_norm(_autograd_gradient(view, x, y, 1.0 / N)))
    return PathGradients(
        method="sampled", num_blocks=n, lengths=lengths, counts=counts, total=counts * per_path,
        per_path=per_path, per_path_se=se, samples=np.full(len(lengths), samples_per_length),
        gradient_norm=full, config=config,
        components=mean if want_components else None,
        components_se=(m2 / (samples_per_length - 1)).sqrt() / math.sqrt(samples_per_length)
        if want_components else None)


def _autograd_gradient(view, x, y, loss_scale: float) -> torch.Tensor:
    """The full loss gradient at the first block's input, by plain autograd through the view."""
    with torch.enable_grad():
        h0 = view.stem(x).detach().requires_grad_(True)
        loss = F.cross_entropy(view.run_from(h0), y, reduction="sum") * loss_scale
        return torch.autograd.grad(loss, h0)[0]


def _fast_layout(h: torch.Tensor) -> torch.Tensor:
    """On the CPU, 4-d activations in channels_last: oneDNN's convolutions, forward and
    transposed, then skip their reorders to and from NCHW (measured 1.1-2.4x faster per
    conv_transpose2d at CIFAR ResNet shapes). The numbers are the same; only the layout of
    every tensor the sweep makes (components included) changes."""
    if h.ndim == 4 and h.device.type == "cpu":
        return h.contiguous(memory_format=torch.channels_last)
    return h


def _norm(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over all elements (float64 for the sums that follow)."""
    return torch.linalg.vector_norm(t).double()


def _sum(tensors: list) -> torch.Tensor:
    """sum(tensors) with one allocation."""
    total = tensors[0].clone()
    for t in tensors[1:]:
        total.add_(t)
    return total
