"""The command line: results on disk, exit codes, one-line errors, nothing overwritten."""
from __future__ import annotations

import json
import math
import os
from importlib.metadata import version

import pytest
import torch

import pathens
from pathens.cli import commands
from pathens.cli import main
from pathens.models.cifar import cifar_resnet
from realdata import REALDATA, akamaster_checkpoint, requires_realdata


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv, match):
    """Runs argv, checks exit code 2 with a one-line message containing match; returns it."""
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("pathens: error: "), err
    assert match in err, err
    return err


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A depth-8, width-4 pathens checkpoint trained 1 epoch on 200 digits."""
    ckpt = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    assert main(["train", "--data", "digits", "--depth", "8", "--width", "4", "--epochs", "1",
                 "--limit", "200", "--out", str(ckpt), "--quiet"]) == 0
    return ckpt


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
    # the depth table's "% of paths": the paths with a length in the interval, counted here
    row = next(r for r in report.splitlines() if r.startswith("| gradient (exact) |"))
    lo, hi = map(int, row.split("|")[5].split("-"))
    share = sum(math.comb(3, k) for k in range(lo, hi + 1)) / 2 ** 3
    assert float(row.split("|")[7]) == pytest.approx(100 * share, rel=1e-3)
    before = snapshot(out)
    err = refused(capsys, "analyze", str(ckpt), "--out", str(out), match="already holds results")
    assert "--resume" in err  # analyze has --resume, and its sweeps are there
    assert snapshot(out) == before
    refused(capsys, "analyze", str(ckpt), "--out", str(out), "--resume",
            match="other settings (--samples: 2 there, 20 now)")
    assert snapshot(out) == before
    code, _, err = run(capsys, "analyze", str(ckpt), "--samples", "2", "--trials", "2",
                       "--gradient-examples", "16", "--out", str(out), "--quiet", "--resume")
    assert code == 0, err  # the sweeps on disk are complete: the same lesion rows again
    assert {p: b for p, b in snapshot(out).items() if p.parts[0] == "sweeps"} == {
        p: b for p, b in before.items() if p.parts[0] == "sweeps"}


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
    before = snapshot(out)
    refused(capsys, "lesion", str(ckpt), "--ks", "3", "--trials", "2", "--out", str(out),
            "--resume", "--quiet", match="other settings (--ks: [1, 2] there, [3] now)")
    refused(capsys, "reorder", str(ckpt), "--out", str(out), "--resume", "--quiet",
            match="holds the results of `pathens lesion`")
    assert snapshot(out) == before


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


# ---- the audited gaps: each bad input is one line, exit 2, and nothing is lost ----------------

def test_train_checks_its_output_path_before_training(capsys, tmp_path):
    folder = tmp_path / "already"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    train = ["train", "--data", "digits", "--depth", "8", "--width", "4", "--epochs", "1",
             "--limit", "100", "--quiet", "--out"]
    refused(capsys, *train, str(folder), "--force", match="is a folder")
    note = tmp_path / "note.txt"
    note.write_text("not a folder")
    refused(capsys, *train, str(note / "m.pt"), match=f"is under {note}, which is a file")
    assert note.read_text() == "not a folder" and (folder / "keep.txt").read_text() == "mine"
    nested = tmp_path / "new" / "sub" / "m.pt"  # a missing parent folder is created
    assert run(capsys, *train, str(nested))[0] == 0
    model, meta = pathens.load(nested)
    assert meta["arch"]["depth"] == 8 and meta["pathens_version"] == version("pathens")
    assert not list(nested.parent.glob(".*.tmp"))  # saved through a temporary file


@pytest.mark.parametrize("flags,match", [
    (["--depth", "57"], "depth must be 6n+2"),
    (["--width", "0"], "width must be a positive integer"),
    (["--alpha-init", "0.5"], "alpha_init=0.5 only applies to norm='skipinit'"),
])
def test_train_refuses_an_impossible_network(capsys, tmp_path, flags, match):
    out = tmp_path / "m.pt"
    refused(capsys, "train", "--data", "digits", *flags, "--out", str(out), match=match)
    assert not out.exists()


@pytest.mark.parametrize("argv,match", [
    (["analyze", "--margin", "1.5"], "--margin must be an error increase in [0, 1), e.g. 0.02, "
                                     "got 1.5"),
    (["analyze", "--margin", "nan"], "--margin must be"),
    (["analyze", "--samples", "-1"], "--samples must be 0 (no sampled protocol) or at least 2"),
    (["compare", "--trials", "0"], "--trials must be a positive integer, got 0"),
    (["analyze", "--gradient-examples", "0"], "--gradient-examples must be a positive integer"),
    (["lesion", "--ks", "1", "-2"], "--ks must be positive integers"),
    (["reorder", "--swaps", "-1"], "--swaps must be positive integers"),
    (["gradients", "--limit", "0"], "--limit must be a positive integer"),
    (["gradients", "--tol", "-1"], "--tol must be a tolerance"),
])
def test_flag_values_are_checked_before_anything_runs(capsys, tmp_path, argv, match):
    # the checkpoint does not exist: the value is refused before it is even read
    refused(capsys, argv[0], str(tmp_path / "none.pt"), *argv[1:], "--out", str(tmp_path / "o"),
            match=match)
    assert not (tmp_path / "o").exists()


def test_too_many_blocks_or_swaps_are_refused_before_any_sweep(capsys, tmp_path, tiny):
    out = tmp_path / "o"
    refused(capsys, "lesion", str(tiny), "--ks", "1", "9", "--out", str(out),
            match="--ks 9 is too many: random lesions can delete only 1 of the network's blocks")
    refused(capsys, "reorder", str(tiny), "--out", str(out),  # one block of each shape
            match="the blocks of equal shape allow at most 0 disjoint swaps")
    assert not out.exists()


def test_out_under_a_file_is_one_line(capsys, tmp_path, tiny):
    note = tmp_path / "note.txt"
    note.write_text("keep")
    refused(capsys, "gradients", str(tiny), "--out", str(note / "x"), match="which is a file")
    refused(capsys, "paths", "3", "--out", str(note / "x.csv"), match="which is a file")
    refused(capsys, "gradients", str(tiny), "--out", str(note), match="is a file, not a folder")
    assert note.read_text() == "keep"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_out_without_permission_is_one_line(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        refused(capsys, "paths", "3", "--out", str(locked / "sub" / "p.csv"), match="cannot create")
        refused(capsys, "paths", "3", "--out", str(locked / "p.csv"), match="cannot write into")
    finally:
        locked.chmod(0o700)


def test_resume_needs_a_folder_of_the_same_command(capsys, tmp_path, tiny):
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "results.txt").write_text("someone else's")
    refused(capsys, "lesion", str(tiny), "--out", str(alien), "--resume",
            match="no config.json")
    assert (alien / "results.txt").read_text() == "someone else's"
    assert sorted(p.name for p in alien.iterdir()) == ["results.txt"]


def test_interrupt_suggests_resume_only_where_it_exists(capsys, monkeypatch, tmp_path):
    def interrupted(args):  # once the run has begun (its --out opened)
        with commands._open_out(args):
            raise KeyboardInterrupt
    for name in ("compare", "gradients"):
        monkeypatch.setattr(commands, name, interrupted)
    code, _, err = run(capsys, "compare", "a.pt", "--out", str(tmp_path / "c"))
    assert code == 130 and "--resume" in err
    code, _, err = run(capsys, "gradients", "a.pt", "--out", str(tmp_path / "g"))
    assert code == 130 and "--resume" not in err


def test_compare_resumes(capsys, tmp_path, tiny):
    out = tmp_path / "cmp"
    argv = ["compare", str(tiny), str(tiny), "--samples", "0", "--trials", "1",
            "--gradient-examples", "8", "--limit", "48", "--out", str(out), "--quiet"]
    assert run(capsys, *argv)[0] == 0
    sweeps = {p: b for p, b in snapshot(out).items() if p.parts[0] == "sweeps"}
    assert len(sweeps) == 4  # delete_each and delete_random for tiny and tiny (2); no reorder
    refused(capsys, *argv, match="or --resume to continue its sweeps")
    assert run(capsys, *argv, "--resume")[0] == 0
    assert {p: b for p, b in snapshot(out).items() if p.parts[0] == "sweeps"} == sweeps
    assert json.loads((out / "config.json").read_text())["command"] == "compare"


def test_arch_flags_rebuild_a_third_party_cifar_resnet(capsys, tmp_path, tiny):
    torch.manual_seed(0)
    model = cifar_resnet(8, norm="skipinit", shortcut="B", preact=True, width=4, in_channels=1,
                         alpha_init=0.5)
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": model.state_dict()}, bare)
    out = tmp_path / "g"
    code, _, err = run(capsys, "gradients", str(bare), "--arch", "resnet8", "--norm", "skipinit",
                       "--shortcut", "B", "--preact", "--data", "digits", "--limit", "8",
                       "--out", str(out), "--quiet")  # width and in_channels read from conv1
    assert code == 0, err
    res = json.loads((out / "gradients_exact.json").read_text())
    assert res["num_blocks"] == 3 and res["config"]["model"]["width"] == 4
    refused(capsys, "gradients", str(bare), "--arch", "resnet8", "--data", "digits",
            "--out", str(tmp_path / "h"), match="missing keys")  # BN, option A: does not fit
    refused(capsys, "gradients", str(tiny), "--norm", "skipinit", "--out", str(tmp_path / "i"),
            match="--norm needs --arch")
    refused(capsys, "gradients", str(bare), "--arch", "resnet8", "--width", "0",
            "--out", str(tmp_path / "j"), match="width must be a positive integer")


def test_torchvision_arch_takes_its_classes_from_the_checkpoint(tmp_path):
    pytest.importorskip("torchvision")
    from torchvision.models import resnet18
    path = tmp_path / "r18.pt"
    torch.save(resnet18(num_classes=100).state_dict(), path)
    model, meta = pathens.zoo.build("torchvision.resnet18", path)
    assert model.fc.out_features == 100 and meta["arch"] == "torchvision.resnet18"
    with pytest.raises(pathens.PathensError, match="--width"):
        pathens.zoo.build("torchvision.resnet18", path, flags={"width": 8})


def test_paths_writes_a_file_and_never_overwrites_it(capsys, tmp_path):
    code, table, _ = run(capsys, "paths", "5")
    out = tmp_path / "tables" / "p5.csv"  # the folder is created
    code, printed, err = run(capsys, "paths", "5", "--out", str(out))
    assert code == 0 and out.read_text() == table and printed == f"wrote {out}\n"
    refused(capsys, "paths", "6", "--out", str(out), match="exists")
    assert out.read_text() == table
    code, printed, _ = run(capsys, "paths", "6", "--out", str(out), "--force", "--quiet")
    assert code == 0 and printed == "" and out.read_text().count("\n") == 8
