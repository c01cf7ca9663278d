"""What a new user meets first: --help with every default, --version, an instant --help,
`python -m pathens`, a pipe closed early, and the lesion command's printed table."""
from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pathens
from cli_helpers import checkpoint, run
from pathens.cli import main
from pathens.cli.arguments import parser

def _env():
    """The environment of a child python that imports the pathens this test imported."""
    here = str(Path(pathens.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}


def _subcommands():
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_help_shows_every_default(capsys):
    for name, sub in _subcommands().items():
        text = " ".join(sub.format_help().split())  # unwrapped
        for a in sub._actions:
            if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) \
                    and a.default is not True:
                assert f"(default: {a.default})" in text, (name, a.dest)
    with pytest.raises(SystemExit) as stop:
        main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0
    for flag, default in [("--samples SAMPLES", 20), ("--trials TRIALS", 5),
                          ("--gradient-examples N", 128), ("--split {test,train}", "test"),
                          ("--limit N", "all"), ("--seed SEED", 0)]:
        assert f"{flag} " in text and f"(default: {default})" in text.split(f"{flag} ", 1)[1][:200]


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"pathens {pathens.__version__}\n"


def _imports(stderr: str):
    """(nesting depth, module) of each import that `python -X importtime` reported, in its
    order (a module's own imports come before it, one level deeper), and the other lines."""
    rows, other = [], []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            other.append(line)
        elif not line.endswith("| imported package"):
            name = line.rsplit("|", 1)[1]
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    return rows, other


def _imported_for(rows, module: str) -> str:
    """The top-level import that brought `module` in."""
    i = next(i for i, (_, name) in enumerate(rows) if name == module)
    depth, top, base = rows[i][0], module, min(d for d, _ in rows)
    for d, name in rows[i:]:
        if d < depth:
            depth, top = d, name
        if depth == base:
            return top
    return top


def test_python_m_pathens_help_is_light_and_quiet_into_a_closed_pipe():
    read, write = os.pipe()
    os.close(read)  # `pathens --help | head -1`, once head has left
    try:
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pathens", "--help"],
                              stdout=write, stderr=subprocess.PIPE, text=True, env=_env(),
                              timeout=300)
    finally:
        os.close(write)
    rows, other = _imports(done.stderr)
    # no traceback, no message (argparse drops what a closed pipe refuses: then the exit is 0)
    assert done.returncode in (0, 141) and other == [], done.stderr
    names = {name for _, name in rows}
    assert "pathens.cli" in names and not names & {"matplotlib", "pathens.cli.commands"}
    if "torch" in names:
        assert _imported_for(rows, "torch") == "pathens", "the command line imports torch"
        pytest.xfail("`import pathens` imports torch: pathens/__init__.py must import lazily")


def test_a_pipe_closed_early_is_quiet(capsys, monkeypatch):
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["paths", "54"]) == 141
    assert capsys.readouterr().err == ""


def test_lesion_prints_a_labelled_table(capsys, tmp_path):
    ckpt = checkpoint(tmp_path / "m.pt", depth=14)
    out = tmp_path / "les"
    code, text, err = run(capsys, "lesion", ckpt, "--limit", "32", "--ks", "1", "2",
                          "--trials", "2", "--out", out)
    assert code == 0, err
    lines = text.splitlines()
    each = list(csv.DictReader(open(out / "delete_each.csv")))
    intact = float(each[0]["error"])
    assert lines[0].startswith(f"intact error {intact:.2%} on 32 examples (95% interval ")
    table = lines[lines.index(next(x for x in lines if x.startswith("block deleted"))) + 1:]
    assert "change from intact" in lines[2]
    names = ["layer1.0", "layer1.1", "layer2.0 (downsampling)", "layer2.1",
             "layer3.0 (downsampling)", "layer3.1"]
    for name, row, line in zip(names, each[1:], table):
        error = float(row["error"])
        assert line.split() == [*name.split(), f"{error:.2%}", f"{error - intact:+.2%}",
                                f"{float(row['top5_error']):.2%}"]  # digits: 10 classes
    summary = list(csv.DictReader(open(out / "delete_random_summary.csv")))
    head = next(i for i, x in enumerate(lines) if x.startswith("random blocks deleted"))
    assert "95% interval" in lines[head]
    for r, line in zip(summary, lines[head + 1:]):
        assert line.split() == [r["k"], r["trials"], f"{float(r['error_mean']):.2%}",
                                f"{float(r['error_lo']):.2%}", "to",
                                f"{float(r['error_hi']):.2%}"]
    assert lines[-1] == f"wrote {out}/"
