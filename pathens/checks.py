"""Argument checks shared by the Python API and the command line: one limit per argument, one
message. Each check raises PathensError naming the argument, the value given and what is
allowed, and returns the value (so that `n = positive("trials", n)` reads as it runs).
"""
from __future__ import annotations

import math
import numbers

from .errors import PathensError

# Upper limits on counts, so that a typo (--trials 99999999999999999999) is refused at once
# instead of filling memory with conditions and running until killed.
# - Lesion conditions: each is a full pass over the data and a row (~300 bytes) in memory and
#   on disk. A million is days of compute and ~300 MB, far beyond any study (Veit et al. ran
#   tens per k); commands.py applies it to --trials times the number of k (or swaps).
MAX_CONDITIONS = 1_000_000
# - Veit's sampled protocol: --samples paths per length, each one backward pass over the
#   gradient examples, for each of the n+1 lengths: 10^5 per length is already ~5.5 million
#   backward passes for a ResNet-110.
MAX_SAMPLES = 100_000
# - `pathens paths n`: the table holds the exact integers C(n, k); at n = 5000 it is ~5.5 MB
#   of digits and seconds of work, growing as n^2 beyond (n = 10^8 never ends). The deepest
#   published residual networks have a few hundred blocks (ResNet-1202: 600).
MAX_PATHS_BLOCKS = 5000
# - `--enumerate` prints one line per path, 2^n of them (pathens.paths' limit: 2^20).
MAX_ENUMERATE_BLOCKS = 20
# - Seeds: numpy's generator takes non-negative integers, and sweep files store them as
#   signed 64-bit JSON numbers that other tools read back exactly.
MAX_SEED = 2 ** 63 - 1


# ---- checkers ------------------------------------------------------------------------------
# Each takes the argument's name as the caller spells it ("batch_size" in the API,
# "--batch-size" on the command line) and the value, refuses it with one message format,
#   <name> must be <what>[ (<hint>)], got <value!r>
# and returns the value normalised (a Python int or float). Bools are refused where a number is
# due (True is an int to Python, never a count or a rate to a user); numpy scalars are accepted.


def refuse(name: str, what: str, value, hint: str = ""):
    """Raise the one refusal: `<name> must be <what> (<hint>), got <value!r>`."""
    raise PathensError(f"{name} must be {what}{f' ({hint})' if hint else ''}, got {value!r}")


def is_integer(v) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite real (Python or numpy int or float), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(name: str, v, *, least: int | None = None, most: int | None = None,
            hint: str = "", what: str | None = None) -> int:
    """An integer in least..most (either end open when None): "an integer >= least", "an
    integer in least..most". `what` replaces that description where words say the range
    better (seed: 0..2^63-1)."""
    if what is None:
        what = ("an integer" if least is None and most is None else
                f"an integer >= {least}" if most is None else
                f"an integer <= {most}" if least is None else f"an integer in {least}..{most}")
    if (not is_integer(v) or (least is not None and v < least)
            or (most is not None and v > most)):
        refuse(name, what, v, hint)
    return int(v)


def positive(name: str, v, *, hint: str = "", each: bool = False) -> int:
    """A positive integer (each=True: an element of a list, "positive integers")."""
    return integer(name, v, least=1, hint=hint,
                   what="positive integers" if each else "a positive integer")


def non_negative(name: str, v, *, hint: str = "") -> int:
    """An integer >= 0, said "a non-negative integer"."""
    return integer(name, v, least=0, hint=hint, what="a non-negative integer")


def number(name: str, v, *, low: float | None = None, high: float | None = None,
           open_low: bool = False, open_high: bool = False, hint: str = "",
           kind: str = "a number", example: str = "") -> float:
    """A finite real number between low and high (open ends where open_low / open_high; None:
    unbounded), said "<kind> in [low, high), e.g. <example>"; low 0 alone reads "a
    non-negative number" (open: "a positive number"). NaN and infinities are refused."""
    ok = is_number(v)
    if ok and low is not None:
        ok = v > low if open_low else v >= low
    if ok and high is not None:
        ok = v < high if open_high else v <= high
    if not ok:
        if low is not None and high is not None:
            what = (f"{kind} in {'(' if open_low else '['}{low:g}, {high:g}"
                    f"{')' if open_high else ']'}")
        elif low is not None:
            what = ((f"a {'positive' if open_low else 'non-negative'} number" if low == 0
                     and kind == "a number" else
                     f"{kind} {'>' if open_low else '>='} {low:g}"))
        elif high is not None:
            what = f"{kind} {'<' if open_high else '<='} {high:g}"
        else:
            what = "a finite number" if kind == "a number" else f"{kind} (a finite number)"
        refuse(name, what + (f", e.g. {example}" if example else ""), v, hint)
    return float(v)


def boolean(name: str, v) -> bool:
    """True or False (not 0 / 1, not a string)."""
    if not isinstance(v, bool):
        refuse(name, "True or False", v)
    return v


def choice(name: str, v, options) -> str:
    """One of `options` (compared with ==), said "'a' or 'b'" or "one of 'a', 'b', 'c'"."""
    options = tuple(options)
    if v not in options:
        quoted = [repr(o) for o in options]
        what = (" or ".join(quoted) if len(quoted) <= 2 else
                "one of " + ", ".join(quoted))
        refuse(name, what, v)
    return v


# ---- arguments shared by the API and the command line: one limit and one message each ------

def seed(v, name: str = "seed", *, what: str = "an integer in 0..2^63-1") -> int:
    """A seed: an integer in 0..MAX_SEED. (`what`: the command line says the same range "from
    0 to 2^63 - 1", words its tests pin.)"""
    return integer(name, v, least=0, most=MAX_SEED, what=what)


def margin(v, name: str = "margin") -> float:
    """A lesion margin: the error increase over the intact network still counted as surviving,
    in [0, 1). An error lies in [0, 1], so no increase exceeds 1: a margin of 1 would count
    every condition, whatever the network, as surviving and make the lesion-based effective
    depth the whole network by definition, a number that measures nothing."""
    return number(name, v, low=0, high=1, open_high=True, kind="an error increase",
                  example="0.02")


def level(v, name: str = "level") -> float:
    """The mass of an interval, in (0, 1]."""
    return number(name, v, low=0, high=1, open_low=True, hint="the interval's mass")


def tolerance(v, name: str = "tol", *, kind: str = "a number") -> float:
    """The path gradients' truncation tolerance, in [0, 1) (0: exact). (`kind`: the command
    line calls it "a tolerance", words its tests pin.)"""
    return number(name, v, low=0, high=1, open_high=True, kind=kind, example="1e-6",
                  hint="0 is exact")


def paths_per_length(v, name: str = "samples_per_length", *,
                     what: str = "an integer >= 2") -> int:
    """Paths per length of Veit's sampled protocol in path_gradients: at least 2 (a standard
    error needs 2). (`what`: the command line says "at least 2 paths per length", words its
    tests pin.)"""
    return integer(name, v, least=2, what=what, hint="a standard error needs 2")


def samples(v, name: str = "samples_per_length") -> int:
    """Paths per length of Veit's sampled protocol in an analysis: 0 (none) or at least 2."""
    if not is_integer(v):
        refuse(name, "a non-negative integer: 0 (no sampled protocol) or at least 2 paths per "
                     "length", v)
    if v != 0 and v < 2:
        refuse(name, "0 (no sampled protocol) or at least 2 paths per length (a standard error "
                     "needs 2)", v)
    return int(v)


def limit(v, name: str = "limit") -> int:
    """How many examples of a dataset to use (None, for all, is the caller's to allow)."""
    return positive(name, v, hint="a number of examples")


def seq_len(v, name: str = "seq_len") -> int:
    """Tokens per window: at least 2 (a next token to predict)."""
    return integer(name, v, least=2, hint="a next token to predict")


def alpha(v, name: str = "alpha") -> float:
    """A SkipInit scale: any finite number."""
    return number(name, v, hint="the SkipInit scale")


def lesion_count(v, name: str = "ks") -> int:
    """One of a lesion sweep's counts (ks: blocks deleted; swaps: swaps made): a positive
    integer (0 is not one: the intact network is row 0 of every sweep)."""
    return positive(name, v, each=True, hint="the intact network is always measured")
