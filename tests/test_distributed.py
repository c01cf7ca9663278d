"""torch.distributed: two processes (gloo, on the CPU) give exactly the numbers one process
gives: lesion sweeps (errors and counts equal, losses to rounding; sweeps of more than one
group of 16 conditions written to files, several batches per rank, unequal shards; the command
line under torchrun on the bundled checkpoints and all their data), exact and sampled path
gradients; rank 0 alone writes; a rank killed mid-sweep loses nothing that resume cannot
finish, and nothing is counted twice."""
from __future__ import annotations

import csv
import json
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import pathens
from pathens import distributed, lesion
from pathens.measure import lesion_engine as lesion_sweep
from nets import VARIANTS, batch, small_resnet

N = 11  # examples: odd, so that two ranks hold 5 and 6


def setup():
    torch.set_num_threads(1)
    view = pathens.wrap(small_resnet(14, **VARIANTS[0][1]))
    return view, batch(N, seed=3)


def measure(out: Path) -> dict:
    """Everything to compare, as plain numbers."""
    view, (x, y) = setup()
    kw = dict(progress=False, batch_size=4)
    each = lesion.delete_each(view, (x, y), out=out / "each.csv", group_size=2, **kw)
    rand = lesion.delete_random(view, (x, y), ks=[1, 2], trials=2, seed=5, **kw)
    swap = lesion.reorder(view, (x, y), swaps=[1], trials=2, seed=5, **kw)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    streamed = lesion.delete_each(view, loader, progress=False)
    exact = pathens.path_gradients(view, x, y, batch_size=3, progress=False)
    sampled = pathens.path_gradients(view, x, y, method="sampled", samples_per_length=3,
                                     batch_size=7, seed=2, progress=False)
    rows = lambda r: [[row["errors"], row["n"], row["loss"]] for row in r.rows]
    return dict(each=rows(each), rand=rows(rand), swap=rows(swap), streamed=rows(streamed),
                exact=exact.total.tolist(), exact_norm=exact.gradient_norm,
                residual=exact.residual, sampled=sampled.per_path.tolist(),
                sampled_se=sampled.per_path_se.tolist(), sampled_norm=sampled.gradient_norm)


# ---- sweeps as users run them: more than one group of 16, files, several batches ----------

M = 13  # examples: two ranks hold 6 and 7, in batches of 3: 2 batches on rank 0, 3 on rank 1


def sweeps(out: Path) -> dict:
    """delete_each, delete_random and reorder with out= and the default groups of 16, each with
    more than 16 conditions (so more than one group), in batches of 3."""
    torch.set_num_threads(1)
    view = pathens.wrap(small_resnet(38, **VARIANTS[4][1]))  # 18 blocks: 19 conditions each
    x, y = batch(M, seed=4)
    kw = dict(progress=False, batch_size=3)
    got = dict(each=lesion.delete_each(view, (x, y), out=out / "each.csv", **kw),
               rand=lesion.delete_random(view, (x, y), ks=[1, 2, 4], trials=6, seed=5,
                                         out=out / "rand.csv", **kw),
               swap=lesion.reorder(view, (x, y), swaps=[1, 3], trials=9, seed=5,
                                   out=out / "swap.csv", **kw))
    return {k: [[r["condition"], r["errors"], r["n"], r["loss"]] for r in res.rows]
            for k, res in got.items()}


def check_sweeps(one: dict, dir_one: Path, dir_two: Path) -> None:
    """The rows of sweeps() on two ranks (their rank{r}.json in dir_two) and the files rank 0
    wrote are one process's."""
    assert all(len(rows) > 16 for rows in one.values()), {k: len(v) for k, v in one.items()}
    for rank in (0, 1):  # every rank holds every row, as one process computes it
        got = json.loads((dir_two / f"rank{rank}.json").read_text())["sweeps"]
        for key, rows in one.items():
            assert [r[:3] for r in got[key]] == [r[:3] for r in rows], (rank, key)
            assert all(r[2] == M for r in got[key])  # both shards counted, each once
            np.testing.assert_allclose([r[3] for r in got[key]], [r[3] for r in rows],
                                       rtol=1e-12, err_msg=f"rank {rank} {key}")
    for name in ("each.csv", "rand.csv", "swap.csv"):  # rank 0's file: one process's file
        a, b = sweep_rows(dir_two / "many" / name), sweep_rows(dir_one / "many" / name)
        assert len(a) == len(b) > 16 and len({r["condition"] for r in a}) == len(a)
        for ra, rb in zip(a, b):
            assert float(ra.pop("loss")) == pytest.approx(float(rb.pop("loss")), rel=1e-12)
            assert ra == rb


def _join(rank, world, init, timeout=60):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                                         world_size=world, timeout=timedelta(seconds=timeout))


def _worker(rank, world, init, out):
    _join(rank, world, init)
    result = measure(Path(out))
    result["sweeps"] = sweeps(Path(out) / "many")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result, default=float))
    torch.distributed.destroy_process_group()


def test_two_processes_give_the_numbers_of_one(tmp_path):
    one = measure(tmp_path / "one")
    one_sweeps = sweeps(tmp_path / "one" / "many")
    two = tmp_path / "two"
    two.mkdir()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(two)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((two / f"rank{rank}.json").read_text())
        for key in ("each", "rand", "swap", "streamed"):
            assert [r[:2] for r in got[key]] == [r[:2] for r in one[key]], (rank, key)
            np.testing.assert_allclose([r[2] for r in got[key]], [r[2] for r in one[key]],
                                       rtol=1e-12, err_msg=f"rank {rank} {key}")
        for key in ("exact", "exact_norm", "sampled", "sampled_se", "sampled_norm"):
            np.testing.assert_allclose(got[key], one[key], rtol=1e-10, err_msg=f"{rank} {key}")
        assert got["residual"] < 1e-12
    # rank 0 alone wrote the sweep file, each condition once: the rows of one process
    a, b = (list(csv.DictReader((d / "each.csv").read_text().splitlines()[1:]))
            for d in (two, tmp_path / "one"))
    assert len(a) == len(b) == 7
    for ra, rb in zip(a, b):
        assert float(ra.pop("loss")) == pytest.approx(float(rb.pop("loss")), rel=1e-12)
        assert ra == rb
    # sweeps of more than one group of 16, written to files, several batches per rank
    check_sweeps(one_sweeps, tmp_path / "one", two)


def _dies(rank, world, init, out):
    """Rank 1 is killed (os._exit, as SIGKILL would) at its third group of conditions."""
    _join(rank, world, init, timeout=20)
    calls, original = [0], lesion_sweep.evaluate_group

    def evaluate_then_die(*args, **kwargs):
        calls[0] += 1
        if rank == 1 and calls[0] == 3:
            os._exit(1)
        return original(*args, **kwargs)

    lesion_sweep.evaluate_group = evaluate_then_die
    view, (x, y) = setup()
    lesion.delete_each(view, (x, y), out=Path(out) / "each.csv", group_size=1, progress=False)


def test_a_killed_rank_loses_nothing_that_resume_cannot_finish(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_dies, args=(r, 2, str(tmp_path / "init"), str(tmp_path)))
             for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert not p.is_alive(), "a rank hangs after its peer died"
    assert procs[1].exitcode == 1 and procs[0].exitcode != 0  # rank 0 fails too, not hangs
    written = (tmp_path / "each.csv").read_text().splitlines()
    assert len(written) == 2 + 2  # header lines, then the intact network and one deletion
    view, (x, y) = setup()
    resumed = lesion.delete_each(view, (x, y), out=tmp_path / "each.csv", group_size=1,
                                 progress=False)
    fresh = lesion.delete_each(view, (x, y), progress=False)
    assert [r["errors"] for r in resumed.rows] == [r["errors"] for r in fresh.rows]
    lines = (tmp_path / "each.csv").read_text().splitlines()[2:]
    assert len(lines) == len(fresh.rows) == view.num_blocks + 1  # every condition once


def test_more_processes_than_examples_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(pathens.PathensError, match="2 examples cannot be shared among 3"):
        distributed.shard(2)


# ---- the command line under torchrun ------------------------------------------------------

def torchrun(*argv, procs=2, timeout=300):
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(pathens.__file__).parent.parent))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={procs}", "-m", "pathens", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def sweep_rows(path: Path) -> list:
    return list(csv.DictReader(path.read_text().splitlines()[1:]))


def test_torchrun_lesion_writes_what_one_process_writes(tmp_path, capsys):
    from cli_helpers import checkpoint, run
    ckpt = checkpoint(tmp_path / "net.pt", depth=14)
    args = ("lesion", ckpt, "--limit", "37", "--ks", "1", "2", "--trials", "2", "--quiet")
    assert run(capsys, *args, "--out", tmp_path / "one")[0] == 0
    done = torchrun(*args, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("delete_each.csv", "delete_random.csv"):
        a, b = sweep_rows(tmp_path / "two" / "sweeps" / name), \
            sweep_rows(tmp_path / "one" / "sweeps" / name)
        assert len(a) == len(b) and len(a) > 2
        for ra, rb in zip(a, b):
            assert float(ra.pop("loss")) == pytest.approx(float(rb.pop("loss")), rel=1e-5)
            assert ra == rb
    # a bad input is said once, by rank 0, and every rank exits non-zero
    bad = torchrun(*args, "--out", tmp_path / "two")  # the folder holds results now
    assert bad.returncode != 0
    assert bad.stderr.count("pathens: error: --out") == 1, bad.stderr[-2000:]


def _compares(rank, world, init, out):
    _join(rank, world, init)
    try:
        distributed.same_everywhere("command lines", ["lesion", "--trials", str(3 + rank)])
    except pathens.PathensError as err:
        Path(out, f"rank{rank}.txt").write_text(str(err))


def test_ranks_started_differently_are_refused(tmp_path):
    mp.spawn(_compares, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):  # every rank refuses, naming the rank that differs
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "different command lines: rank 1 differs from rank 0" in message


def test_more_processes_on_a_node_than_gpus_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(pathens.PathensError, match="4 processes on this node but 2 GPUs"):
        distributed.init_from_env("cuda")



def test_torchrun_on_a_bundled_checkpoint_with_its_full_data(tmp_path, capsys):
    """What users run: the bundled ResNet-56s on all 359 digits test images, sweeps of more
    than 16 conditions (28 single deletions; 18 reorderings) under torchrun, printed (the
    tables said once, by rank 0) and --quiet (nothing said), the default batches (one per rank)
    and batches of 64 (three per rank, the last ones unequal): every row one process's."""
    from cli_helpers import run

    from pathens.demo import bundled_dir
    runs = [(("lesion", bundled_dir() / "bn_resnet56.pt", "--data", "digits", "--ks", "2",
              "--trials", "2", "--seed", "3"), {"delete_each.csv": 28, "delete_random.csv": 3}),
            (("reorder", bundled_dir() / "skipinit_resnet56.pt", "--data", "digits", "--swaps",
              "1", "2", "--trials", "9", "--batch-size", "64", "--quiet"), {"reorder.csv": 19})]
    for i, (args, names) in enumerate(runs):
        one, two = tmp_path / f"one{i}", tmp_path / f"two{i}"
        code, said, _ = run(capsys, *args, "--out", one)
        assert code == 0
        done = torchrun(*args, "--out", two)
        assert done.returncode == 0, done.stderr[-2000:]
        if "--quiet" in args:
            assert done.stdout == "" and said == ""
        else:  # the same printout, once
            mine = [line for line in said.splitlines() if not line.startswith("wrote ")]
            theirs = [line for line in done.stdout.splitlines() if not line.startswith("wrote ")]
            assert theirs == mine and said.count("intact error") == 1
        for name, count in names.items():
            a, b = sweep_rows(two / "sweeps" / name), sweep_rows(one / "sweeps" / name)
            assert len(a) == len(b) == count, (name, len(a))
            for ra, rb in zip(a, b):
                assert ra["n"] == "359"
                assert float(ra.pop("loss")) == pytest.approx(float(rb.pop("loss")), rel=1e-5)
                assert ra == rb
