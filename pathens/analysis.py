"""The full analysis of one network on one labelled dataset: everything pathens measures.

    a = pathens.analyze(view, (x, y))     # path gradients (exact + sampled), lesions, variance
    pathens.report.write(out, [a])        # report.md, results.json, CSVs, figures

Lesion sweeps write their rows to `lesion_dir` as they finish, so an interrupted analysis
resumes where it stopped when run again with the same settings.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import lesion
from .batches import check_batch
from .depth import BranchVariance, branch_variance, effective_depth
from .gradients import PathGradients, path_gradients
from .lesion import LesionResult
from .view import wrap


@dataclass
class Analysis:
    """Every result of `analyze` for one network, labelled `name`."""

    name: str
    model: dict
    data: dict
    exact: PathGradients
    sampled: Optional[PathGradients]
    delete_each: LesionResult
    delete_random: LesionResult
    reorder: Optional[LesionResult]
    variance: BranchVariance
    depth: dict  # source -> EffectiveDepth
    config: dict = field(default_factory=dict)

    @property
    def intact_error(self) -> float:
        return self.delete_each.intact_error


def analyze(view, data, *, name: str = "model", model_info: Optional[dict] = None,
            data_info: Optional[dict] = None, gradient_examples: int = 128,
            samples_per_length: int = 20, ks=None, trials: int = 5, swaps=None, seed: int = 0,
            level: float = 0.9, margin: float = 0.02, lesion_dir: Optional[Path] = None,
            progress: bool = True, log=print) -> Analysis:
    """Run every analysis of pathens on `view` with the labelled examples `data = (x, y)`.

    gradient_examples: the first examples used for path gradients (exact and sampled).
    samples_per_length: Veit's sampled protocol (0 skips it).
    ks, trials: random deletions (default ks: 1, 2, 4, ... up to the deletable blocks).
    swaps: reorderings (default 1, 2, 4, ... up to the most disjoint swaps).
    level, margin: effective depth's interval mass and lesion margin.
    """
    view = wrap(view)
    x, y = check_batch(view, *data)
    start = time.perf_counter()
    gx, gy = x[:gradient_examples], y[:gradient_examples]
    log(f"[{name}] exact gradient by path length ({view.num_blocks} blocks, {len(gx)} examples)")
    exact = path_gradients(view, gx, gy, progress=progress)
    sampled = None
    if samples_per_length:
        log(f"[{name}] sampled protocol, {samples_per_length} paths per length")
        sampled = path_gradients(view, gx, gy, method="sampled",
                                 samples_per_length=samples_per_length, seed=seed,
                                 progress=progress)
    files = {}
    if lesion_dir is not None:
        Path(lesion_dir).mkdir(parents=True, exist_ok=True)
        files = {k: Path(lesion_dir) / f"{k}.csv" for k in ("delete_each", "delete_random", "reorder")}
    log(f"[{name}] lesions on {len(y)} examples")
    each = lesion.delete_each(view, (x, y), out=files.get("delete_each"), progress=progress)
    ks = ks or doubling(len(lesion.random_pool(view)))
    rand = lesion.delete_random(view, (x, y), ks=ks, trials=trials, seed=seed,
                                out=files.get("delete_random"), progress=progress)
    swaps = swaps or doubling(lesion.most_swaps(view))
    swap = None  # no two blocks of the same shape: nothing to reorder
    if swaps:
        swap = lesion.reorder(view, (x, y), swaps=swaps, trials=trials, seed=seed,
                              out=files.get("reorder"), progress=progress)
    log(f"[{name}] branch variance")
    variance = branch_variance(view, x)
    depth = {"gradient (exact)": effective_depth(exact, level=level),
             "gradient energy (exact)": effective_depth(exact, level=level, quantity="energy"),
             "lesion": effective_depth(rand, margin=margin),
             "variance": effective_depth(variance, level=level)}
    if sampled is not None:
        depth["gradient (sampled)"] = effective_depth(sampled, level=level)
    config = dict(gradient_examples=len(gx), samples_per_length=samples_per_length, ks=list(ks),
                  trials=trials, swaps=list(swaps), seed=seed, level=level, margin=margin,
                  examples=len(y), dtype=str(view.param.dtype), device=str(view.param.device),
                  seconds=round(time.perf_counter() - start, 1))
    return Analysis(name, model_info or {"class": type(view.model).__name__},
                    data_info or {}, exact, sampled, each, rand, swap, variance, depth, config)


def doubling(top: int) -> list:
    """1, 2, 4, ... up to top, with top itself (at least [1] when top >= 1)."""
    out, k = [], 1
    while k < top:
        out.append(k)
        k *= 2
    return out + [top] if top >= 1 else []
