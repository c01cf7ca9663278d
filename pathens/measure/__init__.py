"""What is measured on a view: one module per measurement, each a function of (view, data,
options) returning a labelled result (the Result protocol: pathens/results.py).

The core of every analysis: path_gradients.py (gradient by path length, exact and sampled, on
backward_sweep.py and linearize.py + transposes.py), lesion.py (deletions and reorderings, on
lesion_engine.py + lesion_rows.py), depth.py (branch variance, effective depth). The rest
register themselves (registry.py) and the analysis and the report take them from there: the
imports below are their registrations, in report order.
"""
from . import influence_cost  # noqa: F401  (registers "influence")
# The diagnostics (Measurement.diagnostic: run when asked, analyze(diagnose=...) and
# `pathens diagnose`), in report order:
from . import signal_propagation  # noqa: F401,E402  (registers "signal")
from . import jacobian_spectra  # noqa: F401,E402  (registers "jacobians")
from . import singularities  # noqa: F401,E402  (registers "singularities")
from . import hessian  # noqa: F401,E402  (registers "hessian")
