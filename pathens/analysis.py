"""The full analysis of one network on one dataset: everything pathens measures.

    a = pathens.analyze(view, (x, y), name="ResNet-56")    # pathens.analysis.analyze
    a = pathens.analyze(gpt_view, (ids, ids), name="GPT")  # a language model: next-token loss
    a = pathens.analyze(view, loader, unit="layer")        # streamed; whole transformer layers
    pathens.report.write("out", [a])                       # report.md, results.json, CSVs, PNGs
    pathens.report.write("out", [a_resnet, a_plain])       # several networks side by side

`pathens analyze` and `pathens compare` run exactly these two functions, so a script passing
the same settings gets the same numbers and the same report as the command line.

A residual network gets everything: the exact and the sampled gradient by path length, lesions
(each block alone, k random blocks, reorderings), branch variance, effective depth from each,
and ShortGPT's Block Influence of every block (or layer) beside the cost of deleting it
alone, with their rank correlation (influence_cost.py). A plain network (`wrap(model,
allow_plain=True)`, e.g. `cifar_resnet(20, skip=False)`) gets the lesions only: it has a single
path, so there is nothing to split by length and no shortcut to compare a branch with (Veit et
al.'s residual-vs-plain contrast is a report of the two).

Lesion sweeps write their rows to `lesion_dir` as they finish, so an interrupted analysis
resumes where it stopped when run again with the same settings.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import checks
from .measure import lesion
from .data.batches import Data
from .measure.depth import BranchVariance, branch_variance, effective_depth
from .errors import PathensError
from .measure.path_gradients import PathGradients, path_gradients
from .measure.importance import BlockInfluence
from .measure.influence_cost import InfluenceVsDeletion
from .measure.registry import MEASUREMENTS, diagnostics
from .data.inputs import batch_len
from .measure.lesion import LesionResult
from .view.residual_view import wrap

__all__ = ["Analysis", "analyze", "doubling", "lesion_counts"]


@dataclass
class Analysis:
    """Every result of `analyze` for one network, labelled `name`.

    name:          the label used in the report (its section, the `<slug>_*` file names).
    model, data:   what the caller said about the network and the examples (recorded as is).
    residual:      False for a plain network: then exact, sampled, variance and influence are
                   None.
    exact:         the exact gradient by path length (PathGradients, method "exact").
    sampled:       Veit et al.'s sampled protocol (None when samples_per_length=0).
    delete_each:   every deletable block (or layer, unit="layer") deleted alone (LesionResult).
    delete_random: k random blocks deleted together, `trials` draws per k (None when no block
                   can be drawn: every one changes shape or is a downsampling block).
    reorder:       random swaps of same-shape blocks (None when no two blocks share a shape).
    variance:      per-block branch-to-shortcut variance ratios (BranchVariance).
    depth:         label -> EffectiveDepth: "gradient (exact)", "gradient (sampled)",
                   "gradient energy (exact)", "variance", "lesion" (those that apply).
    config:        the settings behind the numbers (examples, loss, unit, ks, trials, seed,
                   dtype, ...).
    results:       the registered measurements' results (pathens/measure/registry.py), by the
                   names they yield, in registration order: "influence" (ShortGPT's Block
                   Influence per unit, BlockInfluence) and "influence_vs_deletion" (beside each
                   unit's single-deletion cost, with their Spearman correlation), when run;
                   with diagnose=, the diagnostics' ("signal_propagation", "jacobian_spectra",
                   "singularities").
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
    results: dict = field(default_factory=dict)

    @property
    def influence(self) -> Optional[BlockInfluence]:
        return self.results.get("influence")

    @property
    def influence_vs_deletion(self) -> Optional[InfluenceVsDeletion]:
        return self.results.get("influence_vs_deletion")

    @property
    def intact_error(self) -> float:
        """The intact network's error (a language model: its top-1 next-token error)."""
        return self.delete_each.intact_error

    @property
    def intact_loss(self) -> float:
        """The intact network's mean loss (a language model: per next token)."""
        return self.delete_each.intact_loss

    @property
    def tokens(self) -> bool:
        """A language model's analysis: the lesions count tokens, perplexity applies."""
        return self.delete_each.tokens

    @property
    def num_blocks(self) -> int:
        return len(self.delete_each.block_names)

    def tables(self) -> dict:
        """Every table of the analysis, keyed as the report names its CSV files
        (`<slug>_<key>.csv`): "<measurement>" or "<measurement>_<suffix>": gradients_exact,
        gradients_sampled, delete_each, delete_random (+ _summary), reorder (+ _summary),
        branch_variance, block_influence (Block Influence beside the single-deletion cost),
        effective_depth (one row per measure), those that apply."""
        return {key: rows for key, (rows, _) in self._tables().items()}

    def frames(self) -> dict:
        """tables() as pandas DataFrames (the cells of the CSV files: results.data_frame), each
        with attrs analysis (the name), table (the key) and config (the settings of the result
        behind it; the effective depth's: the analysis's). Needs pandas (pathens[pandas])."""
        from .results import data_frame, plain
        return {key: data_frame(rows, analysis=self.name, table=key, config=plain(config))
                for key, (rows, config) in self._tables().items()}

    # Notebooks (Jupyter calls these): formats are the report layer's, imported only when
    # asked, so that an analysis needs neither the report nor matplotlib until then.
    def _repr_html_(self) -> str:
        from .report.notebook import analysis_html
        return analysis_html(self)

    def _repr_markdown_(self) -> str:
        from .report.notebook import analysis_markdown
        return analysis_markdown(self)

    def _tables(self) -> dict:
        """key -> (rows, the config behind them)."""
        results = dict(gradients_exact=self.exact, gradients_sampled=self.sampled,
                       delete_each=self.delete_each, delete_random=self.delete_random,
                       reorder=self.reorder, branch_variance=self.variance, **self.results)
        out = {suffix or key: (rows, res.config)
               for key, res in results.items() if res is not None
               for suffix, rows in res.tables().items()}
        if self.depth:
            out["effective_depth"] = ([dict(measure=k, **d.table()[0])
                                       for k, d in self.depth.items()], self.config)
        return out


def analyze(view, data, *, name: str = "model", model_info: Optional[dict] = None,
            data_info: Optional[dict] = None, loss=None, unit: str = "block",
            batch_size: int = 256, gradient_examples: int = 128, samples_per_length: int = 20,
            ks=None, trials: int = 5, swaps=None, seed: int = 0, level: float = 0.9,
            margin: float = 0.02, influence: bool = True, lesion_dir: Optional[Path] = None,
            diagnose=False, progress: bool = True, log=print) -> Analysis:
    """Run every analysis of pathens that applies to `view`, on the labelled examples `data`.

    view:               a ResidualView, or a model `pathens.wrap` accepts as it is (wrap a
                        plain network yourself with allow_plain=True).
    data:               (inputs, targets): inputs (N, *view.input_shape) images, (N, T) token
                        ids or a dict of tensors; targets what the loss needs ((N,) class
                        indices; a language model: the token ids themselves); moved to the
                        view's device and dtype. Or a DataLoader (any re-iterable) of such
                        (inputs, targets) batches, streamed: the lesions, branch variance and
                        Block Influence take it as it is, the path gradients take its first
                        `gradient_examples` examples, collected from its first batches. A
                        residual network needs at least 2 examples (a variance over examples).
    name:               the network's label in the report and its file names.
    model_info, data_info: dicts recorded as they are in the report and results.json (e.g.
                        architecture, checkpoint; dataset, split); default
                        {"class": <the model's class>} and {}.
    loss:               "classification", "next_token" (a language model: position t predicts
                        token t+1; lesion rows count tokens and give the perplexity),
                        "next_token_aligned" (targets already shifted: nanoGPT's (x, y)), a function
                        fn(logits, targets) -> mean loss (no error rate), or None: the view's
                        own ("next_token" for language models).
    unit:               what the lesions and the Block Influence take as one: "block" (each
                        residual block; a transformer's attention and MLP sublayers apart) or
                        "layer" (each module with all its blocks: whole transformer layers).
                        The path gradients and branch variance are per block either way.
    batch_size:         examples per batch when data is a pair (lesions, branch variance, Block
                        Influence; a loader's batches are its own); the numbers do not depend on
                        it beyond floating-point rounding.
    gradient_examples:  how many of the first examples the path gradients use (exact and
                        sampled): the gradient of their mean loss (over examples, or tokens).
    samples_per_length: Veit's sampled protocol, paths drawn per length (0 skips it).
    ks:                 units deleted together in the random deletions (default 1, 2, 4, ...
                        up to the pool: the deletable units holding no downsampling block).
    trials:             random draws per k, and per number of swaps.
    swaps:              numbers of disjoint same-shape swaps in the reorderings (default 1, 2,
                        4, ... up to the most possible; none when no two units share a shape).
    seed:               seeds the sampled paths, the random deletions and the swaps.
    level:              the mass of the effective-depth intervals over path lengths.
    margin:             the error increase still counted as surviving a lesion (0.02 = 2
                        points; a language model: of the top-1 next-token error): the
                        lesion-based effective depth (not computed for a custom loss).
    influence:          ShortGPT's Block Influence per unit (residual networks), compared with
                        the single-deletion cost (influence_cost.py); False skips it.
    lesion_dir:         a folder for the sweeps' rows (delete_each.csv, delete_random.csv,
                        reorder.csv), appended as each condition finishes; re-running with the
                        same settings resumes. None: in memory only.
    diagnose:           the diagnostics too (pathens.diagnosis: signal propagation, block
                        Jacobian spectra, singularities), into `results`: True for all, a name
                        or a list of names ("signal", "jacobians", "singularities"), or a dict
                        name -> options (e.g. {"singularities": {"eps": 1e-2}}); False: none.
    progress, log:      tqdm bars; a function called with one line per step (print;
                        `lambda line: None` for silence).

    Returns an Analysis (its docstring lists the fields). Every argument is checked before any
    computation starts, so a bad one costs a one-line PathensError, not the lost work.
    """
    view = wrap(view)
    _check(name, gradient_examples, samples_per_length, trials, seed, level, margin,
           batch_size, influence)
    lesion.units(view, unit)  # checks unit
    diagnose = diagnostics(diagnose)  # {name: options}, checked
    d = Data(view, data, batch_size, loss)  # checks a pair whole, a loader's kind and length
    residual = view.residual
    if d.pair is not None:
        data = d.pair  # checked, on the view's device
        examples = d.num_examples
        _enough(residual or bool(diagnose), examples)
    ks, swaps = lesion_counts(view, unit, ks, swaps)
    files = _lesion_files(lesion_dir)
    if d.pair is not None:
        gx, gy = d.first(gradient_examples)
    else:  # a loader: its first examples, read now (a few batches), which also checks them
        (gx, gy), seen, ended = d.head(gradient_examples, 2, what="gradient_examples")
        examples = d.num_examples if d.num_examples is not None else seen if ended else None
        _enough(residual or bool(diagnose), seen if ended else 2)
    start = time.perf_counter()
    # Order: what can still refuse the input first (branch variance: a constant shortcut; each
    # sweep: a lesion_dir file from other settings), and the sweeps, which keep their rows on
    # disk, before the path gradients, which are lost if anything after them fails.
    variance = exact = sampled = None
    common = dict(loss=loss, unit=unit, batch_size=batch_size, progress=progress)
    if residual:
        log(f"[{name}] branch variance")
        variance = branch_variance(view, data, batch_size=batch_size)
    else:
        log(f"[{name}] plain network ({view.num_blocks} layers): one path, lesions only")
    log(f"[{name}] lesions on {_count(examples, d)}")
    each = lesion.delete_each(view, data, out=files.get("delete_each"), **common)
    rand = swap = None  # None: nothing to draw from / no two blocks of the same shape
    if ks:
        rand = lesion.delete_random(view, data, ks=ks, trials=trials, seed=seed,
                                    out=files.get("delete_random"), **common)
    if swaps:
        swap = lesion.reorder(view, data, swaps=swaps, trials=trials, seed=seed,
                              out=files.get("reorder"), **common)
    results = dict(delete_each=each)  # what the registered measurements may build on
    settings = dict(name=name, loss=loss, unit=unit, batch_size=batch_size, seed=seed,
                    progress=progress, log=log, influence=influence, diagnose=diagnose)
    for m in MEASUREMENTS.values():
        if (not m.diagnostic or m.name in diagnose) and (residual or not m.residual):
            results.update(m.run(view, data, settings, results))
    del results["delete_each"]
    if residual:
        log(f"[{name}] exact gradient by path length ({view.num_blocks} blocks, "
            f"{batch_len(gx)} examples)")
        exact = path_gradients(view, gx, gy, loss=loss, progress=progress)
        if samples_per_length:
            log(f"[{name}] sampled protocol, {samples_per_length} paths per length")
            sampled = path_gradients(view, gx, gy, method="sampled", loss=loss,
                                     samples_per_length=samples_per_length, seed=seed,
                                     progress=progress)
    depth = {}
    if residual:
        depth["gradient (exact)"] = effective_depth(exact, level=level)
        if sampled is not None:  # beside the exact one: the report explains why they differ
            depth["gradient (sampled)"] = effective_depth(sampled, level=level)
        depth["gradient energy (exact)"] = effective_depth(exact, level=level, quantity="energy")
        depth["variance"] = effective_depth(variance, level=level)
    if rand is not None and not np.isnan(each.intact_error):  # a custom loss: no error rate
        depth["lesion"] = effective_depth(rand, margin=margin, single=each)
    if examples is None:  # a loader of unknown length: counted by the passes over it
        examples = variance.num_examples if variance is not None else None
    config = dict(residual=residual, examples=examples, ks=list(ks), trials=trials,
                  swaps=list(swaps), seed=seed, level=level, margin=margin,
                  dtype=str(view.param.dtype), device=str(view.param.device),
                  loss=d.loss.name, unit=unit, batch_size=batch_size,
                  diagnose=diagnose or False)
    if each.tokens:
        config["tokens"] = each.num_examples
    if residual:
        config.update(gradient_examples=batch_len(gx), samples_per_length=samples_per_length,
                      influence=bool(influence))
    config["seconds"] = round(time.perf_counter() - start, 1)
    return Analysis(name, model_info or {"class": type(view.model).__name__}, data_info or {},
                    exact, sampled, each, rand, swap, variance, depth, config, residual, results)


def _count(examples, d: Data) -> str:
    what = f"{examples} examples" if examples is not None else "the loader's examples"
    return what + (" (every next token)" if d.loss.unit == "tokens" else "")


def lesion_counts(view, unit: str = "block", ks=None, swaps=None) -> tuple[list, list]:
    """(ks, swaps) of an analysis: those given, checked against what the view allows, or the
    defaults 1, 2, 4, ... up to the pool of random deletions and the most disjoint swaps."""
    pool, most = len(lesion.random_units(view, True, unit)), lesion.most_swaps(view, unit)
    ks = doubling(pool) if ks is None else lesion.check_counts(
        ks, "ks", pool, f"{unit}s random deletions can draw from")
    swaps = doubling(most) if swaps is None else lesion.check_counts(
        swaps, "swaps", most, f"disjoint swaps of same-shape {unit}s")
    return ks, swaps


def doubling(top: int) -> list:
    """1, 2, 4, ... up to top, with top itself (at least [1] when top >= 1)."""
    out, k = [], 1
    while k < top:
        out.append(k)
        k *= 2
    return out + [top] if top >= 1 else []


# ---- checks, all before any work -------------------------------------------------------------

def _check(name, gradient_examples, samples_per_length, trials, seed, level, margin,
           batch_size, influence) -> None:
    if not isinstance(name, str) or not name.strip():
        raise PathensError(f"name must be a non-empty string, got {name!r}")
    checks.positive("gradient_examples", gradient_examples)
    checks.samples(samples_per_length)
    checks.positive("trials", trials)
    checks.seed(seed)
    checks.level(level)
    checks.margin(margin)
    checks.positive("batch_size", batch_size)
    checks.boolean("influence", influence)


def _enough(residual: bool, examples: int) -> None:
    if residual and examples < 2:
        raise PathensError(f"analyze needs at least 2 examples for a residual network or the "
                           f"diagnostics (variances over examples), got {examples}")


def _lesion_files(lesion_dir) -> dict:
    if lesion_dir is None:
        return {}
    folder = Path(lesion_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathensError(f"cannot create lesion_dir {folder}: {err.strerror or err}") from None
    return {k: folder / f"{k}.csv" for k in ("delete_each", "delete_random", "reorder")}


