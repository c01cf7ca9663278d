"""The command line: results on disk, exit codes, one-line errors, nothing overwritten."""
from __future__ import annotations

import json
import math

import pytest
import torch

from pathens.cli import main
from realdata import REALDATA, akamaster_checkpoint, requires_realdata


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_paths_table(capsys):
    code, out, _ = run(capsys, "paths", "6", "--alpha", "1")
    rows = [line.split(",") for line in out.strip().splitlines()]
    assert code == 0 and rows[0] == ["length", "paths", "binomial", "bn_variance", "skipinit_alpha1"]
    assert [int(r[1]) for r in rows[1:]] == [math.comb(6, k) for k in range(7)]
    assert sum(float(r[3]) for r in rows[1:]) == pytest.approx(1, abs=1e-5)
    assert [r[2] for r in rows[1:]] == [r[4] for r in rows[1:]]  # alpha = 1 is Binomial(n, 1/2)


def test_train_then_analyze_without_arch(capsys, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    code, _, err = run(capsys, "train", "--data", "digits", "--depth", "8", "--width", "4",
                       "--epochs", "2", "--out", str(ckpt), "--quiet")
    assert code == 0, err
    code, _, err = run(capsys, "train", "--data", "digits", "--depth", "8", "--out", str(ckpt))
    assert code == 2 and "exists" in err and "--force" in err
    out = tmp_path / "analysis"
    code, _, err = run(capsys, "analyze", str(ckpt), "--samples", "2", "--trials", "2",
                       "--gradient-examples", "16", "--out", str(out), "--quiet")
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    (model,) = results["models"].values()
    assert model["data"]["dataset"] == "digits" and model["exact"]["num_blocks"] == 3
    assert model["exact"]["residual"] < 1e-4
    report = (out / "report.md").read_text()
    assert "## Effective depth" in report and "tiny_paths.png" in report
    assert (out / "tiny_paths.png").stat().st_size > 10_000
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = run(capsys, "analyze", str(ckpt), "--out", str(out))
    assert code == 2 and "already holds results" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_lesion_command_resumes(capsys, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    assert run(capsys, "train", "--data", "digits", "--depth", "14", "--width", "4",
               "--epochs", "1", "--out", str(ckpt), "--quiet")[0] == 0
    out = tmp_path / "les"
    argv = ["lesion", str(ckpt), "--ks", "1", "2", "--trials", "2", "--out", str(out), "--quiet"]
    assert run(capsys, *argv)[0] == 0
    first = (out / "delete_random.csv").read_text()
    sweep = (out / "sweeps" / "delete_random.csv").read_bytes()
    assert run(capsys, *argv)[0] == 2  # refuses to overwrite
    assert run(capsys, *argv, "--resume")[0] == 0  # nothing left to compute: same rows
    assert (out / "delete_random.csv").read_text() == first
    assert (out / "sweeps" / "delete_random.csv").read_bytes() == sweep
    code, _, err = run(capsys, "lesion", str(ckpt), "--ks", "3", "--trials", "2", "--out", str(out),
                       "--resume", "--quiet")
    assert code == 2 and "different lesion sweep" in err


@pytest.mark.parametrize("argv,match", [
    (["gradients", "missing.th", "--arch", "resnet20", "--data", "x.npz"], "does not exist"),
    (["demo", "--device", "cuda:0"], "not available"),
    (["demo", "--device", "tpu"], "unknown device"),
    (["analyze", "missing.pt"], "does not exist"),
    (["train", "--data", "imagenet", "--out", "x.pt"], "unknown dataset"),
])
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, argv, match):
    if "cuda:0" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "o"))
    assert code == 2 and match in err and err.count("\n") == 1


@requires_realdata
def test_gradients_on_a_real_checkpoint(capsys, tmp_path):
    ckpt = akamaster_checkpoint(20)
    data = REALDATA / "cifar10_test_first1000.npz"
    code, _, err = run(capsys, "gradients", str(ckpt), "--arch", "resnet19", "--data", str(data),
                       "--out", str(tmp_path / "a"))
    assert code == 2 and "resnet19" in err and "depth" in err
    code, _, err = run(capsys, "gradients", str(ckpt), "--arch", "resnet32", "--data", str(data),
                       "--out", str(tmp_path / "b"))
    assert code == 2 and "missing" in err  # a ResNet-20 checkpoint does not fit ResNet-32
    out = tmp_path / "c"
    code, text, _ = run(capsys, "gradients", str(ckpt), "--arch", "resnet20", "--data", str(data),
                        "--limit", "32", "--out", str(out), "--quiet")
    assert code == 0
    res = json.loads((out / "gradients_exact.json").read_text())
    assert res["num_blocks"] == 9 and res["residual"] < 1e-5
    assert res["config"]["checkpoint"] == str(ckpt) and res["config"]["num_examples"] == 32
