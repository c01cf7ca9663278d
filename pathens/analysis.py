"""The full analysis of one network on one labelled dataset: everything pathens measures.

    a = pathens.analyze(view, (x, y), name="ResNet-56")    # pathens.analysis.analyze
    pathens.report.write("out", [a])                       # report.md, results.json, CSVs, PNGs
    pathens.report.write("out", [a_resnet, a_plain])       # several networks side by side

`pathens analyze` and `pathens compare` run exactly these two functions, so a script passing
the same settings gets the same numbers and the same report as the command line.

A residual network gets everything: the exact and the sampled gradient by path length, lesions
(each block alone, k random blocks, reorderings), branch variance, and effective depth from
each. A plain network (`wrap(model, allow_plain=True)`, e.g. `cifar_resnet(20, skip=False)`)
gets the lesions only: it has a single path, so there is nothing to split by length and no
shortcut to compare a branch with (Veit et al.'s residual-vs-plain contrast is a report of the
two).

Lesion sweeps write their rows to `lesion_dir` as they finish, so an interrupted analysis
resumes where it stopped when run again with the same settings.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import lesion
from .batches import check_batch
from .depth import BranchVariance, branch_variance, effective_depth
from .errors import PathensError
from .gradients import PathGradients, path_gradients
from .lesion import LesionResult
from .view import wrap

__all__ = ["Analysis", "analyze", "doubling"]


@dataclass
class Analysis:
    """Every result of `analyze` for one network, labelled `name`.

    name:          the label used in the report (its section, the `<slug>_*` file names).
    model, data:   what the caller said about the network and the examples (recorded as is).
    residual:      False for a plain network: then exact, sampled and variance are None.
    exact:         the exact gradient by path length (PathGradients, method "exact").
    sampled:       Veit et al.'s sampled protocol (None when samples_per_length=0).
    delete_each:   every deletable block deleted alone (LesionResult).
    delete_random: k random blocks deleted together, `trials` draws per k (None when no block
                   can be drawn: every one changes shape or is a downsampling block).
    reorder:       random swaps of same-shape blocks (None when no two blocks share a shape).
    variance:      per-block branch-to-shortcut variance ratios (BranchVariance).
    depth:         label -> EffectiveDepth: "gradient (exact)", "gradient (sampled)",
                   "gradient energy (exact)", "variance", "lesion" (those that apply).
    config:        the settings behind the numbers (examples, ks, trials, seed, dtype, ...).
    """

    name: str
    model: dict
    data: dict
    exact: Optional[PathGradients]
    sampled: Optional[PathGradients]
    delete_each: LesionResult
    delete_random: Optional[LesionResult]
    reorder: Optional[LesionResult]
    variance: Optional[BranchVariance]
    depth: dict  # label -> EffectiveDepth
    config: dict = field(default_factory=dict)
    residual: bool = True

    @property
    def intact_error(self) -> float:
        return self.delete_each.intact_error

    @property
    def num_blocks(self) -> int:
        return len(self.delete_each.block_names)


def analyze(view, data, *, name: str = "model", model_info: Optional[dict] = None,
            data_info: Optional[dict] = None, gradient_examples: int = 128,
            samples_per_length: int = 20, ks=None, trials: int = 5, swaps=None, seed: int = 0,
            level: float = 0.9, margin: float = 0.02, lesion_dir: Optional[Path] = None,
            progress: bool = True, log=print) -> Analysis:
    """Run every analysis of pathens that applies to `view`, on the labelled examples `data`.

    view:               a ResidualView, or a model `pathens.wrap` accepts as it is (wrap a
                        plain network yourself with allow_plain=True).
    data:               (inputs, targets): inputs (N, *view.input_shape), targets (N,) class
                        indices; moved to the view's device and dtype. All N examples serve
                        the lesions and branch variance, the first `gradient_examples` the path
                        gradients. A residual network needs N >= 2 (a variance over examples).
    name:               the network's label in the report and its file names.
    model_info, data_info: dicts recorded as they are in the report and results.json (e.g.
                        architecture, checkpoint; dataset, split); default
                        {"class": <the model's class>} and {}.
    gradient_examples:  how many of the first examples the path gradients use (exact and
                        sampled): the gradient of their mean cross-entropy.
    samples_per_length: Veit's sampled protocol, paths drawn per length (0 skips it).
    ks:                 blocks deleted together in the random deletions (default 1, 2, 4, ...
                        up to the pool: the deletable blocks that are not downsampling).
    trials:             random draws per k, and per number of swaps.
    swaps:              numbers of disjoint same-shape swaps in the reorderings (default 1, 2,
                        4, ... up to the most possible; none when no two blocks share a shape).
    seed:               seeds the sampled paths, the random deletions and the swaps.
    level:              the mass of the effective-depth intervals over path lengths.
    margin:             the error increase still counted as surviving a lesion (0.02 = 2
                        points): the lesion-based effective depth.
    lesion_dir:         a folder for the sweeps' rows (delete_each.csv, delete_random.csv,
                        reorder.csv), appended as each condition finishes; re-running with the
                        same settings resumes. None: in memory only.
    progress, log:      tqdm bars; a function called with one line per step (print;
                        `lambda line: None` for silence).

    Returns an Analysis (its docstring lists the fields). Every argument is checked before any
    computation starts, so a bad one costs a one-line PathensError, not the lost work.
    """
    view = wrap(view)
    x, y = check_batch(view, *data)
    residual = view.residual
    pool, most = lesion.random_pool(view), lesion.most_swaps(view)
    _check(residual, len(y), name, gradient_examples, samples_per_length, trials, seed, level,
           margin)
    ks = doubling(len(pool)) if ks is None else _counts(ks, "ks", len(pool),
                                                        "blocks random deletions can draw from")
    swaps = doubling(most) if swaps is None else _counts(swaps, "swaps", most,
                                                         "disjoint swaps of same-shape blocks")
    files = _lesion_files(lesion_dir)
    start = time.perf_counter()
    # Order: what can still refuse the input first (branch variance: a constant shortcut; each
    # sweep: a lesion_dir file from other settings), and the sweeps, which keep their rows on
    # disk, before the path gradients, which are lost if anything after them fails.
    variance = exact = sampled = None
    if residual:
        log(f"[{name}] branch variance")
        variance = branch_variance(view, x)
    else:
        log(f"[{name}] plain network ({view.num_blocks} layers): one path, lesions only")
    log(f"[{name}] lesions on {len(y)} examples")
    each = lesion.delete_each(view, (x, y), out=files.get("delete_each"), progress=progress)
    rand = swap = None  # None: nothing to draw from / no two blocks of the same shape
    if ks:
        rand = lesion.delete_random(view, (x, y), ks=ks, trials=trials, seed=seed,
                                    out=files.get("delete_random"), progress=progress)
    if swaps:
        swap = lesion.reorder(view, (x, y), swaps=swaps, trials=trials, seed=seed,
                              out=files.get("reorder"), progress=progress)
    if residual:
        gx, gy = x[:gradient_examples], y[:gradient_examples]
        log(f"[{name}] exact gradient by path length ({view.num_blocks} blocks, {len(gx)} "
            f"examples)")
        exact = path_gradients(view, gx, gy, progress=progress)
        if samples_per_length:
            log(f"[{name}] sampled protocol, {samples_per_length} paths per length")
            sampled = path_gradients(view, gx, gy, method="sampled",
                                     samples_per_length=samples_per_length, seed=seed,
                                     progress=progress)
    depth = {}
    if residual:
        depth["gradient (exact)"] = effective_depth(exact, level=level)
        if sampled is not None:  # beside the exact one: the report explains why they differ
            depth["gradient (sampled)"] = effective_depth(sampled, level=level)
        depth["gradient energy (exact)"] = effective_depth(exact, level=level, quantity="energy")
        depth["variance"] = effective_depth(variance, level=level)
    if rand is not None:
        depth["lesion"] = effective_depth(rand, margin=margin, single=each)
    config = dict(residual=residual, examples=len(y), ks=list(ks), trials=trials,
                  swaps=list(swaps), seed=seed, level=level, margin=margin,
                  dtype=str(view.param.dtype), device=str(view.param.device))
    if residual:
        config.update(gradient_examples=min(gradient_examples, len(y)),
                      samples_per_length=samples_per_length)
    config["seconds"] = round(time.perf_counter() - start, 1)
    return Analysis(name, model_info or {"class": type(view.model).__name__}, data_info or {},
                    exact, sampled, each, rand, swap, variance, depth, config, residual)


def doubling(top: int) -> list:
    """1, 2, 4, ... up to top, with top itself (at least [1] when top >= 1)."""
    out, k = [], 1
    while k < top:
        out.append(k)
        k *= 2
    return out + [top] if top >= 1 else []


# ---- checks, all before any work -------------------------------------------------------------

def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check(residual, examples, name, gradient_examples, samples_per_length, trials, seed, level,
           margin) -> None:
    if not isinstance(name, str) or not name.strip():
        raise PathensError(f"name must be a non-empty string, got {name!r}")
    if residual and examples < 2:
        raise PathensError(f"analyze needs at least 2 examples for a residual network (branch "
                           f"variance is a variance over examples), got {examples}")
    if not _integer(gradient_examples) or gradient_examples < 1:
        raise PathensError(f"gradient_examples must be a positive integer, got "
                           f"{gradient_examples!r}")
    if not _integer(samples_per_length) or samples_per_length < 0:
        raise PathensError(f"samples_per_length must be a non-negative integer (0 skips the "
                           f"sampled protocol), got {samples_per_length!r}")
    if not _integer(trials) or trials < 1:
        raise PathensError(f"trials must be a positive integer, got {trials!r}")
    if not _integer(seed) or not 0 <= seed < 2 ** 63:
        raise PathensError(f"seed must be an integer in 0..2^63-1, got {seed!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level <= 1:
        raise PathensError(f"level must be a number in (0, 1] (the interval's mass), got "
                           f"{level!r}")
    if (isinstance(margin, bool) or not isinstance(margin, (int, float))
            or not 0 <= margin <= 1):
        raise PathensError(f"margin must be an error increase in [0, 1] (0.02 = 2 points), got "
                           f"{margin!r}")


def _counts(values, what: str, top: int, of: str) -> list:
    """ks / swaps: distinct integers in 1..top. A repeated k would re-draw the same seeded
    trials and count them twice, narrowing its interval for nothing."""
    values = list(values)
    if not values:
        raise PathensError(f"{what} is empty: give at least one count, or leave it out")
    for v in values:
        if not _integer(v) or v < 1:
            raise PathensError(f"{what} must be positive integers, got {v!r}")
        if v > top:
            raise PathensError(f"{what}: {v} is more than the {top} {of}")
    repeated = sorted({int(v) for v in values if values.count(v) > 1})
    if repeated:
        raise PathensError(f"{what} repeats {', '.join(map(str, repeated))}: each count's trials "
                           f"are drawn from the same seeds, so a repeat would count them twice")
    return [int(v) for v in values]


def _lesion_files(lesion_dir) -> dict:
    if lesion_dir is None:
        return {}
    folder = Path(lesion_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathensError(f"cannot create lesion_dir {folder}: {err.strerror or err}") from None
    return {k: folder / f"{k}.csv" for k in ("delete_each", "delete_random", "reorder")}


