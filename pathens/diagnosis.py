"""The diagnostics of one network, without the path analysis: signal propagation, block
Jacobian spectra and singularities (the Hessian when its module registers it), each a
registered measurement with `diagnostic=True` (pathens/measure/registry.py).

    d = pathens.diagnose(view, (x, y), name="BN ResNet-20")          # every diagnostic
    d = pathens.diagnose(plain, (x, y), which=("signal", "singularities"))
    pathens.report.write_diagnoses("out", [d_bn, d_skipinit, d_fixup, d_plain])

`pathens diagnose` runs exactly these two functions; `pathens.analyze(..., diagnose=...)` runs
the same measurements with the same settings inside the full analysis, so the numbers agree.
A plain network (`wrap(model, allow_plain=True)`) gets every diagnostic per layer: the stream
statistics, gradient norms, each layer's Jacobian and its activations' singularities (no
branch: the branch columns are NaN).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .data.batches import Data
from .errors import PathensError
from . import checks
from .measure import registry
from .view.residual_view import wrap

__all__ = ["Diagnosis", "diagnose"]

MIN_EXAMPLES = 2  # signal propagation and singularities are statistics over examples


@dataclass
class Diagnosis:
    """The diagnostics of one network, labelled `name`.

    name:        the label in the report (its section, the `<slug>_*` file names).
    model, data: what the caller said about the network and the examples (recorded as is).
    residual:    False for a plain network (every diagnostic per layer).
    block_names: the view's blocks (a plain network's layers), in order.
    config:      the settings: the diagnostics with their options, examples, loss, batch
                 size, seed, dtype, device, seconds.
    results:     result name -> Result ("signal_propagation", "jacobian_spectra",
                 "singularities"), in registration order.
    """

    name: str
    model: dict
    data: dict
    residual: bool
    block_names: tuple
    config: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return len(self.block_names)


def diagnose(view, data, *, name: str = "model", which=True, model_info: dict | None = None,
             data_info: dict | None = None, loss=None, batch_size: int = 256, seed: int = 0,
             progress: bool = True, log=print) -> Diagnosis:
    """Run the registered diagnostics on `view` with the labelled examples `data`.

    view:       a ResidualView, or a model `pathens.wrap` accepts (wrap a plain network
                yourself with allow_plain=True).
    data:       (inputs, targets) or a re-iterable loader of such batches, at least 2
                examples; the targets give the loss whose gradient signal propagation
                measures.
    which:      True (all), a name or a list of names ("signal", "jacobians",
                "singularities"), or a dict name -> options, e.g. {"jacobians": {"examples":
                4, "k": 5}, "singularities": {"eps": 1e-2}} (each module's OPTIONS lists its
                options and defaults).
    name, model_info, data_info: the label and what is recorded about the network and data.
    loss:       "classification", "next_token", fn(logits, targets) -> mean loss, or None: the
                view's own.
    batch_size: examples per pass for a pair (a loader's batches are its own).
    seed:       of the Jacobian spectra's random starting vectors.
    progress, log: tqdm bars; a function called with one line per step.

    Every argument is checked before any computation (a one-line PathensError).
    """
    view = wrap(view)
    if not isinstance(name, str) or not name.strip():
        raise PathensError(f"name must be a non-empty string, got {name!r}")
    checks.positive("batch_size", batch_size)
    checks.seed(seed)
    chosen = registry.diagnostics(which)
    if not chosen:
        raise PathensError("which chooses no diagnostic: pass True (all) or some of "
                           + ", ".join(m.name for m in registry.MEASUREMENTS.values()
                                       if m.diagnostic))
    d = Data(view, data, batch_size, loss)
    if d.pair is not None:
        data = d.pair  # checked, on the view's device
        if d.num_examples < MIN_EXAMPLES:
            raise PathensError(f"the diagnostics need at least {MIN_EXAMPLES} examples (signal "
                               f"propagation and singularities are statistics over examples), "
                               f"got {d.num_examples}")
    start = time.perf_counter()
    settings = dict(name=name, loss=loss, unit="block", batch_size=batch_size, seed=seed,
                    progress=progress, log=log, influence=False, diagnose=chosen)
    results: dict = {}
    for m in registry.MEASUREMENTS.values():
        if m.diagnostic and m.name in chosen:
            results.update(m.run(view, data, settings, results))
    config = dict(residual=view.residual, examples=d.num_examples, diagnose=chosen,
                  loss=d.loss.name, batch_size=batch_size, seed=seed,
                  dtype=str(view.param.dtype), device=str(view.param.device),
                  seconds=round(time.perf_counter() - start, 1))
    return Diagnosis(name, model_info or {"class": type(view.model).__name__}, data_info or {},
                     view.residual, tuple(b.name for b in view.blocks), config, results)
