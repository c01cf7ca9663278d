"""Argument checks shared by the Python API and the command line: one limit per argument, one
message. Each check raises PathensError naming the argument, the value given and what is
allowed, and returns the value (so that `n = positive_int("trials", n)` reads as it runs).
"""
from __future__ import annotations

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
