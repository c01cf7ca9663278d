"""Singular values of each block's input-output Jacobian, and of its residual branch alone:
how close a block is to an isometry (Zaeemzadeh, Rahnavard & Shah 2020: stacking more blocks
makes each more norm-preserving; transition blocks are not).

Which map. Block i maps its input x (one example: (*in_shape) = (C, H, W), or (T, d) for a
transformer) to its output, J_i = d out / d x = P_i (S_i + a_i R_i) (DESIGN.md), a
d_out x d_in matrix PER EXAMPLE at that example's input; the branch's is a_i R_i (Block.branch,
scale included). In eval mode (BatchNorm on running statistics, no dropout) the map of a batch
is block-diagonal over its examples, so the singular values of the batch's stacked map are the
union of the examples'; each example's spectrum is reported apart, at a few examples.
Every spectrum holds the min(d_in, d_out) singular values of the smaller side (a downsampling
block's J, 8192 x 16384 for a CIFAR ResNet's first transition, has 8192; its other 8192
directions in the input are a null space that says nothing about norm preservation).

How. Block Golub-Kahan-Lanczos bidiagonalisation of J (of J^T when d_out < d_in, so that it
starts on the smaller side) with blocks of k vectors and full reorthogonalisation of both bases
(kept in float64), on all the examples at once: each step applies J (a double-backward
product through the block's graph, which is built once) and J^T (a backward product) to k
vectors per example. Never the dense Jacobian, except where it is small: when
min(d_in, d_out) <= iters, the Jacobian of the smaller side is formed k columns at a time
(min(d_in, d_out) products, as many as a full bidiagonalisation) and its singular values are
exact. After m steps, J V = U B with B block upper bidiagonal (mk x mk): B's singular values lie
between the smallest and the largest of J's (`top` never exceeds and `bottom` never undercuts
the truth), the extreme ones converge first, and a singular value sigma of B with left
singular vector p has the residual ||S_m^T p_m|| (`*_residual`; p_m: p's last k entries, S_m:
the last coupling block): J has a singular value within it. Blocks of k vectors resolve a
singular value repeated up to k times (the zeros a ReLU after the sum makes, one per inactive
output unit, fill `bottom` with k zeros); one repeated more often is reported at most k times.
A rank-deficient step (an invariant subspace, e.g. J = I) goes on from random vectors
orthogonal to the bases.

isometry_gap[i] = max over the examples and over ALL singular values of block i's Jacobian of
|sigma - 1| = max(sigma_max - 1, 1 - sigma_min) (every singular value lies between the two
extremes), from the computed extremes: exact when they converged (`converged`).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import checks
from ..data.batches import Data
from ..errors import PathensError
from ..data.inputs import batch_len
from ..models.modes import eval_mode
from ..results import Result, fmt
from ..view.residual_view import wrap
from .registry import Measurement, check_options, register


@dataclass(frozen=True)
class JacobianSpectra(Result):
    """Extreme singular values of block Jacobians (module docstring), at E examples.

    blocks, block_names, downsample, residual: per measured block (B of them).
    in_dim, out_dim: (B,) the per-example sizes d_in, d_out.
    top:         (B, E, k) the k largest singular values of block i's Jacobian at example e,
                 descending; bottom: (B, E, k) the k smallest, ascending (NaN where fewer than
                 k were computed).
    top_residual, bottom_residual: (B, E, k) each value's residual bound.
    iterations:  (B,) bidiagonalisation steps run (the same for every example).
    converged:   (B,) every top and bottom residual <= tol x sigma_max, at every example.
    isometry_gap: (B,) max |sigma - 1| over the examples and all singular values.
    branch_*:    the same for the branch a_i * R_i (NaN for a plain layer, which has none).
    config:      k, iters, tol, seed, examples, dtype, device, what each map is.
    """

    blocks: tuple
    block_names: tuple
    downsample: tuple
    residual: tuple
    in_dim: np.ndarray
    out_dim: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    top_residual: np.ndarray
    bottom_residual: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    isometry_gap: np.ndarray
    branch_top: np.ndarray
    branch_bottom: np.ndarray
    branch_top_residual: np.ndarray
    branch_bottom_residual: np.ndarray
    branch_iterations: np.ndarray
    branch_converged: np.ndarray
    config: dict = field(default_factory=dict)

    @property
    def sigma_max(self) -> np.ndarray:
        """(B,) the largest singular value over the examples."""
        return np.nanmax(self.top[:, :, 0], axis=1)

    @property
    def sigma_min(self) -> np.ndarray:
        """(B,) the smallest singular value over the examples."""
        return np.nanmin(self.bottom[:, :, 0], axis=1)

    def table(self) -> list[dict]:
        smax, smin = self.sigma_max, self.sigma_min
        bmax = _nan_reduce(np.nanmax, self.branch_top[:, :, 0])
        bmin = _nan_reduce(np.nanmin, self.branch_bottom[:, :, 0])
        return [{"block": int(b), "name": nm, "downsample": bool(d), "residual": bool(r),
                 "in_dim": int(di), "out_dim": int(do), "sigma_max": smax[j],
                 "sigma_min": smin[j], "isometry_gap": self.isometry_gap[j],
                 "iterations": int(self.iterations[j]), "converged": bool(self.converged[j]),
                 "branch_sigma_max": bmax[j], "branch_sigma_min": bmin[j],
                 "branch_converged": bool(self.branch_converged[j])}
                for j, (b, nm, d, r, di, do) in enumerate(zip(
                    self.blocks, self.block_names, self.downsample, self.residual, self.in_dim,
                    self.out_dim))]

    @property
    def unit(self) -> str:
        return "block" if any(self.residual) else "layer"

    def medians(self, values) -> tuple:
        """(median over the measured blocks that keep the shape, median over the transitions)
        of per-block `values`, each over its finite entries (NaN where none)."""
        v, down = np.asarray(values, float), np.asarray(self.downsample, bool)
        out = []
        for keep in (~down, down):
            w = v[keep & np.isfinite(v)]
            out.append(float(np.median(w)) if len(w) else math.nan)
        return tuple(out)

    # ---- the report's text (the Result protocol) -------------------------------------------

    FIGURE = "largest and smallest singular values of each block's Jacobian and its branch's"

    def notes(self) -> list[str]:
        return [NOTE]

    def headline(self) -> dict:
        smax, _ = self.medians(self.sigma_max)
        smin, _ = self.medians(self.sigma_min)
        return {"block Jacobian: median sigma_max / sigma_min (blocks keeping the shape)":
                f"{fmt(smax)} / {fmt(smin)}"}

    def _settings(self) -> str:
        c = self.config
        return (f"at the first {c.get('examples')} example{'s' * (c.get('examples') != 1)}, "
                f"top and bottom k = {c.get('k')} per example, at most {c.get('iters')} "
                f"products per map, tolerance {c.get('tol')}")

    def summary_lines(self) -> list[str]:
        u, B = self.unit, len(self.blocks)
        down = int(np.sum(self.downsample))
        smax, smax_t = self.medians(self.sigma_max)
        smin, smin_t = self.medians(self.sigma_min)
        gap, gap_t = self.medians(self.isometry_gap)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = self.top_residual[:, :, 0] / self.top[:, :, 0]
        rel = float(np.max(rel[np.isfinite(rel)])) if np.isfinite(rel).any() else math.nan
        text = (f"- Block Jacobian spectra ({self._settings()}; {int(np.sum(self.converged))} of "
                f"{B} {u}s converged to the tolerance; sigma_max within {fmt(rel)} of a true "
                f"singular value, relatively): median sigma_max {fmt(smax)}, sigma_min "
                f"{fmt(smin)}, "
                f"isometry gap {fmt(gap)} over the {B - down} {u}s that keep the shape")
        if down:
            text += (f"; at the {down} transitions sigma_max {fmt(smax_t)}, sigma_min "
                     f"{fmt(smin_t)}, gap {fmt(gap_t)}")
        if any(self.residual):
            bmax = _nan_reduce(np.nanmax, self.branch_top[:, :, 0])
            b, _ = self.medians(bmax)
            text += f"; the branch alone: median sigma_max {fmt(b)}"
        return [text + "."]

    def markdown(self, *, name: str, slug: str, figure=None) -> list[str]:
        u = self.unit
        plain = "" if u == "block" else " (plain network: each layer's Jacobian, no branch)"
        lines = ["", f"### {name}: block Jacobian spectra{plain}", "",
                 f"Singular values of d {u}(x) / d x per example, {self._settings()}; sigma_max "
                 f"and sigma_min over those examples. Not converged: sigma_max is a lower "
                 f"bound, sigma_min an upper bound. Every value in "
                 f"`{slug}_jacobian_spectra.csv`.", "",
                 f"| {u} | name | transition | d_in -> d_out | sigma_max | sigma_min | isometry "
                 f"gap | branch sigma_max | branch sigma_min | converged |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.table():
            conv = ("yes" if r["converged"] else "no") + (
                "" if not r["residual"] else " / " + ("yes" if r["branch_converged"] else "no"))
            lines.append("| " + " | ".join([
                str(r["block"]), f"`{r['name']}`", "yes" if r["downsample"] else "",
                f"{r['in_dim']} -> {r['out_dim']}", fmt(r["sigma_max"]), fmt(r["sigma_min"]),
                fmt(r["isometry_gap"]), fmt(r["branch_sigma_max"]) if r["residual"] else "-",
                fmt(r["branch_sigma_min"]) if r["residual"] else "-", conv]) + " |")
        lines.append("")
        if figure:
            lines += [f"![{name}: {self.FIGURE}]({figure})", ""]
        return lines

    def __repr__(self) -> str:
        j = int(np.nanargmax(self.isometry_gap))
        return (f"JacobianSpectra({len(self.blocks)} blocks at {self.top.shape[1]} examples; "
                f"largest isometry gap {self.isometry_gap[j]:.3g} at block {self.blocks[j]} "
                f"({self.block_names[j]}))")


def _nan_reduce(fn, a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[0], math.nan)
    for j, row in enumerate(a):
        if np.isfinite(row).any():
            out[j] = fn(row)
    return out


def block_jacobian_spectra(view, x, *, k: int = 5, blocks=None, iters: int = 100,
                           tol: float = 1e-6, seed: int = 0) -> JacobianSpectra:
    """The k largest and k smallest singular values of every block's (and every branch's)
    per-example input-output Jacobian, at each example of `x` (module docstring).

    view:   a ResidualView or a model (wrapped).
    x:      the model's inputs (a tensor or a dict of tensors), an (inputs, targets) pair or
            a loader of either (joined into one batch): a few examples (each is measured
            apart; the cost grows with their number).
    k:      how many singular values at each end.
    blocks: indices or names of the blocks to measure (None: all).
    iters:  at most this many products with J (and as many with J^T) per map and example,
            rounded down to a multiple of k (at least k): iters // k block steps, each on all
            the examples at once. Where min(d_in, d_out) <= iters the map is formed densely
            instead (as many products) and its values are exact.
    tol:    stop early once every top-k and bottom-k value has a residual <= tol x sigma_max
            at every example.
    seed:   of the random starting vectors.
    """
    view = wrap(view)
    k = checks.integer("k", k, least=1)
    iters = checks.integer("iters", iters, least=1)
    seed = checks.seed(seed)
    checks.number("tol", tol, low=0, high=1, open_low=True, open_high=True, example="1e-6")
    x = Data(view, x, None, labelled=False).first(None)
    chosen = sorted(set(view.indices(range(view.num_blocks) if blocks is None else blocks,
                                     "blocks")))
    if not chosen:
        raise PathensError("blocks is empty: name at least one block (None: all of them)")
    E = batch_len(x)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    found = {}
    with eval_mode(view.model), _math_attention():
        with torch.no_grad():
            h, ctx = view.embed(x)
        for i in range(chosen[-1] + 1):
            b = view.blocks[i]
            if i in chosen:
                full = _spectrum(lambda z, b=b: b(z, ctx), h, k, iters, tol, gen)
                branch = _spectrum(lambda z, b=b: b.branch(z, ctx), h, k, iters, tol, gen) \
                    if b.residual else None
                found[i] = (full, branch)
            with torch.no_grad():
                h = b(h, ctx)
    return _result(view, chosen, found, E, k,
                   {"k": k, "iters": iters, "tol": tol, "seed": seed, "examples": E,
                    "map": "per example: d block(x) / d x at each example's input; branch: "
                           "d (a_i R_i(x)) / d x",
                    "method": "Golub-Kahan-Lanczos bidiagonalisation, full reorthogonalisation "
                              "(float64 bases), J v by double backward, J^T u by backward",
                    "spectrum": "the min(d_in, d_out) singular values of the smaller side",
                    "batchnorm": "eval (running statistics)", "dtype": str(view.param.dtype),
                    "device": str(view.param.device)},
                   time.perf_counter() - start)


def _result(view, chosen, found, E, k, config, seconds) -> JacobianSpectra:
    B = len(chosen)

    def stack(which: int, key: str, shape) -> np.ndarray:
        out = np.full((B, *shape), math.nan)
        for j, i in enumerate(chosen):
            s = found[i][which]
            if s is not None:
                out[j] = s[key]
        return out

    full = {key: stack(0, key, (E, k)) for key in ("top", "bottom", "top_res", "bottom_res")}
    part = {key: stack(1, key, (E, k)) for key in ("top", "bottom", "top_res", "bottom_res")}
    its = np.array([found[i][0]["iterations"] for i in chosen])
    b_its = np.array([0 if found[i][1] is None else found[i][1]["iterations"] for i in chosen])
    conv = np.array([found[i][0]["converged"] for i in chosen])
    b_conv = np.array([found[i][1] is not None and found[i][1]["converged"] for i in chosen])
    gap = np.maximum(np.abs(full["top"][:, :, 0] - 1), np.abs(full["bottom"][:, :, 0] - 1))
    blocks = [view.blocks[i] for i in chosen]
    return JacobianSpectra(
        blocks=tuple(chosen), block_names=tuple(b.name for b in blocks),
        downsample=tuple(b.downsample for b in blocks), residual=tuple(b.residual for b in blocks),
        in_dim=np.array([found[i][0]["in_dim"] for i in chosen]),
        out_dim=np.array([found[i][0]["out_dim"] for i in chosen]),
        top=full["top"], bottom=full["bottom"], top_residual=full["top_res"],
        bottom_residual=full["bottom_res"], iterations=its, converged=conv,
        isometry_gap=gap.max(axis=1), branch_top=part["top"], branch_bottom=part["bottom"],
        branch_top_residual=part["top_res"], branch_bottom_residual=part["bottom_res"],
        branch_iterations=b_its, branch_converged=b_conv,
        config=dict(config, seconds=round(seconds, 3)))


@contextlib.contextmanager
def _math_attention():
    """scaled_dot_product_attention on its math kernel: the fused CPU and GPU kernels have no
    double backward, which J v needs."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: nothing to choose
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


class _Linear:
    """J and J^T of f at x (E, *in_shape), per example (f acts on each example apart), as maps
    between float64 blocks of p vectors per example, stored as rows: (E, p, d_in) <->
    (E, p, d_out), one product per vector: J^T u by a backward product through f's graph,
    J v by a backward product through the graph of u -> J^T u (built once, create_graph)."""

    def __init__(self, f, x: torch.Tensor):
        self.dtype, self.E = x.dtype, x.shape[0]
        with torch.enable_grad():
            self.x = x.detach().requires_grad_(True)
            self.out = f(self.x)
            if self.out.shape[0] != self.E:
                raise PathensError(f"a block maps {self.E} examples to {self.out.shape[0]}: its "
                                   f"Jacobian is not per example")
            self.u0 = torch.zeros_like(self.out, requires_grad=True)
            g = torch.autograd.grad(self.out, self.x, self.u0, create_graph=True,
                                    allow_unused=True)[0]
        self.g = torch.zeros_like(self.x) if g is None else g
        self.in_shape, self.out_shape = tuple(self.x.shape), tuple(self.out.shape)
        self.d_in, self.d_out = math.prod(self.in_shape[1:]), math.prod(self.out_shape[1:])

    def _apply(self, outputs, inputs, V, shape, d) -> torch.Tensor:
        rows = []
        for c in range(V.shape[1]):
            got = None
            if outputs.requires_grad:
                v = V[:, c].reshape(shape).to(self.dtype)
                got = torch.autograd.grad(outputs, inputs, v, retain_graph=True,
                                          allow_unused=True)[0]
            # None: the product does not depend on v, the map is 0
            rows.append(torch.zeros(self.E, d, dtype=torch.float64, device=V.device)
                        if got is None else got.reshape(self.E, d).double())
        return torch.stack(rows, dim=1)

    def J(self, V: torch.Tensor) -> torch.Tensor:
        return self._apply(self.g, self.u0, V, self.in_shape, self.d_out)

    def JT(self, U: torch.Tensor) -> torch.Tensor:
        return self._apply(self.out, self.x, U, self.out_shape, self.d_in)


def _spectrum(f, x: torch.Tensor, k: int, iters: int, tol: float, gen) -> dict:
    """Top and bottom k singular values (with residuals) of f's per-example Jacobians at x."""
    lin = _Linear(f, x)
    d_in, d_out = lin.d_in, lin.d_out
    a = min(d_in, d_out)
    p = min(k, a)
    # start on the smaller side: A maps R^a -> R^b with a <= b
    A, AT = (lin.J, lin.JT) if d_in <= d_out else (lin.JT, lin.J)
    if a <= iters:
        out = dense_svd(A, x.shape[0], a, p, k=k, device=x.device)
    else:
        out = block_bidiagonal_svd(A, AT, x.shape[0], a, max(d_in, d_out), p, k=k, iters=iters,
                                   tol=tol, gen=gen, device=x.device)
    return dict(out, in_dim=d_in, out_dim=d_out)


def dense_svd(A, E: int, a: int, p: int, *, k: int, device=None) -> dict:
    """Exact singular values of E maps A: R^a -> R^b (blocks of p row vectors, (E, p, a) ->
    (E, p, b)), formed p basis vectors at a time: what block_bidiagonal_svd returns, residuals
    0."""
    eye = torch.eye(a, dtype=torch.float64, device=device)
    rows = []
    for start in range(0, a, p):
        block = torch.zeros(p, a, dtype=torch.float64, device=device)
        block[:min(p, a - start)] = eye[start:start + p]
        rows.append(A(block.expand(E, p, a))[:, :min(p, a - start)])
    S = torch.linalg.svdvals(torch.cat(rows, dim=1)).cpu().numpy()  # (E, a) descending
    return dict(_ends(S, np.zeros_like(S), k), iterations=a, converged=True)


def block_bidiagonal_svd(A, AT, E: int, a: int, b: int, p: int, *, k: int, iters: int,
                         tol: float, gen, device=None) -> dict:
    """Block Golub-Kahan-Lanczos on E independent maps M at once: A takes (E, p, a) blocks of
    p row vectors to (E, p, b) (row e: map e), AT back; a <= b. At most iters // p steps
    (iters products per example), stopping once every top-k and bottom-k residual is
    <= tol x sigma_max.

    In columns: M V_j = U_{j-1} S_{j-1} + U_j A_j, M^T U_j = V_j A_j^T + V_{j+1} S_j^T (A_j,
    S_j^T upper triangular p x p), so M [V_1 .. V_m] = [U_1 .. U_m] B, B block upper
    bidiagonal. The bases are kept as rows of (E, vectors, d) tensors, filled as they grow.
    Returns top, bottom, top_res, bottom_res ((E, k) numpy, NaN where fewer than k values),
    iterations (products per example) and converged.
    """
    steps = max(1, min(iters, a) // p)
    f64 = torch.float64
    V = torch.zeros(E, (steps + 1) * p, a, dtype=f64, device=device)
    U = torch.zeros(E, steps * p, b, dtype=f64, device=device)
    scale = torch.zeros(E, dtype=f64, device=device)
    start = torch.randn(E, p, a, generator=gen, dtype=f64).to(device)
    V[:, :p], _ = _block_gs(start, V[:, :0], scale, gen)
    U[:, :p], A0 = _block_gs(A(V[:, :p]), U[:, :0], scale, gen)
    As, Ss = [A0], []
    scale = _grow(scale, A0)
    ends = None
    for j in range(steps):
        last = j + 1 == steps
        here, after = slice(j * p, (j + 1) * p), slice((j + 1) * p, (j + 2) * p)
        W = AT(U[:, here]) - As[j] @ V[:, here]  # rows: (V_j A_j^T)^T = A_j V_j^T
        V[:, after], R = _block_gs(W, V[:, :(j + 1) * p], scale, gen, fresh=not last)
        scale = _grow(scale, R)  # W = V_{j+1} R in columns: R = S_j^T
        Ss.append(R.transpose(1, 2))
        m = j + 1
        if last or (m * p >= 2 * k and (m * p <= 60 or m % max(1, 10 // p) == 0)):
            ends = _ritz(As, Ss, R, k)
            if last or ends["converged"](tol):
                break
        P = A(V[:, after]) - Ss[j].transpose(1, 2) @ U[:, here]  # rows of M V - U_j S_j
        U[:, after], A_next = _block_gs(P, U[:, :(j + 1) * p], scale, gen)
        scale = _grow(scale, A_next)
        As.append(A_next)
    return {"top": ends["top"], "bottom": ends["bottom"], "top_res": ends["top_res"],
            "bottom_res": ends["bottom_res"], "iterations": m * p,
            "converged": ends["converged"](tol)}


def _grow(scale: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """The running largest entry of the recurrence's blocks, per example: the yardstick of a
    vanishing vector."""
    return torch.maximum(scale, R.abs().amax(dim=(1, 2)))


def _block_gs(W: torch.Tensor, Q: torch.Tensor, scale: torch.Tensor, gen, fresh: bool = True):
    """(new rows, R): W's p rows (E, p, d) orthonormalised against the rows of Q (E, j, d)
    (their components there dropped: full reorthogonalisation, the block projection done
    twice), then among themselves by Gram-Schmidt (twice), so that in columns W = Q_new R, R
    (E, p, p) upper triangular. A vector that vanishes (W rank-deficient: an invariant
    subspace) gets R's diagonal 0 and a random unit vector orthogonal to everything before
    (fresh=False: a zero vector, for a last step whose new rows are not used)."""
    E, p, d = W.shape

    def project(w, rows):  # w (E, r, d) minus its components along rows (E, j, d), twice
        coeff = 0.0
        for _ in range(2):
            if rows.shape[1]:
                c = w @ rows.transpose(1, 2)  # (E, r, j)
                w = w - c @ rows
                coeff = coeff + c
        return w, coeff

    W, _ = project(W, Q)
    R = torch.zeros(E, p, p, dtype=torch.float64, device=W.device)
    new = torch.zeros(E, p, d, dtype=torch.float64, device=W.device)
    for c in range(p):
        w, coeff = project(W[:, c:c + 1], new[:, :c])  # (E, 1, d)
        if c:
            R[:, :c, c] = coeff[:, 0]
        n = torch.linalg.vector_norm(w[:, 0], dim=1)
        q = w[:, 0] / n.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        dead = n <= 1e-12 * scale
        if dead.any():
            if fresh:
                z = torch.randn(E, 1, d, generator=gen, dtype=torch.float64).to(W.device)
                z, _ = project(project(z, Q)[0], new[:, :c])
                z = z[:, 0] / torch.linalg.vector_norm(z[:, 0], dim=1, keepdim=True)
            else:
                z = torch.zeros_like(q)
            q = torch.where(dead[:, None], z, q)
            n = torch.where(dead, torch.zeros_like(n), n)
        R[:, c, c] = n
        new[:, c] = q
    return new, R


def _ritz(As: list, Ss: list, R_last: torch.Tensor, k: int) -> dict:
    """Singular values of B (diagonal blocks As, superdiagonal blocks Ss[:-1]) with residuals
    ||R_last P_m|| (R_last = S_m^T, P_m the last p rows of each left singular vector)."""
    m, (E, p, _) = len(As), As[0].shape
    B = torch.zeros(E, m * p, m * p, dtype=torch.float64, device=As[0].device)
    for j in range(m):
        B[:, j * p:(j + 1) * p, j * p:(j + 1) * p] = As[j]
        if j + 1 < m:
            B[:, j * p:(j + 1) * p, (j + 1) * p:(j + 2) * p] = Ss[j]
    P, S, _ = torch.linalg.svd(B)
    res = torch.linalg.vector_norm(R_last @ P[:, -p:, :], dim=1)  # (E, m p)
    return _ends(S.cpu().numpy(), res.cpu().numpy(), k)


def _ends(S: np.ndarray, res: np.ndarray, k: int) -> dict:
    """top/bottom k of descending singular values S (E, m) and their residuals, NaN-padded to
    k, with converged(tol): every one of them within tol x the largest."""
    E, m = S.shape
    kk = min(k, m)
    top = np.full((E, k), math.nan)
    bottom, top_res, bottom_res = top.copy(), top.copy(), top.copy()
    top[:, :kk], top_res[:, :kk] = S[:, :kk], res[:, :kk]
    bottom[:, :kk], bottom_res[:, :kk] = S[:, ::-1][:, :kk], res[:, ::-1][:, :kk]

    def converged(tol: float) -> bool:
        bound = tol * S[:, :1]
        return bool((top_res[:, :kk] <= bound).all() and (bottom_res[:, :kk] <= bound).all())

    return {"top": top, "bottom": bottom, "top_res": top_res, "bottom_res": bottom_res,
            "converged": converged}


# Said once in a report that holds block Jacobian spectra.
NOTE = (
    "**Block Jacobian spectra.** The singular values of each block's input-output Jacobian "
    "J_i = P_i (S_i + a_i R_i) at a few examples (each example's own map, d out / d x at its "
    "input), the k largest and the k smallest, by Golub-Kahan-Lanczos bidiagonalisation on "
    "Jacobian-vector products (the dense Jacobian only where it is small enough to be formed "
    "exactly), and the same for the branch a_i R_i alone. Zaeemzadeh, Rahnavard & Shah (2020): "
    "with an identity shortcut and a small branch the singular values are near 1 (the block "
    "nearly preserves the norm of every direction, the more so as more blocks share the work), "
    "the transitions (downsampling blocks) being the exception; the branch's values say how far "
    "it moves the block from the identity. The isometry gap max(sigma_max - 1, 1 - sigma_min) is "
    "0 for an isometry; a ReLU after the sum (the original ResNet) zeroes the rows of the "
    "inactive outputs, so sigma_min = 0 and the gap is at least 1 there: read sigma_max and the "
    "branch for those blocks. Values that did not converge within the iterations are bounds "
    "(sigma_max from below, sigma_min from above). A plain network: each layer's own Jacobian.")

# the diagnostic's options (analyze(diagnose={"jacobians": {...}}), `pathens diagnose`): a few
# examples and few values, so that a report costs about as much as the other diagnostics
OPTIONS = dict(examples=2, k=3, iters=60, tol=1e-6)


def _options(given: dict) -> dict:
    o = check_options(given, OPTIONS, "the diagnostic 'jacobians'")
    for key in ("examples", "k", "iters"):
        checks.integer(key, o[key], least=1)
    checks.number("tol", o["tol"], low=0, high=1, open_low=True, open_high=True, example="1e-6")
    return o


def _run(view, data, settings: dict, results: dict) -> dict:
    """The diagnostic "jacobians": block (and branch) Jacobian spectra at the data's first
    `examples` examples."""
    o = settings.get("diagnose", {}).get("jacobians")
    if o is None:
        return {}
    x = Data(view, data, None, labelled=False).first(o["examples"], what="examples")
    settings["log"](f"[{settings['name']}] block Jacobian spectra at {batch_len(x)} examples "
                    f"(k = {o['k']})")
    return {"jacobian_spectra": block_jacobian_spectra(view, x, k=o["k"], iters=o["iters"],
                                                       tol=o["tol"], seed=settings["seed"])}


register(Measurement("jacobians", run=_run, yields=("jacobian_spectra",), residual=False,
                     diagnostic=True, options=_options))
