"""The output folder: every input is checked before it is touched, a folder that holds only a
failed run's config.json is empty, and one run at a time writes it (the lock)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import checkpoint, refused, run, snapshot
from pathens.cli.locks import LOCK, lock_folder

LESION = ["--limit", "32", "--ks", "1", "--trials", "2", "--quiet"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """An untrained depth-8 BN ResNet, one without BatchNorm, and digits-shaped .npz files
    whose labels (12) the 10-class models do not have."""
    d = tmp_path_factory.mktemp("outputs")
    np.savez(d / "labels12.npz", x=np.zeros((8, 8, 8, 1), np.uint8), y=np.full(8, 12))
    return dict(bn=checkpoint(d / "bn.pt"), none=checkpoint(d / "none.pt", norm="none"),
                bad_labels=d / "labels12.npz")


@pytest.fixture(scope="module")
def finished(ckpts, tmp_path_factory):
    """A finished `pathens lesion` folder: (its path, its files)."""
    out = tmp_path_factory.mktemp("finished") / "les"
    from pathens.cli import main
    assert main(["lesion", str(ckpts["bn"]), *LESION, "--out", str(out)]) == 0
    return out, snapshot(out)


@pytest.mark.parametrize("bad,match", [
    (lambda c: ["--data", str(c["bad_labels"])], "targets range over 12..12"),  # the labels
    (lambda c: ["--recalibrate", "8"], "--recalibrate re-estimates BatchNorm"),  # no BN
])
def test_force_with_a_bad_input_keeps_the_finished_folder(capsys, ckpts, finished, bad, match):
    out, files = finished
    model = ckpts["none"] if "--recalibrate" in bad(ckpts) else ckpts["bn"]
    refused(capsys, "lesion", model, *LESION, *bad(ckpts), "--out", out, "--force", match=match)
    assert snapshot(out) == files  # the old sweeps, CSVs and config.json are all still there


def test_a_bad_input_leaves_no_folder_behind(capsys, ckpts, tmp_path):
    out = tmp_path / "new"
    refused(capsys, "lesion", ckpts["bn"], *LESION, "--data", ckpts["bad_labels"], "--out", out,
            match="targets range over 12..12")
    refused(capsys, "lesion", ckpts["none"], *LESION, "--recalibrate", "8", "--out", out,
            match="no BatchNorm layers")
    assert not out.exists()


def test_a_folder_holding_only_a_config_is_empty(capsys, ckpts, tmp_path):
    out = tmp_path / "failed"  # as a run that stopped on a bad input used to leave it
    out.mkdir()
    (out / "config.json").write_text(json.dumps(dict(command="lesion", settings={"seed": 0})))
    code, _, err = run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["settings"]["ks"] == [1]
    assert (out / "sweeps" / "delete_random.csv").is_file()


def test_someone_elses_config_is_a_result(capsys, ckpts, tmp_path):
    out = tmp_path / "project"  # a config.json pathens did not write: never overwritten
    out.mkdir()
    (out / "config.json").write_text('{"learning_rate": 0.1}')
    refused(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, match="already holds results")
    assert (out / "config.json").read_text() == '{"learning_rate": 0.1}'


def test_a_second_run_on_a_locked_folder_fails_at_once(capsys, ckpts, finished, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    with lock_folder(out, holder="pathens lesion other.pt --out busy"):  # a run in progress
        before = snapshot(out)
        err = refused(capsys, "lesion", ckpts["bn"], *LESION, "--out", out,
                      match=f"--out {out} is in use by another pathens run (pid {os.getpid()} "
                            f"on {socket.gethostname()}, started ")
        assert "pathens lesion other.pt --out busy" in err
        assert snapshot(out) == before  # nothing written, so no row can be counted twice
        # --resume and --force wait for no one either
        refused(capsys, "lesion", ckpts["bn"], *LESION, "--out", out, "--force",
                match="is in use by another pathens run")
    assert run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out)[0] == 0  # released
    _, files = finished  # the same rows as a run on its own
    rows = Path("sweeps", "delete_random.csv")
    assert (out / rows).read_bytes() == files[rows]


def test_a_dead_runs_lock_file_does_not_block(capsys, ckpts, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()  # a lock file whose process is gone (killed): the OS released its lock
    (out / LOCK).write_text(json.dumps(dict(pid=999999, host="elsewhere", command="pathens x",
                                            started="yesterday")))
    code, _, err = run(capsys, "lesion", ckpts["bn"], *LESION, "--out", out)
    assert code == 0, err
    assert (out / LOCK).read_text() == ""  # released: no details of a holder left


def test_the_lock_file_names_its_holder_while_held(tmp_path):
    with lock_folder(tmp_path, holder="pathens lesion a.pt") as path:
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["command"] == "pathens lesion a.pt"
        assert info["host"] == socket.gethostname()
    assert path.read_text() == ""
