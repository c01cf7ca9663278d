"""Faults and bad inputs that ended in a traceback, a hang or a message in the API's words:
each is now one line (exit 2 for bad input, 1 for a disk that cannot take the results), found
before any work, and a full disk leaves rows that a --resume completes."""
from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
import torch

import pathens
from cli_helpers import checkpoint, refused, run, snapshot
from pathens.measure import lesion_engine as lesion_sweep
from pathens.measure.lesion_rows import COLUMNS, TOP5

# 21 conditions with the pool of 1 block of a depth-8 net: two groups of rows (16, then 5)
LESION = ["--limit", "32", "--ks", "1", "--trials", "20", "--quiet"]
RESULTS = ("delete_each.csv", "delete_random.csv", "delete_random_summary.csv",
           "sweeps/delete_each.csv", "sweeps/delete_random.csv")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    np.savez(d / "rgb.npz", x=np.zeros((8, 8, 8, 3), np.uint8), y=np.zeros(8, np.int64))
    return dict(bn=checkpoint(d / "bn.pt"), none=checkpoint(d / "none.pt", norm="none"),
                plain=checkpoint(d / "plain.pt", depth=14, skip=False),
                deep=checkpoint(d / "deep.pt", depth=14), rgb=d / "rgb.npz")


@pytest.fixture(scope="module")
def reference(ckpts, tmp_path_factory):
    """The files of the same lesion run on a disk with room."""
    out = tmp_path_factory.mktemp("reference") / "les"
    from pathens.cli import main
    assert main(["lesion", str(ckpts["bn"]), *LESION, "--out", str(out)]) == 0
    return {name: (out / name).read_bytes() for name in RESULTS}


def full_disk(what):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), what)


def whole_rows(path: Path) -> int:
    """The rows of a CSV sweep file, checking that every line on disk is whole."""
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    rows = list(csv.reader(text.splitlines()[2:]))
    assert all(len(r) == len(COLUMNS) + len(TOP5) for r in rows)  # digits: 10 classes, top-5
    return len(rows)


def test_a_full_disk_at_a_sweep_row_is_one_line_and_resume_completes(
        capsys, monkeypatch, ckpts, reference, tmp_path):
    out = tmp_path / "les"
    calls = []

    def fsync(fd):  # the 3rd append (delete_random's second group) hits a full disk mid-row
        calls.append(fd)
        if len(calls) == 3:
            os.write(fd, b"17,delete,1,16,[0")  # a torn row, as a partial write leaves it
            raise full_disk(None)
        return real(fd)
    real = os.fsync
    monkeypatch.setattr(os, "fsync", fsync)
    err = refused(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, code=1,
                  match=f"could not write {out / 'sweeps' / 'delete_random.csv'} (No space left "
                        f"on device): free some space and re-run with --resume")
    assert "Traceback" not in err
    sweep = out / "sweeps" / "delete_random.csv"
    assert whole_rows(sweep) == 16  # the first group's rows (the intact one, 15 trials): kept
    monkeypatch.undo()
    code, _, err = run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, "--resume")
    assert code == 0, err
    assert {name: (out / name).read_bytes() for name in RESULTS} == reference


@pytest.mark.parametrize("name", ["delete_random_summary.csv", "lesion.png", "config.json"])
def test_a_full_disk_at_a_result_file_names_it(capsys, monkeypatch, ckpts, reference, tmp_path,
                                               name):
    out = tmp_path / "les"
    real_text, real_fig = Path.write_text, matplotlib.figure.Figure.savefig

    def write_text(self, *a, **kw):
        if self.name == f".{name}.tmp" and (name != "config.json" or (out / "lesion.png").exists()):
            raise full_disk(str(self))  # config.json: the final one, after the results
        return real_text(self, *a, **kw)

    def savefig(self, fname, *a, **kw):
        if Path(fname).name == f".{name}.tmp":
            raise full_disk(None)  # as matplotlib's writer fails: without a file name
        return real_fig(self, fname, *a, **kw)
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    refused(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, code=1,
            match=f"could not write {out / name} (No space left on device): free some space "
                  f"and re-run with --resume")
    assert not list(out.glob(".*.tmp"))  # the temporary file is gone
    sweeps = snapshot(out / "sweeps")
    monkeypatch.undo()
    code, _, err = run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, "--resume")
    assert code == 0, err
    assert snapshot(out / "sweeps") == sweeps  # every row was on disk: nothing recomputed
    assert {name: (out / name).read_bytes() for name in RESULTS} == reference


def test_a_full_disk_at_the_report_is_one_line_and_resume_completes(capsys, monkeypatch, ckpts,
                                                                    tmp_path):
    out = tmp_path / "an"
    argv = ["analyze", ckpts["bn"], "--limit", "32", "--samples", "0", "--trials", "1",
            "--gradient-examples", "8", "--quiet", "--out", out]
    real = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *a, **kw):  # the report's lesion figure (its temporary file)
        if Path(fname).name.startswith(".bn_lesions.png"):
            raise full_disk(None)
        return real(self, fname, *a, **kw)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    refused(capsys, *argv, code=1, match=f"could not write {out / 'bn_lesions.png'} (No space "
                                         f"left on device): free some space and re-run with "
                                         f"--resume")
    sweeps = snapshot(out / "sweeps")
    monkeypatch.undo()
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 0, err
    assert snapshot(out / "sweeps") == sweeps and (out / "report.md").is_file()
    assert (out / "bn_lesions.png").is_file()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 12 KiB tmpfs (3 pages: the lock, config.json and one sweep file), or a skip."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(disk)],
                          capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_really_full_disk_then_resume(capsys, ckpts, reference, tiny_disk):
    out = tiny_disk / "les"
    err = refused(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, code=1,
                  match="(No space left on device): free some space and re-run with --resume")
    assert f"could not write {out}" in err
    for sweep in (out / "sweeps").glob("*.csv"):
        whole_rows(sweep)
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_disk)], check=True)  # freed
    code, _, err = run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, "--resume")
    assert code == 0, err
    assert {name: (out / name).read_bytes() for name in RESULTS} == reference


@pytest.mark.parametrize("line,match", [
    ("x,delete,1,0,[0],,False,,0.9,0.8,1.0,2.3,29,32,0,0,0.5,16",
     "line 5: invalid literal for int()"),
    ("5,delete,1,3,[0],,False,,0.9,0.8,1.0,2.3,29,32", "line 5: 14 fields, not the 18 columns"),
    ("99,delete,1,3,[0],,False,,0.9,0.8,1.0,2.3,29,32,0,0,0.5,16", "not part of this sweep "
                                                                  "(line 5, condition 99)"),
])
def test_a_corrupt_sweep_line_names_the_file_and_line(capsys, ckpts, tmp_path, line, match):
    out = tmp_path / "les"
    assert run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out)[0] == 0
    sweep = out / "sweeps" / "delete_random.csv"
    lines = sweep.read_text().splitlines()
    sweep.write_text("\n".join(lines[:4] + [line] + lines[5:]) + "\n")
    before = snapshot(out)
    err = refused(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, "--resume",
                  match=f"{sweep} has a")
    assert match in err and "--force instead of --resume" in err
    assert snapshot(out) == before


def test_a_torn_last_line_still_resumes(capsys, ckpts, reference, tmp_path):
    out = tmp_path / "les"
    assert run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out)[0] == 0
    sweep = out / "sweeps" / "delete_random.csv"
    lines = sweep.read_text().splitlines()
    sweep.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])  # killed mid-row
    code, _, err = run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, "--resume")
    assert code == 0, err
    assert {name: (out / name).read_bytes() for name in RESULTS} == reference


def test_a_jsonl_sweep_with_a_foreign_line_is_refused(tmp_path):
    view = pathens.wrap(pathens.cifar_resnet(8, width=4, in_channels=1),
                        example_input=torch.zeros(2, 1, 8, 8))
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=int)
    out = tmp_path / "each.jsonl"
    pathens.lesion.delete_each(view, (x, y), out=out, progress=False)
    with open(out, "a") as f:
        f.write("[1, 2]\n")
    with pytest.raises(pathens.PathensError, match=r"each.jsonl has a line that is not a row "
                                                   r"of a lesion sweep \(line 6: a JSON list"):
        pathens.lesion.delete_each(view, (x, y), out=out, progress=False)


def test_an_unwritable_out_is_refused_before_any_condition(monkeypatch, tmp_path):
    view = pathens.wrap(pathens.cifar_resnet(8, width=4, in_channels=1),
                        example_input=torch.zeros(2, 1, 8, 8))
    data = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=int)
    ran = []
    monkeypatch.setattr(lesion_sweep, "evaluate_group", lambda *a, **kw: ran.append(1))
    note = tmp_path / "note.txt"
    note.write_text("a file")
    for where in ("/proc/x.csv", note / "x.csv"):
        with pytest.raises(pathens.PathensError, match=f"out={where} cannot be written"):
            pathens.lesion.delete_each(view, data, out=where, progress=False)
    assert not ran and note.read_text() == "a file"


@pytest.mark.parametrize("argv,match", [
    (["lesion", "--device", "meta"], "device 'meta' cannot compute"),
    (["lesion", "--trials", "99999999999999999999"],
     "--trials 99999999999999999999 is more than the limit of 1,000,000"),
    (["analyze", "--samples", "10000000"], "--samples 10000000 is more than the limit of 100,000"),
    (["lesion", "--seed", "-1"], "--seed must be an integer from 0 to 2^63 - 1, got -1"),
    (["reorder", "--seed", str(2 ** 63)], f"--seed must be an integer from 0 to 2^63 - 1, got "
                                          f"{2 ** 63}"),
    (["lesion", "--ks", "0"], "--ks must be positive integers"),
    (["lesion", "--ks", "2", "1", "2"], "--ks lists 2 twice"),
    (["reorder", "--swaps", "1", "1"], "--swaps lists 1 twice"),
    (["gradients", "--method", "sampled", "--samples", "1"],
     "--samples must be at least 2 paths per length"),
    (["analyze", "--samples", "1"], "--samples must be 0 (no sampled protocol) or at least 2"),
    (["train", "--data", "digits", "--batch-size", "0"], "--batch-size must be a positive"),
])
def test_bad_values_are_refused_in_flag_terms_before_anything_loads(capsys, tmp_path, argv, match):
    command, rest = argv[0], argv[1:]
    ckpt = [] if command == "train" else [tmp_path / "missing.pt"]  # never read
    refused(capsys, command, *ckpt, *rest, "--out", tmp_path / "o", match=match)
    assert not (tmp_path / "o").exists()


def test_paths_refuses_tables_that_could_not_finish(capsys, tmp_path):
    refused(capsys, "paths", "100000000", match="n 100000000 is more than the limit of 5,000")
    refused(capsys, "paths", "25", "--enumerate",
            match="--enumerate lists all 2^n paths: n must be at most 20")
    refused(capsys, "paths", "3", "--alpha", "nan", match="--alpha must be a finite number")


def test_too_many_conditions_are_refused_before_any_sweep(capsys, ckpts, tmp_path):
    out = tmp_path / "o"  # 3 k (1, 2, 4 of the 4 deletable blocks) x 500000 trials
    refused(capsys, "lesion", ckpts["deep"], "--trials", "500000", "--out", out,
            match="3 k x --trials 500000 = 1,500,000 lesion conditions, more than the limit of "
                  "1,000,000")
    refused(capsys, "analyze", ckpts["deep"], "--trials", "400000", "--out", out,
            match="lesion conditions, more than the limit of 1,000,000")
    assert not out.exists()


@pytest.mark.parametrize("command,args,match,api", [
    ("lesion", ["--recalibrate", "8"], "--recalibrate re-estimates BatchNorm statistics, but the "
                                       "model has no BatchNorm layers", "recalibrate="),
    ("gradients", [], "is a plain network (no shortcuts in layer1.0, layer1.1, layer2.0...): it "
                      "has no residual paths to measure; `pathens lesion`", "allow_plain"),
    ("lesion", ["--data", "rgb"], "cannot run on the --data examples (shape (3, 8, 8))",
     "example_input"),
    ("analyze", ["--limit", "1"], "1 example: this command needs at least 2", "branch_variance"),
])
def test_messages_name_the_flags_not_the_api(capsys, ckpts, tmp_path, command, args, match, api):
    model = ckpts["plain" if command == "gradients" else "none" if "--recalibrate" in args
                  else "bn"]
    args = [str(ckpts["rgb"]) if a == "rgb" else a for a in args]
    err = refused(capsys, command, model, "--quiet", *args, "--out", tmp_path / "o", match=match)
    assert api not in err
    assert not (tmp_path / "o").exists()


def test_an_out_file_where_nothing_can_be_written_is_one_line(capsys):
    err = refused(capsys, "paths", "3", "--out", "/proc/x.csv", match="cannot write /proc/x.csv (")
    assert "Errno" not in err


def test_a_plain_network_can_be_lesioned(capsys, ckpts, tmp_path):
    out = tmp_path / "plain"
    code, _, err = run(capsys, "lesion", ckpts["plain"], "--limit", "32", "--ks", "1",
                       "--trials", "2", "--quiet", "--out", out)
    assert code == 0, err
    rows = (out / "delete_each.csv").read_text().splitlines()
    # the same-shape layers (layer1.0, layer1.1, layer2.1, layer3.1) can each be deleted
    assert len(rows) == 1 + 1 + 4
    code, _, err = run(capsys, "reorder", ckpts["plain"], "--limit", "32", "--trials", "2",
                       "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
