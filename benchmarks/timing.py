"""What the benchmarks share: each long measurement timed between calls of the unit (one forward
+ backward), and divided by the median of the unit's calls just before and just after it, so
that a change in machine load moves both alike."""
from __future__ import annotations

import statistics
import time


def timed(fn, sync=lambda: None):
    """(seconds, fn()): sync() before and after (a CUDA device: torch.cuda.synchronize)."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def interleaved(fns: dict, long: tuple, *, repeats: int, unit_calls: int, unit: str = "fb",
                sync=lambda: None) -> tuple:
    """(ratios {name: [each repeat's time / the unit's median around it]}, every unit time,
    the last result of each long measurement), the repeats interleaved unit, long, unit, ..."""
    ratios = {k: [] for k in long}
    unit_times, results = [], {}
    before = [timed(fns[unit], sync)[0] for _ in range(unit_calls)]
    for _ in range(repeats):
        for k in long:
            t, results[k] = timed(fns[k], sync)
            after = [timed(fns[unit], sync)[0] for _ in range(unit_calls)]
            ratios[k].append(t / statistics.median(before + after))
            unit_times += after
            before = after
    return ratios, unit_times, results
