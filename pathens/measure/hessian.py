"""The Hessian of the loss with respect to a network's parameters, as PyHessian measures it
(Yao, Gholami, Keutzer & Mahoney 2020), on pathens's views and data.

    h = pathens.hessian.hessian(view, (x, y), params="branches", top_k=3)
    h.eigenvalues, h.trace, h.trace_se, h.degenerate_mass, h.negative_mass, h.density

H = d^2 L / d theta^2, L the MEAN loss over all the data (cross-entropy per example, or per
next token for a language model: losses.py), with BatchNorm in eval mode (running statistics)
and dropout off, computed by the model's own forward (the view is proved to recompose it). The
Hessian is never formed: every method needs only products H v, each by double backward (the
gradient with create_graph=True, then its vector-Jacobian product with v), accumulated over
the batches as sum_b H_b v / N, H_b the Hessian of batch b's SUMMED loss and N the number of
items: batches, and the ranks of a torch.distributed run (all-reduced), add up exactly. When
the data are one batch (per rank), the gradient's graph is kept and every product is one
double backward, as PyHessian does for a single batch; otherwise each product re-runs forward
and backward on every batch (memory stays that of one batch).

- top-k eigenvalues: Lanczos with full reorthogonalisation, started from the gradient's
  direction plus a random (seeded) Gaussian tenth (see _start).
  For each of the top k Ritz pairs (theta, y), r = ||H y - theta y|| is known for free
  (beta_m |s_m|); an eigenvalue of H lies within r of theta (a bound), and within r^2 / gap
  when the other eigenvalues are at least `gap` away (Parlett, The Symmetric Eigenvalue
  Problem, 11.7). The run stops once the estimated error min(r, r^2 / gap) <= tol |theta| for
  each of the top k, gap taken as the distance to the nearest other Ritz value: a relative
  tolerance on the eigenvalue itself, like PyHessian's, but an estimate of the error rather
  than the change between iterations (which power iteration can make small long before it
  converges when lambda_2 / lambda_1 is near 1). Both r (`residuals`) and the estimate
  (`errors`) are returned. "Top" is the largest algebraically, in descending order
  (PyHessian's power iteration finds the largest in magnitude). An eigenvalue of multiplicity
  > 1 is found once (any method growing a Krylov space from one vector does so), so the top k
  are the k largest distinct ones.
- trace: Hutchinson's estimator with Rademacher probes z: mean of z^T H z and its standard
  error (the sample standard deviation / sqrt(probes)).
- spectral density: stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019; PyHessian's
  `density`): per probe, m Lanczos steps from q = z / ||z|| (z Rademacher) give the Gauss
  quadrature of the spectral measure sum_i (q.u_i)^2 delta(lambda_i): nodes = the Ritz values,
  weights = the squared first components of T's eigenvectors (they sum to 1, and
  sum_j w_j theta_j^p = q^T H^p q exactly for p < 2m). The density (1/P) sum_i
  delta(lambda - lambda_i) is estimated by their mean over probes, then broadened by Gaussians
  on a grid for plotting. degenerate_mass (the share of the spectrum with |lambda| <
  eps * lambda_max) and negative_mass (lambda < -eps * lambda_max) sum the quadrature weights
  of the nodes in those ranges directly, NOT the broadened density: Gaussian broadening smears
  the large near-zero cluster across the threshold, so the masses would depend on the width.
  eps = 1e-2 by default: curvature below 1% of the sharpest direction, the scale of the "bulk"
  Sagun et al. (2017) and Ghorbani et al. see near zero beside a few outliers; read the masses
  at the resolution of m steps (nodes sit about (lambda_max - lambda_min) / m apart in sparse
  parts of the spectrum).

Cost, in Hessian-vector products (each about 2-3x a forward and backward of all the data):
Lanczos steps to convergence (at most max_iter) + trace_probes + density_probes x
lanczos_steps; memory: the Lanczos basis holds (steps + 1) x P values of the model's dtype.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from tqdm.auto import tqdm

from .. import checks, distributed
from ..data.batches import EMPTY, Data
from ..errors import PathensError
from ..data.inputs import batch_len, call_model, logits_of
from .linearize import branch_parameters
from ..models.modes import eval_mode
from ..results import Result, fmt
from .registry import Measurement, check_options, register
from ..view.residual_view import wrap

__all__ = ["MAX_PARAMS", "Hessian", "hessian", "lanczos", "select_parameters",
           "spectral_density"]

MAX_PARAMS = 10 ** 8  # beyond this, name a subset: the Lanczos basis holds steps x P values
SIGMA = 1e-2          # default Gaussian width of the broadened density, x the spread of nodes
POINTS = 2000         # grid points of the broadened density
START_NOISE = 0.1     # the random part of the top-k Lanczos start (see _start)


@dataclass(frozen=True)
class Hessian(Result):
    """What `hessian` measured (see the module docstring for each method).

    eigenvalues:     (top_k,) the largest eigenvalues, descending (empty for top_k=0).
    residuals:       (top_k,) ||H y - theta y|| of each Ritz pair: an eigenvalue of H lies
                     within it (a bound).
    errors:          (top_k,) the estimated error min(r, r^2 / gap) the run stopped on.
    trace, trace_se: Hutchinson's estimate of tr(H) and its standard error (NaN without
                     probes).
    trace_samples:   (trace_probes,) z^T H z of each probe.
    nodes, weights:  per SLQ probe, (m,) Ritz values (ascending) and quadrature weights
                     (summing to 1); m = lanczos_steps unless the Krylov space closed sooner.
    density:         dict(grid=(points,), values=(points,), sigma=width): the mean over probes
                     of sum_j w_j N(lambda; theta_j, sigma^2), integrating to 1 (see broadened
                     for another width).
    degenerate_mass: share of the spectrum with |lambda| < eps * lambda_max (quadrature
                     weights, mean over probes).
    negative_mass:   share with lambda < -eps * lambda_max (the same way).
    lambda_max:      the lambda_max those use: eigenvalues[0], or without it the largest node.
    num_params:      P, the dimension of H; param_names: the parameters it is over.
    num_examples, num_items: the data (items: examples, or tokens of a language model).
    loss, gradient_norm: the mean loss and ||dL/dtheta|| at these parameters.
    hvps:            Hessian-vector products used, all methods together (config["hvps"] has
                     them by method).
    config:          the settings behind the numbers.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    errors: np.ndarray
    trace: float
    trace_se: float
    trace_samples: np.ndarray
    nodes: tuple
    weights: tuple
    density: dict
    degenerate_mass: float
    negative_mass: float
    lambda_max: float
    num_params: int
    num_examples: int
    num_items: int
    loss: float
    gradient_norm: float
    hvps: int
    param_names: tuple = ()
    config: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """One summary row: the eigenvalues as eigenvalue_1..k, then the trace and masses."""
        row = dict(num_params=self.num_params, num_examples=self.num_examples, loss=self.loss,
                   gradient_norm=self.gradient_norm)
        row.update({f"eigenvalue_{i + 1}": float(v) for i, v in enumerate(self.eigenvalues)})
        row.update(trace=self.trace, trace_se=self.trace_se,
                   degenerate_mass=self.degenerate_mass, negative_mass=self.negative_mass,
                   lambda_max=self.lambda_max, eps=self.config.get("eps"), hvps=self.hvps)
        return [row]

    def density_table(self) -> list[dict]:
        """The broadened density on its grid, one row per point: eigenvalue, density."""
        return [dict(eigenvalue=float(x), density=float(v))
                for x, v in zip(self.density["grid"], self.density["values"])]

    def quadrature_table(self) -> list[dict]:
        """The SLQ nodes and weights, one row per node: probe, node, weight."""
        return [dict(probe=i, node=float(t), weight=float(w))
                for i, (ts, ws) in enumerate(zip(self.nodes, self.weights))
                for t, w in zip(ts, ws)]

    def broadened(self, sigma: float = SIGMA, points: int = POINTS) -> tuple:
        """(grid, values) of the density broadened with another relative width (see
        spectral_density)."""
        return spectral_density(self.nodes, self.weights, sigma=sigma, points=points)

    # ---- the report's text (the Result protocol) -------------------------------------------

    FIGURE = "spectral density of the Hessian (stochastic Lanczos quadrature)"

    def tables(self) -> dict[str, list[dict]]:
        return {"": self.table(), "hessian_density": self.quadrature_table()}

    def notes(self) -> list[str]:
        return [NOTE]

    def headline(self) -> dict:
        top = fmt(float(self.eigenvalues[0])) if len(self.eigenvalues) else "n/a"
        return {"Hessian: top eigenvalue / trace": f"{top} / {fmt(self.trace)}",
                "Hessian: degenerate / negative mass":
                    f"{fmt(self.degenerate_mass)} / {fmt(self.negative_mass)}"}

    def _over(self) -> str:
        c = self.config
        return (f"{self.num_params:,} parameters ({c.get('params') or 'all'}), mean loss over "
                f"{self.num_examples} examples")

    def summary_lines(self) -> list[str]:
        eig = ", ".join(f"{v:.4g}" for v in self.eigenvalues) or "not computed"
        eps = self.config.get("eps")
        return [f"- Hessian ({self._over()}): top eigenvalues {eig}; trace {fmt(self.trace)} "
                f"+- {fmt(self.trace_se)} (Hutchinson, {len(self.trace_samples)} probes); of the "
                f"spectral density ({len(self.nodes)} SLQ probes), {fmt(self.degenerate_mass)} "
                f"degenerate (|lambda| < {eps:g} x lambda_max) and {fmt(self.negative_mass)} "
                f"negative; {self.hvps} Hessian-vector products."]

    def markdown(self, *, name: str, slug: str, figure=None) -> list[str]:
        lines = ["", f"### {name}: the Hessian", "",
                 f"Over {self._over()}; the quadrature nodes and weights in "
                 f"`{slug}_hessian_density.csv`.", "",
                 "| top eigenvalues | residual bounds | trace | trace SE | degenerate mass | "
                 "negative mass | HVPs |", "|---|---|---|---|---|---|---|",
                 "| " + " | ".join([", ".join(f"{v:.5g}" for v in self.eigenvalues) or "-",
                                   ", ".join(f"{v:.2g}" for v in self.residuals) or "-",
                                   fmt(self.trace), fmt(self.trace_se),
                                   fmt(self.degenerate_mass), fmt(self.negative_mass),
                                   str(self.hvps)]) + " |", ""]
        if figure:
            lines += [f"![{name}: {self.FIGURE}]({figure})", ""]
        return lines

    def __repr__(self) -> str:
        parts = [f"P={self.num_params}"]
        if len(self.eigenvalues):
            parts.append("top " + ", ".join(f"{v:.4g}" for v in self.eigenvalues))
        if not math.isnan(self.trace):
            parts.append(f"trace {self.trace:.4g} +- {self.trace_se:.2g}")
        if self.nodes:
            parts.append(f"degenerate {self.degenerate_mass:.3f}, negative "
                         f"{self.negative_mass:.3f}")
        return f"Hessian({'; '.join(parts)}; {self.hvps} HVPs)"


def hessian(view, data, *, params=None, top_k: int = 1, trace_probes: int = 100,
            density_probes: int = 4, lanczos_steps: int = 90, tol: float = 1e-3,
            max_iter: int = 100, eps: float = 1e-2, batch_size: Optional[int] = 256,
            seed: int = 0, progress: bool = True, loss=None) -> Hessian:
    """The Hessian of the mean loss over `data` w.r.t. the parameters: its top eigenvalues,
    trace and spectral density (see the module docstring).

    view:    a ResidualView, or a model (wrapped).
    data:    an (inputs, targets) pair (cut into batches of batch_size) or a DataLoader (or
             list) of (inputs, targets) batches; under torch.distributed each rank takes its
             shard and the products are all-reduced.
    params:  None or "all": every trainable parameter (at most MAX_PARAMS); "branches": the
             parameters of every block's branch; a parameter name, a block name ("layer2.0":
             that block's parameters; a transformer sublayer "h.3.attn": those its branch
             uses), a module name ("fc"), or a list of these (their union).
    top_k:   eigenvalues wanted (0: none). tol, max_iter: the Lanczos stopping rule (estimated
             error <= tol |theta| for each of the top k) and the most products it may use (a
             warning says if it stops unconverged).
    trace_probes:   Rademacher probes for the trace (0: none, else at least 2 for an error).
    density_probes, lanczos_steps: SLQ probes (0: no density) and Lanczos steps per probe
             (Ghorbani et al. use 90; PyHessian 100 and one probe).
    eps:     the relative threshold of degenerate_mass and negative_mass (default 1e-2, see
             the module docstring).
    seed:    every random vector derives from it (the same on every rank): the result is
             deterministic for a given seed, data, batching and machine.
    loss:    "classification", "next_token", fn(logits, targets) -> mean loss, or None: the
             view's own.
    """
    view = wrap(view)
    top_k = checks.non_negative("top_k", top_k)
    trace_probes = checks.non_negative("trace_probes", trace_probes)
    density_probes = checks.non_negative("density_probes", density_probes)
    lanczos_steps = checks.integer("lanczos_steps", lanczos_steps, least=2)
    max_iter = checks.integer("max_iter", max_iter, least=1)
    seed = checks.seed(seed)
    if trace_probes == 1:
        raise PathensError("trace_probes must be 0 (no trace) or at least 2 (for a standard "
                           "error), got 1")
    if top_k == trace_probes == density_probes == 0:
        raise PathensError("nothing to compute: top_k, trace_probes and density_probes are all "
                           "0")
    for value, what in ((tol, "tol"), (eps, "eps")):
        checks.number(what, value, low=0, high=1, open_low=True, open_high=True)
    if top_k > max_iter:
        raise PathensError(f"max_iter ({max_iter}) must be at least top_k ({top_k}): Lanczos "
                           f"needs a step per eigenvalue")
    data = Data(view, data, batch_size, loss)
    start = time.perf_counter()
    with eval_mode(view.model), torch.enable_grad():
        names, chosen, described = select_parameters(view, params, data)
        P = sum(p.numel() for p in chosen)
        if top_k > P:
            raise PathensError(f"top_k ({top_k}) exceeds the number of parameters ({P})")
        total = ((max_iter if top_k else 0) + trace_probes
                 + density_probes * min(lanczos_steps, P))
        bar = tqdm(total=total, desc="Hessian", unit="HVP", leave=False,
                   disable=not (progress and distributed.is_writer()))
        op = _Operator(view, data, chosen, bar.update)
        try:
            result = _measure(op, top_k, trace_probes, density_probes, lanczos_steps, tol,
                              max_iter, eps, seed)
        finally:
            bar.close()
            op.release()
    config = dict(params=described, num_params=P, top_k=top_k, tol=tol, max_iter=max_iter,
                  trace_probes=trace_probes, density_probes=density_probes,
                  lanczos_steps=lanczos_steps, eps=eps, seed=seed,
                  batch_size=data.batch_size if data.pair is not None else "the loader's",
                  num_examples=op.examples, items=op.items,
                  loss=f"mean {data.loss.name} over {data.loss.unit}",
                  batchnorm="eval (running statistics)", dtype=str(op.dtype),
                  device=str(op.device), ranks=distributed.world_size(),
                  hvp="double backward, " + ("the one batch's gradient graph kept"
                                             if op.cached else "forward and backward per batch"),
                  masses="from the SLQ quadrature weights (Ritz nodes), not the broadened density",
                  **result.pop("config"))
    config["seconds"] = round(time.perf_counter() - start, 3)
    return Hessian(num_params=P, num_examples=op.examples, num_items=op.items, loss=op.loss,
                   gradient_norm=op.gradient_norm, param_names=tuple(names), config=config,
                   **result)


def _measure(op, top_k, trace_probes, density_probes, lanczos_steps, tol, max_iter, eps,
             seed) -> dict:
    """The three measurements on the operator; a dict of Hessian's fields (and config)."""
    P = op.size
    counts = dict(eigenvalues=0, trace=0, density=0)
    config = {}
    eigenvalues = residuals = errors = np.zeros(0)
    if top_k:
        before = op.hvps
        run = lanczos(op, _start(op, seed), min(max_iter, P), top_k=top_k, tol=tol,
                      restart=lambda i: _gaussian(P, op, seed, 1, i))
        eigenvalues, residuals, errors = run["top"], run["residuals"], run["errors"]
        counts["eigenvalues"] = op.hvps - before
        config.update(converged=run["converged"], lanczos_restarts=run["restarts"])
        if not run["converged"] and distributed.is_writer():
            import warnings
            warnings.warn(f"the top-{top_k} Lanczos run stopped at max_iter={max_iter} steps "
                          f"unconverged (largest estimated error/|theta| "
                          f"{np.max(errors / np.maximum(np.abs(eigenvalues), 1e-300)):.2g} "
                          f"> tol={tol}): raise max_iter or tol", stacklevel=3)
    trace = trace_se = math.nan
    samples = np.zeros(0)
    if trace_probes:
        before = op.hvps
        samples = np.array([_quadratic(op, _rademacher(P, op, seed, 2, i))
                            for i in range(trace_probes)])
        trace = float(samples.mean())
        trace_se = float(samples.std(ddof=1) / math.sqrt(trace_probes))
        counts["trace"] = op.hvps - before
    nodes, weights = [], []
    if density_probes:
        before = op.hvps
        for i in range(density_probes):
            run = lanczos(op, _rademacher(P, op, seed, 3, i), min(lanczos_steps, P))
            nodes.append(run["theta"])
            weights.append(run["weights"])
        counts["density"] = op.hvps - before
    lam, source = math.nan, None
    if len(eigenvalues):
        lam, source = float(eigenvalues[0]), "eigenvalues[0] (Lanczos)"
    elif nodes:
        lam, source = float(max(t.max() for t in nodes)), "the largest SLQ node"
    degenerate = negative = math.nan
    density = dict(grid=np.zeros(0), values=np.zeros(0), sigma=math.nan)
    if nodes:
        if lam > 0:
            degenerate = float(np.mean([w[np.abs(t) < eps * lam].sum()
                                        for t, w in zip(nodes, weights)]))
            negative = float(np.mean([w[t < -eps * lam].sum() for t, w in zip(nodes, weights)]))
        grid, values = spectral_density(nodes, weights)
        density = dict(grid=grid, values=values, sigma=_width(nodes, SIGMA))
    config.update(lambda_max_from=source, hvps=counts, gradient_pass="one forward and "
                  "backward of all the data (loss, gradient, item count), not counted in hvps")
    return dict(eigenvalues=eigenvalues, residuals=residuals, errors=errors, trace=trace, trace_se=trace_se,
                trace_samples=samples, nodes=tuple(nodes), weights=tuple(weights),
                density=density, degenerate_mass=degenerate, negative_mass=negative,
                lambda_max=lam, hvps=op.hvps, config=config)


def _start(op, seed: int) -> torch.Tensor:
    """Lanczos's start for the top eigenvalues: the gradient's direction plus 0.1 x a random
    unit vector (a random one alone where the gradient is zero). The gradient concentrates in
    the top eigenspace (Gur-Ari, Roberts & Dyer 2018), so the Ritz values of the whole top
    cluster appear from the first steps: the gap in the error estimate r^2 / gap is then
    measured, not overestimated as from a random start (where the cluster shows up late), and
    the number of steps hardly varies with the seed (ResNet-20 on 128 images: 4 and 9 for
    every seed, against 3-5 and 5-8 from random starts; BENCHMARKS.md). The random part gives
    every eigenvector a non-zero share (almost surely), so no eigenvalue is out of reach, as
    it could be from the gradient alone (a direction in which the gradient is exactly zero)."""
    r = _gaussian(op.size, op, seed, 0)
    r /= r.norm()
    g = op.gradient.norm()
    return r if not g > 0 else op.gradient / g + START_NOISE * r


def _quadratic(op, z: torch.Tensor) -> float:
    return float(torch.dot(z, op(z)))


# ---- the operator v -> H v ----------------------------------------------------------------

class _Operator:
    """v -> H v for the mean loss over all of data, over the chosen parameters, as flat (P,)
    vectors in the parameters' dtype and device. Built by one gradient pass (the loss, the
    gradient, the number of items N); then each call sums H_b v over the batches b of this
    rank (H_b: the Hessian of batch b's summed loss), all-reduces, and divides by N."""

    def __init__(self, view, data, params: Sequence[torch.Tensor], on_hvp: Callable):
        self.view, self.data, self.params, self.on_hvp = view, data, list(params), on_hvp
        self.shapes = [p.shape for p in params]
        self.sizes = [p.numel() for p in params]
        self.size = sum(self.sizes)
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise PathensError(f"the parameters lie on several devices ({', '.join(map(str, devices))}"
                               f"): name a subset on one device (params=)")
        self.device = devices.pop()
        self.dtype = params[0].dtype
        for p in params[1:]:
            self.dtype = torch.promote_types(self.dtype, p.dtype)
        self.hvps, self.graph = 0, None
        self._gradient_pass()

    def _batch_gradient(self, xb, yb, create_graph: bool) -> tuple:
        """(summed loss, its gradients w.r.t. the chosen parameters, None where unused)."""
        value = self.data.loss.sum(logits_of(call_model(self.view.model, xb)), yb)
        if not torch.isfinite(value):
            raise PathensError("the loss is not finite (NaN or inf) on these inputs; check the "
                               "checkpoint and the input normalisation")
        grads = torch.autograd.grad(value, self.params, create_graph=create_graph,
                                    allow_unused=True)
        return value, grads

    def _gradient_pass(self) -> None:
        loss_sum, items, examples = 0.0, 0, 0
        grad = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for i, (xb, yb) in enumerate(self.data):
            first = i == 0
            value, grads = self._batch_gradient(xb, yb, create_graph=first)
            grad += self._flat(grads)
            self.graph = grads if first else None  # kept only if this is the only batch
            loss_sum += float(value.detach())
            items += self.data.loss.count(yb)
            examples += batch_len(xb)
        distributed.all_sum_tensor(grad)
        loss_sum, items, examples = distributed.all_sum([loss_sum, items, examples])
        self.items, self.examples = int(items), int(examples)
        if self.items == 0:
            raise PathensError("the data hold no examples (or no items the loss counts): the "
                               "Hessian needs at least one")
        if not torch.isfinite(grad).all():
            raise PathensError("the gradient of the loss is not finite (NaN or inf); check the "
                               "checkpoint and the input normalisation")
        self.loss = loss_sum / self.items
        self.gradient_norm = float(grad.double().norm()) / self.items
        self.gradient = grad / self.items
        if self.graph is not None and not any(g is not None and g.requires_grad
                                              for g in self.graph):
            self.graph = None  # the loss is linear in these parameters: H = 0, nothing to keep
        self.cached = self.graph is not None

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v (a new (P,) tensor), over all the data and all ranks."""
        vs = self._split(v)
        if self.graph is not None:
            hv = self._double_backward(self.graph, vs, retain=True)
        else:
            hv = torch.zeros(self.size, dtype=self.dtype, device=self.device)
            for xb, yb in self.data:
                _, grads = self._batch_gradient(xb, yb, create_graph=True)
                hv += self._double_backward(grads, vs, retain=False)
        distributed.all_sum_tensor(hv)
        hv /= self.items
        if not torch.isfinite(hv).all():
            raise PathensError("a Hessian-vector product is not finite (NaN or inf): the loss "
                               "is too curved for the model's dtype here; try model.double()")
        self.hvps += 1
        self.on_hvp(1)
        return hv

    def _double_backward(self, grads, vs, retain: bool) -> torch.Tensor:
        pairs = [(g, v) for g, v in zip(grads, vs) if g is not None and g.requires_grad]
        if not pairs:  # the gradient does not depend on the parameters: H v = 0
            return torch.zeros(self.size, dtype=self.dtype, device=self.device)
        try:
            out = torch.autograd.grad([g for g, _ in pairs], self.params,
                                      grad_outputs=[v for _, v in pairs],
                                      retain_graph=retain, allow_unused=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PathensError(f"the second derivative (double backward) failed: {first}; the "
                               f"model uses an operation without one") from None
        return self._flat(out)

    def _flat(self, grads) -> torch.Tensor:
        return torch.cat([torch.zeros(n, dtype=self.dtype, device=self.device) if g is None
                          else g.detach().reshape(-1).to(self.dtype)
                          for g, n in zip(grads, self.sizes)])

    def _split(self, v: torch.Tensor) -> list:
        return [part.view(shape).to(p.dtype) for part, shape, p in
                zip(torch.split(v, self.sizes), self.shapes, self.params)]

    def release(self) -> None:
        self.graph = None


# ---- random vectors, the same on every rank -------------------------------------------------

def _generator(seed: int, *stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, *stream]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _gaussian(P: int, op, seed: int, *stream: int) -> torch.Tensor:
    g = _generator(seed, *stream)
    return torch.randn(P, generator=g, dtype=op.dtype).to(op.device)


def _rademacher(P: int, op, seed: int, *stream: int) -> torch.Tensor:
    """A (P,) vector of independent +-1 (probability 1/2 each)."""
    g = _generator(seed, *stream)
    signs = torch.randint(0, 2, (P,), generator=g, dtype=torch.int8)
    return (signs.to(op.dtype) * 2 - 1).to(op.device)


# ---- Lanczos --------------------------------------------------------------------------------

class _Basis:
    """The Lanczos vectors as rows of a (capacity, P) matrix grown by doubling, for the full
    reorthogonalisation w <- w - Q^T (Q w) (twice: "twice is enough", Parlett)."""

    def __init__(self, like: torch.Tensor):
        self.rows = torch.empty((8, like.numel()), dtype=like.dtype, device=like.device)
        self.n = 0

    def append(self, q: torch.Tensor) -> None:
        if self.n == len(self.rows):
            grown = torch.empty((2 * self.n, self.rows.shape[1]), dtype=self.rows.dtype,
                                device=self.rows.device)
            grown[:self.n] = self.rows
            self.rows = grown
        self.rows[self.n] = q
        self.n += 1

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]

    def orthogonalise(self, w: torch.Tensor) -> torch.Tensor:
        Q = self.rows[:self.n]
        for _ in range(2):
            w.sub_(Q.T @ (Q @ w))
        return w


def lanczos(apply: Callable, start: torch.Tensor, steps: int, *, top_k: int = 0,
            tol: float = 0.0, restart: Optional[Callable] = None) -> dict:
    """Lanczos tridiagonalisation of a symmetric operator with full reorthogonalisation.

    apply:   v -> H v on (P,) tensors; start: the (P,) start vector (normalised here).
    steps:   at most this many products (<= P).
    top_k:   0 (run all steps: SLQ) or stop once each of the k largest Ritz values theta has
             an estimated error min(r, r^2 / gap) <= tol |theta|, r = ||H y - theta y|| =
             beta_m |s_m| and gap the distance to the nearest other Ritz value.
    restart: i -> a fresh random vector, used when the Krylov space closes (beta ~ 0) before
             the top k converged (the new vector is orthogonalised against the basis and the
             tridiagonal matrix continues block-diagonal); None: stop there (SLQ: the
             quadrature is then exact).

    Returns dict(alpha (m,), beta (m-1,) off-diagonal, theta (m,) ascending Ritz values,
    weights (m,) squared first components of T's eigenvectors, top (k,) descending,
    residuals (k,), errors (k,), converged, restarts, beta_last).
    """
    q = start / start.norm()
    tiny = 64 * torch.finfo(q.dtype).eps
    basis = _Basis(q)
    alpha, beta = [], []
    scale, converged, restarts = 0.0, False, 0
    b = 0.0
    top = residuals = errors = np.zeros(0)
    for j in range(steps):
        basis.append(q)
        w = apply(q)
        a = float(torch.dot(q, w))
        alpha.append(a)
        w.sub_(q, alpha=a)
        if j > 0 and beta[-1] != 0.0:
            w.sub_(basis[j - 1], alpha=beta[-1])
        basis.orthogonalise(w)
        b = float(w.norm())
        scale = max(scale, abs(a), b)
        if top_k and len(alpha) >= top_k:
            top, residuals, errors = _top_ritz(alpha, beta, b, top_k)
            if np.all(errors <= tol * np.abs(top)):
                converged = True
                break
        if j + 1 == steps:
            break
        if b <= tiny * scale:  # the Krylov space is invariant: the Ritz values are exact
            if restart is None or top_k == 0:
                b = 0.0
                break
            w = restart(restarts).to(q.dtype)
            fresh = float(w.norm())
            n = float(basis.orthogonalise(w).norm())
            restarts += 1
            if n <= math.sqrt(torch.finfo(q.dtype).eps) * fresh:  # the basis spans the space
                b = 0.0
                break
            q = w / n
            beta.append(0.0)
        else:
            q = w / b
            beta.append(b)
    alpha, beta = np.array(alpha), np.array(beta)
    theta, vectors = _eig(alpha, beta)
    if top_k and not converged:
        top, residuals, errors = _top_ritz(alpha, beta, b, top_k)
        converged = bool(np.all(errors <= tol * np.abs(top)))
    return dict(alpha=alpha, beta=beta, theta=theta, weights=vectors[0] ** 2, top=top,
                residuals=residuals, errors=errors, converged=converged, restarts=restarts, beta_last=b)


def _eig(alpha: np.ndarray, beta: np.ndarray) -> tuple:
    if len(alpha) == 1:
        return alpha.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta)


def _top_ritz(alpha, beta, b: float, k: int) -> tuple:
    """The k largest Ritz values (descending), their residual norms r = b |s_last| and
    estimated errors min(r, r^2 / gap), gap the distance to the nearest other Ritz value."""
    theta, vectors = _eig(np.asarray(alpha), np.asarray(beta))
    order = np.argsort(theta)[::-1][:k]
    r = np.abs(b * vectors[-1, order])
    others = np.abs(theta[order][:, None] - theta[None, :])
    others[np.arange(len(order)), order] = np.inf
    gap = others.min(1) if len(theta) > 1 else np.full(len(order), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):  # no other Ritz value: r alone
        quadratic = np.where((gap > 0) & np.isfinite(gap), r * r / gap, np.inf)
    return theta[order], r, np.minimum(r, quadratic)


# ---- the density -----------------------------------------------------------------------------

def _width(nodes, sigma: float) -> float:
    lo = min(float(t.min()) for t in nodes)
    hi = max(float(t.max()) for t in nodes)
    spread = hi - lo if hi > lo else max(abs(hi), 1.0)
    return sigma * spread


def spectral_density(nodes, weights, *, sigma: float = SIGMA, points: int = POINTS) -> tuple:
    """(grid, values): the SLQ density sum_j w_j N(lambda; theta_j, s^2), averaged over probes,
    on `points` evenly spaced eigenvalues from the smallest node - 5 s to the largest + 5 s,
    s = sigma x (largest node - smallest node). Each Gaussian integrates to 1, so the values do
    too (to the grid's rounding), without renormalisation."""
    if not len(nodes) or len(nodes) != len(weights):
        raise PathensError("spectral_density needs the nodes and weights of at least one probe")
    checks.number("sigma", sigma, low=0, open_low=True)
    points = checks.integer("points", points, least=2)
    s = _width(nodes, sigma)
    lo = min(float(t.min()) for t in nodes) - 5 * s
    hi = max(float(t.max()) for t in nodes) + 5 * s
    grid = np.linspace(lo, hi, points)
    values = np.zeros(points)
    for t, w in zip(nodes, weights):
        z = (grid[:, None] - np.asarray(t)[None, :]) / s
        values += (np.exp(-0.5 * z ** 2) * np.asarray(w)[None, :]).sum(1)
    values /= len(nodes) * s * math.sqrt(2 * math.pi)
    return grid, values


# ---- which parameters ------------------------------------------------------------------------

def select_parameters(view, params=None, data=None) -> tuple:
    """(names, parameters, description) of the parameters the Hessian is over, in the model's
    order (see `hessian` for what params may be); a one-line PathensError for a selector that
    matches nothing, an empty or frozen selection, or more than MAX_PARAMS parameters."""
    view = wrap(view)
    model = view.model
    named = [(n, p) for n, p in model.named_parameters()]
    trainable = {id(p) for _, p in named if p.requires_grad}
    if params is None or params == "all":
        ids, described = trainable, "all trainable"
    else:
        items = [params] if isinstance(params, str) else params
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
            raise PathensError(f"params must be None, 'all', 'branches', a parameter, block or "
                               f"module name, or a list of names, got {params!r}")
        if not items:
            raise PathensError("params is an empty list: name at least one parameter, block or "
                               "module (or None for all)")
        ids = set()
        for item in items:
            found = _resolve(view, item, named, data)
            if not found & trainable:
                raise PathensError(f"params: {item!r} holds only frozen parameters "
                                   f"(requires_grad=False)")
            ids |= found & trainable
        described = items[0] if len(items) == 1 else list(items)
    seen, names, chosen = set(), [], []
    for n, p in named:
        if id(p) in ids and id(p) not in seen:
            seen.add(id(p))
            names.append(n)
            chosen.append(p)
    if not chosen:
        raise PathensError("params: the selection holds no trainable parameters")
    P = sum(p.numel() for p in chosen)
    if P > MAX_PARAMS:
        raise PathensError(f"the Hessian would be over {P:,} parameters, more than the limit of "
                           f"{MAX_PARAMS:,} (the Lanczos basis holds steps x P values): pass "
                           f"params= a subset, e.g. a block name or a list of parameter names")
    return names, chosen, described


def _resolve(view, item: str, named, data) -> set:
    """ids of the parameters a selector names."""
    if item == "all":
        return {id(p) for _, p in named}
    if item == "branches":
        return {id(p) for b in view.blocks for _, p in branch_parameters(b)}
    by_name = dict(named)
    if item in by_name:
        return {id(by_name[item])}
    blocks = [b for b in view.blocks if b.name == item]
    if blocks:
        b = blocks[0]
        if sum(c.module is b.module for c in view.blocks) == 1:
            return {id(p) for p in b.module.parameters()}
        return _used_by_branch(view, b, data)
    modules = dict(view.model.named_modules())
    if item in modules and item != "":
        found = {id(p) for p in modules[item].parameters()}
        if found:
            return found
        raise PathensError(f"params: the module {item!r} has no parameters")
    near = ", ".join(b.name for b in view.blocks[:3])
    raise PathensError(f"params: nothing is named {item!r}: give a parameter name (e.g. "
                       f"{named[0][0]}), a block ({near}, ...), a module, 'branches' or 'all'")


def _used_by_branch(view, block, data) -> set:
    """ids of the parameters of a sublayer block's module that its branch uses (the module
    holds several blocks: a transformer's attention and MLP), found by autograd on the stream
    of data's first batch; the same on every rank (rank 0's)."""
    if data is None:
        raise PathensError(f"params: the sublayer {block.name!r} needs data to find the "
                           f"parameters its branch uses")
    candidates = [p for p in block.module.parameters()]
    used = None
    for xb, _ in data:
        with torch.no_grad():
            h, ctx = view.embed(xb)
            for b in view.blocks[:block.index]:
                h = b(h, ctx)
        with torch.enable_grad():
            r = block.branch(h.detach(), ctx)
            grads = torch.autograd.grad(r.sum(), candidates, allow_unused=True)
        used = [i for i, g in enumerate(grads) if g is not None]
        break
    used = distributed.broadcast(used)
    if used is None:
        raise PathensError(EMPTY)
    return {id(candidates[i]) for i in used}


def _count(v, what: str, least: int) -> int:
    return checks.integer(what, v, least=least)


# Said once in a report that holds a Hessian.
NOTE = (
    "**The Hessian.** H = d^2 L / d theta^2 of the mean loss over the data (eval mode), through "
    "Hessian-vector products by double backward, as PyHessian (Yao et al. 2020) computes it: the "
    "top eigenvalues by Lanczos with full reorthogonalisation (each with a bound on its error), "
    "the trace by Hutchinson's estimator with Rademacher probes (with its standard error), and "
    "the spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019). "
    "The degenerate mass is the share of the spectrum within |lambda| < eps x lambda_max, the "
    "negative mass the share below -eps x lambda_max (both from the quadrature weights). Orhan "
    "& Pitkow's singularities are flat directions: a bulk of near-zero eigenvalues (Sagun et al. "
    "2017); skip connections should shrink it.")

# the diagnostic's options: lighter than hessian()'s defaults (a report, not a study)
OPTIONS = dict(params=None, top_k=3, trace_probes=20, density_probes=2, lanczos_steps=40,
               eps=1e-2, tol=1e-3)


def _options(given: dict) -> dict:
    o = check_options(given, OPTIONS, "the diagnostic 'hessian'")
    for key in ("top_k", "trace_probes", "density_probes", "lanczos_steps"):
        _count(o[key], key, 0 if key in ("top_k", "trace_probes", "density_probes") else 2)
    return o


def _run(view, data, settings: dict, results: dict) -> dict:
    """The diagnostic "hessian": top eigenvalues, trace and spectral density."""
    o = settings.get("diagnose", {}).get("hessian")
    if o is None:
        return {}
    settings["log"](f"[{settings['name']}] Hessian ({o['top_k']} eigenvalues, "
                    f"{o['trace_probes']} trace probes, {o['density_probes']} SLQ probes)")
    return {"hessian": hessian(view, data, batch_size=settings["batch_size"],
                               seed=settings["seed"], progress=settings["progress"],
                               loss=settings["loss"], **o)}


register(Measurement("hessian", run=_run, yields=("hessian",), residual=False,
                     diagnostic=True, options=_options))
