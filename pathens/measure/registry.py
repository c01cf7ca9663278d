"""The measurements an analysis runs, each registered once, by the module that defines it:

    register(Measurement("influence", run=_run, yields=("influence", "influence_vs_deletion")))

`pathens.analyze` runs every registered measurement after the core ones (path gradients,
lesions, branch variance, effective depth), in registration order, and keeps what each yields
in `Analysis.results` under the names in `yields`; `pathens.report.write` writes each result's
tables, JSON, text (the Result protocol, results.py) and figure (registered under the same name
in pathens.report.plots), never naming a measurement. Adding one: a module in measure/ that
ends with its `register(...)`, its import in measure/__init__.py, and, if it draws, a function
in report/plots/ decorated with `@figure_of(name, file_suffix)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Measurement:
    """name:     what it is called (`pathens diagnose --only NAME`, log lines).
    run:      run(view, data, settings, results) -> {name in yields: Result}; `settings` holds
              analyze's arguments (loss, unit, batch_size, seed, progress, log, name, and the
              measurement's own switches), `results` what the analysis holds so far (e.g.
              delete_each); returns {} when it does not apply or is switched off.
    yields:   the names of the results it returns, in the order results.json lists them.
    residual: True when it needs residual blocks (a plain network skips it).
    diagnostic: True for the diagnostics (signal propagation, Jacobians, singularities, the
              Hessian): run when asked (analyze(diagnose=True), `pathens diagnose`)."""

    name: str
    run: Callable
    yields: tuple
    residual: bool = True
    diagnostic: bool = False


MEASUREMENTS: dict[str, Measurement] = {}


def register(m: Measurement) -> Measurement:
    if m.name in MEASUREMENTS:
        raise ValueError(f"measurement {m.name!r} is registered twice")
    MEASUREMENTS[m.name] = m
    return m


def result_names() -> list[str]:
    """Every name a registered measurement yields, in registration order."""
    return [key for m in MEASUREMENTS.values() for key in m.yields]
