"""pathens.checks: each checker's accepted and refused values against an independent predicate,
the one message format, and the command line refusing what the API refuses, in the same words
(issue 15, item 3: one module of argument checks, one limit per argument, one message)."""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch

import pathens
from pathens import analysis, checks
from pathens.cli.arguments import check_values, parser
from pathens.errors import PathensError
from pathens.measure.depth import from_distribution

from cli_helpers import refused

# "<name> must be <what>[ (<hint>)], got <value!r>", on one line
FORMAT = re.compile(r"^(\S+) must be (.+), got (.+)$")


def message(fn, *args, **kwargs) -> str:
    with pytest.raises(PathensError) as err:
        fn(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text and FORMAT.match(text), text
    return text


NOT_NUMBERS = [True, False, None, "1", [1], 1 + 0j, torch.tensor(1.0)]


# ---- the checkers ----------------------------------------------------------------------------

@pytest.mark.parametrize("least,most", [(None, None), (0, None), (1, None), (2, None),
                                        (None, 3), (1, 4), (-2, 2)])
def test_integer_accepts_exactly_the_integers_in_range(least, most):
    for v in range(-4, 7):
        inside = (least is None or v >= least) and (most is None or v <= most)
        for given in (v, np.int64(v), np.int8(v)):
            if inside:
                got = checks.integer("n", given, least=least, most=most)
                assert got == v and type(got) is int
            else:
                text = message(checks.integer, "n", given, least=least, most=most)
                assert text.endswith(f"got {given!r}")
    for bad in NOT_NUMBERS + [2.0, 2.5, float("nan"), np.float64(2.0)]:
        message(checks.integer, "n", bad, least=least, most=most)


def test_integer_says_its_range():
    assert message(checks.integer, "n", 1.5) == "n must be an integer, got 1.5"
    assert message(checks.integer, "n", 0, least=1) == "n must be an integer >= 1, got 0"
    assert message(checks.integer, "n", 5, most=3) == "n must be an integer <= 3, got 5"
    assert message(checks.integer, "n", 9, least=1, most=4, hint="the view's layers") == \
        "n must be an integer in 1..4 (the view's layers), got 9"
    assert message(checks.positive, "trials", 0) == "trials must be a positive integer, got 0"
    assert message(checks.positive, "ks", -1, each=True) == \
        "ks must be positive integers, got -1"
    assert message(checks.non_negative, "n", -1) == "n must be a non-negative integer, got -1"
    assert message(checks.positive, "batch_size", True) == \
        "batch_size must be a positive integer, got True"


def test_seed_is_any_integer_a_generator_and_a_json_file_take():
    for v in (0, 1, 2 ** 63 - 1, np.int64(2 ** 63 - 1), np.uint64(7)):
        assert checks.seed(v) == int(v)
        np.random.default_rng(checks.seed(v))  # numpy takes it
    for v in (-1, 2 ** 63, 2 ** 64, np.int64(-1), 1.0, True, None, "0"):
        assert message(checks.seed, v) == f"seed must be an integer in 0..2^63-1, got {v!r}"
    assert checks.MAX_SEED == np.iinfo(np.int64).max


@pytest.mark.parametrize("open_low,open_high", list(itertools.product([False, True], repeat=2)))
def test_number_accepts_exactly_the_finite_reals_in_its_interval(open_low, open_high):
    grid = [-1, -0.5, 0, 0.25, 0.5, 1, 1.5]
    for v in grid:
        inside = (v > 0 if open_low else v >= 0) and (v < 1 if open_high else v <= 1)
        for given in (v, np.float32(v), np.float64(v)):
            kw = dict(low=0, high=1, open_low=open_low, open_high=open_high)
            if inside:
                got = checks.number("x", given, **kw)
                assert got == float(v) and type(got) is float
            else:
                text = message(checks.number, "x", given, **kw)
                brackets = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
                assert text == f"x must be a number in {brackets}, got {given!r}"
    for v in (0, 1):  # ints are numbers
        assert checks.number("x", v) == float(v)


def test_number_refuses_what_is_not_a_finite_real():
    for bad in NOT_NUMBERS + [math.nan, math.inf, -math.inf, np.float32("nan")]:
        message(checks.number, "x", bad)
    assert message(checks.number, "alpha", math.inf) == "alpha must be a finite number, got inf"
    assert message(checks.number, "lr", 0, low=0, open_low=True) == \
        "lr must be a positive number, got 0"
    assert message(checks.number, "lr", -1, low=0) == "lr must be a non-negative number, got -1"
    assert message(checks.number, "x", 1, low=2) == "x must be a number >= 2, got 1"
    assert message(checks.number, "x", 3, high=2, open_high=True) == "x must be a number < 2, got 3"


def test_boolean_and_choice():
    assert checks.boolean("influence", True) is True and checks.boolean("x", False) is False
    for bad in (0, 1, "yes", None, np.bool_(True)):
        assert message(checks.boolean, "influence", bad) == \
            f"influence must be True or False, got {bad!r}"
    assert checks.choice("unit", "layer", ("block", "layer")) == "layer"
    assert message(checks.choice, "unit", "sublayer", ("block", "layer")) == \
        "unit must be 'block' or 'layer', got 'sublayer'"
    assert message(checks.choice, "m", "x", ("a", "b", "c")) == \
        "m must be one of 'a', 'b', 'c', got 'x'"


def test_shared_arguments_have_one_limit():
    # margin: an error increase in [0, 1): 1 would count every condition as surviving
    for v in (0, 0.02, 0.999):
        assert checks.margin(v) == v
    for v in (1, 1.0, -0.01, math.nan, math.inf, True):
        assert message(checks.margin, v).startswith("margin must be an error increase in [0, 1)")
    # level: (0, 1]
    assert checks.level(1) == 1.0 and checks.level(0.9) == 0.9
    for v in (0, -0.1, 1.01, math.nan):
        assert message(checks.level, v).startswith("level must be a number in (0, 1]")
    # samples per length in an analysis: 0 (none) or at least 2
    assert [checks.samples(v) for v in (0, 2, 20)] == [0, 2, 20]
    for v in (1, -1):
        assert "must be 0 (no sampled protocol) or at least 2" in message(checks.samples, v)
    assert "must be a non-negative integer" in message(checks.samples, 2.5)
    assert checks.paths_per_length(2) == 2
    assert message(checks.paths_per_length, 1) == \
        "samples_per_length must be an integer >= 2 (a standard error needs 2), got 1"
    assert message(checks.tolerance, 1.0).startswith("tol must be a number in [0, 1), e.g. 1e-6")


# ---- the command line and the API: the same values refused, in the same words -----------------

def cli_refusal(argv) -> str | None:
    """check_values' message for the parsed argv, None if it accepts every value."""
    args = parser().parse_args([str(a) for a in argv])
    try:
        check_values(args)
    except PathensError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    view = pathens.wrap(pathens.cifar_resnet(8, width=4, in_channels=1),
                        example_input=torch.zeros(2, 1, 8, 8))
    data = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    return view, data


def api_refusal(tiny, **kwargs) -> str | None:
    view, data = tiny
    try:
        # every argument is checked before any measurement: a bad one never runs one; a good one
        # is stopped right after the checks (a lesion_dir under a file cannot be created)
        analysis.analyze(view, data, lesion_dir="/dev/null/x", progress=False,
                         log=lambda line: None, **kwargs)
    except PathensError as err:
        return None if "cannot create lesion_dir" in str(err) else str(err)
    raise AssertionError("analyze ran")


# flag, API argument, values (typed as the command line parses them)
SHARED = [
    ("--margin", "margin", [-0.5, 0.0, 0.02, 0.999, 1.0, 1.5, math.nan, math.inf]),
    ("--trials", "trials", [-1, 0, 1, 3]),
    ("--batch-size", "batch_size", [-1, 0, 1, 64]),
    ("--gradient-examples", "gradient_examples", [0, 1, 8]),
    ("--samples", "samples_per_length", [-1, 0, 1, 2, 20]),
    ("--seed", "seed", [-1, 0, 2 ** 63 - 1, 2 ** 63]),
]


@pytest.mark.parametrize("flag,name,values", SHARED, ids=[s[1] for s in SHARED])
def test_the_command_line_refuses_what_analyze_refuses_in_the_same_words(tiny, flag, name,
                                                                        values):
    for v in values:
        cli = cli_refusal(["analyze", "none.pt", flag, v])
        api = api_refusal(tiny, **{name: v})
        assert (cli is None) == (api is None), (v, cli, api)
        if api is None:
            continue
        if name == "seed":  # the same limit; its range in the words each side's tests pin
            assert cli == f"--seed must be an integer from 0 to 2^63 - 1, got {v}"
            assert api == f"seed must be an integer in 0..2^63-1, got {v}"
        else:
            assert cli == api.replace(name, flag, 1), (cli, api)


def test_level_and_margin_are_the_same_in_analyze_and_effective_depth(tiny):
    view, data = tiny
    rand = pathens.lesion.delete_random(view, data, ks=[1], trials=1, progress=False)
    for v in (0.0, 0.5, 0.999, 1.0, -0.1, math.nan):
        api = api_refusal(tiny, margin=v)
        try:
            pathens.effective_depth(rand, margin=v)
            depth = None
        except PathensError as err:
            depth = str(err)
        assert api == depth, v
    weights = np.ones(4)
    for v in (0.0, 0.5, 1.0, 1.5):
        api = api_refusal(tiny, level=v)
        try:
            from_distribution(weights, level=v)
            depth = None
        except PathensError as err:
            depth = str(err)
        assert api == depth, v


def test_a_refused_flag_reaches_the_user_as_one_line(capsys, tmp_path):
    err = refused(capsys, "analyze", tmp_path / "none.pt", "--margin", "1",
                  "--out", tmp_path / "o", match="--margin must be an error increase in [0, 1)")
    assert err.strip() == "pathens: error: --margin must be an error increase in [0, 1), e.g. " \
                          "0.02, got 1.0"
    assert not (tmp_path / "o").exists()
