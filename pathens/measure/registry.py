"""The measurements an analysis runs, each registered once, by the module that defines it:

    register(Measurement("influence", run=_run, yields=("influence", "influence_vs_deletion")))

`pathens.analyze` runs every registered measurement after the core ones (path gradients,
lesions, branch variance, effective depth), in registration order, and keeps what each yields
in `Analysis.results` under the names in `yields`; `pathens.report.write` writes each result's
tables, JSON, text (the Result protocol, results.py) and figure (registered under the same name
in pathens.report.plots), never naming a measurement. Adding one: a module in measure/ that
ends with its `register(...)`, its import in measure/__init__.py, and, if it draws, a function
in report/plots/ decorated with `@figure_of(name, file_suffix)` (and one decorated with
`@comparison_of(name, file, caption)` to compare the networks of a report).

Diagnostics (`diagnostic=True`: signal propagation, block Jacobian spectra, singularities) run
only when asked: `analyze(diagnose=...)`, `pathens.diagnose` and `pathens diagnose` choose them
with `diagnostics(chosen)` below, each with its own options (`Measurement.options`), which run()
finds in settings["diagnose"][name].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import PathensError


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
              Hessian): run when asked (analyze(diagnose=True), `pathens diagnose`).
    options:  for a diagnostic, options(given: dict) -> its own options (settings["diagnose"]
              [name] when it runs), completed with their defaults and checked before any work
              (a one-line PathensError); None: it takes none."""

    name: str
    run: Callable
    yields: tuple
    residual: bool = True
    diagnostic: bool = False
    options: Optional[Callable] = None


MEASUREMENTS: dict[str, Measurement] = {}


def register(m: Measurement) -> Measurement:
    if m.name in MEASUREMENTS:
        raise ValueError(f"measurement {m.name!r} is registered twice")
    MEASUREMENTS[m.name] = m
    return m


def result_names() -> list[str]:
    """Every name a registered measurement yields, in registration order."""
    return [key for m in MEASUREMENTS.values() for key in m.yields]


def diagnostics(chosen=True) -> dict:
    """The diagnostics to run, {name: its options, completed and checked}, in registration
    order, from what analyze(diagnose=...) and pathens.diagnosis.diagnose take:
    False or None: none; True: every registered diagnostic, default options; a name or a
    sequence of names: those; a mapping {name: {option: value}}: those, with these options.
    A name that is not a registered diagnostic, or a bad option, is a one-line PathensError."""
    known = {m.name: m for m in MEASUREMENTS.values() if m.diagnostic}
    if chosen is None or chosen is False:
        return {}
    if chosen is True:
        chosen = {name: {} for name in known}
    elif isinstance(chosen, str):
        chosen = {chosen: {}}
    elif isinstance(chosen, dict):
        chosen = dict(chosen)
    elif isinstance(chosen, (list, tuple, set, frozenset)) and \
            all(isinstance(c, str) for c in chosen):
        chosen = {name: {} for name in chosen}
    else:
        raise PathensError(f"diagnose must be True, False, a diagnostic's name, a list of them "
                           f"or a dict name -> options, got {chosen!r}")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise PathensError(f"unknown diagnostic {unknown[0]!r}: choose among "
                           f"{', '.join(known) or 'none registered'}")
    out = {}
    for name in known:  # registration order, whatever the order asked
        if name not in chosen:
            continue
        given = chosen[name] if chosen[name] is not None else {}
        if not isinstance(given, dict):
            raise PathensError(f"the options of diagnostic {name!r} must be a dict, got "
                               f"{given!r}")
        m = known[name]
        if m.options is None and given:
            raise PathensError(f"diagnostic {name!r} takes no options, got {', '.join(given)}")
        out[name] = m.options(given) if m.options is not None else {}
    return out


def check_options(given: dict, defaults: dict, what: str) -> dict:
    """given completed with defaults; an option not among them is a one-line PathensError
    (for a Measurement's `options`, which then checks the values)."""
    unknown = [k for k in given if k not in defaults]
    if unknown:
        raise PathensError(f"{what} has no option {unknown[0]!r}: its options are "
                           f"{', '.join(defaults)}")
    return {**defaults, **given}
