"""Lesion engine: every row equals a direct run of the view on the whole dataset (no caching),
Wilson intervals equal the closed form, sweeps resume from their files, bad input is refused."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pathens
from pathens import lesion
from pathens.errors import PathensError
from pathens.models.modes import recalibrate_batchnorm
from nets import VARIANTS, batch, small_resnet


@pytest.fixture(scope="module")
def view():
    return pathens.wrap(small_resnet(20, **VARIANTS[0][1]))


@pytest.fixture(scope="module")
def data():
    return batch(30, size=8)


def direct(view, x, y, **kw):
    """(error, loss) of one full run of the view on all examples."""
    with torch.no_grad():
        logits = view.run(x, **kw)
    return float((logits.argmax(1) != y).double().mean()), float(F.cross_entropy(logits, y))


def assert_row(row, view, x, y, **kw):
    error, loss = direct(view, x, y, **kw)
    assert row["n"] == len(y) and row["nonfinite"] == 0
    assert row["error"] == pytest.approx(error, abs=1e-15)
    assert row["loss"] == pytest.approx(loss, rel=1e-12)


# ---- Wilson interval --------------------------------------------------------------------------

def test_wilson_known_value_and_closed_form():
    lo, hi = lesion.wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    z = stats.norm.ppf(0.975)
    for e, n in [(7, 20), (1, 1000), (50, 50)]:
        p = e / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert lesion.wilson(e, n) == pytest.approx((max(0, centre - half), min(1, centre + half)),
                                                    abs=1e-12)


# ---- oracles: rows equal direct runs of the view ---------------------------------------------

def test_delete_each_equals_direct_runs(view, data):
    x, y = data
    r = lesion.delete_each(view, (x, y), batch_size=7, progress=False)
    assert [row["kind"] for row in r.rows] == ["intact"] + ["delete"] * 9
    assert_row(r.rows[0], view, x, y)
    assert r.intact_error == r.rows[0]["error"] and r.num_examples == 30
    for i, row in enumerate(r.rows[1:]):
        assert row["deleted"] == [i] and row["k"] == 1
        assert row["downsampling"] == (i in (3, 6))
        assert_row(row, view, x, y, deleted=[i])
        assert (row["error_lo"], row["error_hi"]) == lesion.wilson(row["errors"], 30)
    assert r.downsampling_blocks == (3, 6) and r.block_names[0] == "layer1.0"
    # same numbers from a DataLoader, and without the shared activations (naive re-runs)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    for other in (lesion.delete_each(view, loader, progress=False),
                  lesion.delete_each(view, (x, y), progress=False, cache=False)):
        for a, b in zip(r.rows, other.rows):
            assert a["errors"] == b["errors"] and a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    assert r.to_csv().splitlines()[0].startswith("condition,kind,k,trial,deleted,order")
    assert len(r.summary()) == 1 and r.summary()[0]["trials"] == 9


def test_evaluate_equals_direct_run(view, data):
    x, y = data
    row = lesion.evaluate(view, (x, y), deleted=[2, 5], batch_size=11)
    assert_row(row, view, x, y, deleted=[2, 5])
    order = [1, 0, 2, 3, 5, 4, 6, 7, 8]
    row = lesion.evaluate(view, (x, y), deleted=[4], order=order)
    assert_row(row, view, x, y, deleted=[4], order=order)


def test_reorder_rows_equal_direct_runs(view, data):
    x, y = data
    r = lesion.reorder(view, (x, y), trials=3, seed=1, progress=False)
    rows = r.rows[1:]
    assert sorted({row["k"] for row in rows}) == [1, 2, 3]  # at most 3 disjoint same-shape swaps
    for row in rows:
        order = row["order"]
        moved = [p for p in range(9) if order[p] != p]
        assert len(moved) == 2 * row["k"]
        assert all(order[order[p]] == p for p in moved)  # disjoint pairs
        assert all(view.blocks[p].in_shape == view.blocks[order[p]].in_shape
                   and view.blocks[p].out_shape == view.blocks[order[p]].out_shape for p in moved)
        assert row["tau"] == pytest.approx(stats.kendalltau(order, range(9))[0])
        assert_row(row, view, x, y, order=order)
    s = r.summary()
    assert [d["k"] for d in s] == [1, 2, 3] and s[0]["tau_mean"] > s[2]["tau_mean"]


def test_delete_random_draws_and_summary(view, data):
    x, y = data
    r = lesion.delete_random(view, (x, y), ks=[1, 3, 7], trials=4, seed=5, progress=False)
    rows = r.rows[1:]
    assert len(rows) == 12
    for row in rows:
        assert len(row["deleted"]) == row["k"] == len(set(row["deleted"]))
        assert not set(row["deleted"]) & {3, 6} and not row["downsampling"]
        assert row["seed"] == 5
    for row in rows[::3]:
        assert_row(row, view, x, y, deleted=row["deleted"])
    again = lesion.delete_random(view, (x, y), ks=[3], trials=4, seed=5, progress=False)
    assert [a["deleted"] for a in again.rows[1:]] == [a["deleted"] for a in rows[4:8]]
    other = lesion.delete_random(view, (x, y), ks=[3], trials=4, seed=6, progress=False)
    assert [a["deleted"] for a in other.rows[1:]] != [a["deleted"] for a in rows[4:8]]
    with_down = lesion.delete_random(view, (x, y), ks=[9], trials=1, exclude_downsampling=False,
                                     progress=False)
    assert with_down.rows[1]["deleted"] == list(range(9)) and with_down.rows[1]["downsampling"]
    s = r.summary()
    e = np.array([row["error"] for row in rows[4:8]])
    half = stats.t.ppf(0.975, 3) * e.std(ddof=1) / 2
    assert s[1]["k"] == 3 and s[1]["error_mean"] == pytest.approx(e.mean())
    assert (s[1]["error_lo"], s[1]["error_hi"]) == pytest.approx((e.mean() - half, e.mean() + half))
    assert '"k": 7' in r.to_json()
    text = r.summary_csv()
    assert text.splitlines()[0].startswith("k,trials,error_mean,error_lo,error_hi") and len(text.splitlines()) == 4


# ---- BatchNorm recalibration -------------------------------------------------------------------

class Lesioned(nn.Module):
    def __init__(self, b):
        super().__init__()
        self.b = b

    def forward(self, x):
        return self.b.post(x if self.b.shortcut is None else self.b.shortcut(x))


def test_recalibration_matches_by_hand_and_leaves_model_alone(data):
    model = small_resnet(20, **VARIANTS[0][1])
    view = pathens.wrap(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data
    cal, _ = batch(24, size=8, seed=3)
    r = lesion.delete_each(view, (x, y), recalibrate=cal, batch_size=12, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for row, deleted in ((r.rows[0], None), (r.rows[2], "layer1.1"), (r.rows[7], "layer3.0")):
        by_hand = copy.deepcopy(model)
        if deleted:
            parent, child = deleted.rsplit(".", 1)
            setattr(by_hand.get_submodule(parent), child, Lesioned(by_hand.get_submodule(deleted)))
        recalibrate_batchnorm(by_hand, cal, batch_size=12)
        with torch.no_grad():
            logits = by_hand(x)
        assert row["errors"] == int((logits.argmax(1) != y).sum())
        assert row["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-10)
    plain = lesion.delete_each(view, (x, y), progress=False)
    assert plain.rows[2]["loss"] != pytest.approx(r.rows[2]["loss"], rel=1e-6)
    assert r.config["recalibrate"] == 24


# ---- output files: resume, refusal -------------------------------------------------------------

class Flaky:
    """A re-iterable loader that raises on batch `fail_at`, or gives labels out of range on
    batch `bad_at` (counted over all passes)."""

    def __init__(self, x, y, size, fail_at=None, bad_at=None):
        self.x, self.y, self.size, self.fail_at, self.bad_at, self.seen = x, y, size, fail_at, bad_at, 0

    def __len__(self):
        return math.ceil(len(self.y) / self.size)

    def __iter__(self):
        for s in range(0, len(self.y), self.size):
            self.seen += 1
            if self.fail_at is not None and self.seen == self.fail_at:
                raise KeyboardInterrupt("interrupted")
            y = self.y[s:s + self.size]
            yield self.x[s:s + self.size], (y + 100 if self.seen == self.bad_at else y)


def counting(view, monkeypatch):
    calls = []
    run_from = view.run_from

    def counted(h, start=0, **kw):
        calls.append((start, tuple(kw.get("deleted", ()))))
        return run_from(h, start, **kw)

    monkeypatch.setattr(view, "run_from", counted, raising=False)
    return calls


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_interrupted_sweep_resumes_to_the_same_file(view, data, tmp_path, monkeypatch, suffix):
    x, y = data
    kw = dict(ks=[1, 2, 3], trials=3, seed=2, group_size=3, progress=False)  # 10 conditions
    whole = tmp_path / f"whole.{suffix}"
    full = lesion.delete_random(view, Flaky(x, y, 8), out=whole, **kw)

    part = tmp_path / f"part.{suffix}"
    with pytest.raises(KeyboardInterrupt):  # 4 batches a pass: dies in the 3rd group's pass
        lesion.delete_random(view, Flaky(x, y, 8, fail_at=10), out=part, **kw)
    lines = part.read_text().splitlines()
    assert len(lines) == (2 if suffix == "csv" else 1) + 6  # header(s) + two groups of rows
    with open(part, "a") as f:  # and a line torn by a crash
        f.write("7,delete,2,0,[1" if suffix == "csv" else '{"condition": 7, "ki')

    calls = counting(view, monkeypatch)
    resumed = lesion.delete_random(view, Flaky(x, y, 8), out=part, **kw)
    assert len(calls) == 4 * 4  # only the 4 missing conditions, on 4 batches each
    assert {d for _, d in calls} == {tuple(r["deleted"]) for r in full.rows[6:]}
    assert part.read_bytes() == whole.read_bytes()
    assert resumed.to_csv() == full.to_csv()

    calls.clear()  # a finished sweep re-runs for free
    again = lesion.delete_random(view, Flaky(x, y, 8), out=part, **kw)
    assert calls == [] and again.to_csv() == full.to_csv()
    assert part.read_bytes() == whole.read_bytes()

    bad = tmp_path / f"bad.{suffix}"  # bad labels in the 2nd group's pass: group 1 stays on disk
    with pytest.raises(PathensError, match="the model has 10 classes"):
        lesion.delete_random(view, Flaky(x, y, 8, bad_at=6), out=bad, **kw)
    assert bad.read_text().splitlines() == whole.read_text().splitlines()[:len(lines) - 3]
    lesion.delete_random(view, Flaky(x, y, 8), out=bad, **kw)
    assert bad.read_bytes() == whole.read_bytes()


def test_different_sweep_refused_and_file_untouched(view, data, tmp_path):
    x, y = data
    out = tmp_path / "sweep.csv"
    lesion.delete_random(view, (x, y), ks=[1], trials=2, out=out, progress=False)
    saved = out.read_bytes()
    other_model = pathens.wrap(small_resnet(20, seed=1, **VARIANTS[0][1]))
    for v, kw, match in [(view, dict(ks=[1], trials=3), "trials: 2 there, 3 now"),
                         (view, dict(ks=[1, 2], trials=2), "ks"),
                         (view, dict(ks=[1], trials=2, seed=1), "seed"),
                         (other_model, dict(ks=[1], trials=2), "model")]:
        with pytest.raises(PathensError, match=f"{match}.*write to another file or delete this "
                                               f"one \\(CLI: another --out, or --force instead"):
            lesion.delete_random(v, (x, y), out=out, progress=False, **kw)
        assert out.read_bytes() == saved
    with pytest.raises(PathensError, match="different lesion sweep"):
        lesion.delete_random(view, (x[:20], y[:20]), ks=[1], trials=2, out=out, progress=False)
    with pytest.raises(PathensError, match="sweep: 'delete_random' there"):
        lesion.delete_each(view, (x, y), out=out, progress=False)
    assert out.read_bytes() == saved
    stranger = tmp_path / "notes.csv"
    stranger.write_text("a,b\n1,2\n")
    with pytest.raises(PathensError, match="not a pathens lesion sweep file"):
        lesion.delete_each(view, (x, y), out=stranger, progress=False)
    assert stranger.read_text() == "a,b\n1,2\n"


def test_resume_checks_the_data_not_just_its_size(view, data, tmp_path, monkeypatch):
    x, y = data
    # 5 conditions in groups of 2, 4 batches a pass
    kw = dict(ks=[1, 2], trials=2, seed=3, group_size=2, batch_size=8, progress=False)
    g = torch.Generator().manual_seed(9)
    others = {"other examples": (torch.randn(x.shape, generator=g, dtype=x.dtype), y),
              "other labels": (x, (y + 1) % 10),
              "other normalisation": ((x - x.mean()) / x.std(), y),
              "one value changed": (x.clone().index_put_((torch.tensor([29]),), x[29] + 1e-3), y)}
    kinds = {"pair": lambda x, y: (x, y),
             "DataLoader": lambda x, y: DataLoader(TensorDataset(x, y), batch_size=8),
             "iterable": lambda x, y: Flaky(x, y, 8)}
    refusal = (r"different lesion sweep \(data: .* \(other examples or preprocessing\)\); to "
               r"start fresh, write to another file or delete this one \(CLI: another --out, or "
               r"--force instead of --resume\)$")
    for kind, make in kinds.items():
        out = tmp_path / f"{kind}.jsonl"
        whole = lesion.delete_random(view, make(x, y), out=out, **kw)
        full = out.read_bytes()
        out.write_bytes(b"".join(full.splitlines(keepends=True)[:3]))  # stopped after group 1
        saved = out.read_bytes()
        for what, (ox, oy) in others.items():  # same size, other contents: refused, untouched
            if what == "one value changed" and kind != "pair":
                continue  # loaders are fingerprinted from a sample (see Data.fingerprint)
            with pytest.raises(PathensError, match=refusal):
                lesion.delete_random(view, make(ox, oy), out=out, **kw)
            assert out.read_bytes() == saved, (kind, what)
        calls = counting(view, monkeypatch)  # the same data: continues where it stopped
        resumed = lesion.delete_random(view, make(x, y), out=out, **kw)
        assert len(calls) == 3 * 4 and resumed.to_csv() == whole.to_csv()
        assert out.read_bytes() == full
        monkeypatch.undo()
    shuffled = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True,
                          generator=torch.Generator().manual_seed(1))
    again = lesion.delete_random(view, shuffled, out=tmp_path / "DataLoader.jsonl", **kw)
    assert again.to_csv() == whole.to_csv()  # shuffling keeps the data: the finished sweep is read


def test_recalibration_set_is_part_of_the_configuration(view, data, tmp_path):
    x, y = data
    out = tmp_path / "recal.csv"
    cal, _ = batch(12, size=8, seed=3)
    lesion.delete_random(view, (x, y), ks=[1], trials=1, recalibrate=cal, out=out, progress=False)
    saved = out.read_bytes()
    with pytest.raises(PathensError, match="recalibrate_data"):
        lesion.delete_random(view, (x, y), ks=[1], trials=1, recalibrate=cal * 2, out=out,
                             progress=False)
    assert out.read_bytes() == saved


# ---- bad input ---------------------------------------------------------------------------------

def test_bad_input_is_refused(view, data):
    x, y = data
    cases = [
        (lambda: lesion.delete_random(view, (x, y), ks=[8]), "k=8 is more than the 7 blocks"),
        (lambda: lesion.delete_random(view, (x, y), ks=[10], exclude_downsampling=False),
         "more than the 9 blocks"),
        (lambda: lesion.delete_random(view, (x, y), ks=[1], trials=0), "trials must be a positive"),
        (lambda: lesion.delete_random(view, (x, y), ks=[0]), "ks must be positive integers.*got 0"),
        (lambda: lesion.delete_random(view, (x, y), ks=[2, -1]), "ks must be positive.*got -1"),
        (lambda: lesion.reorder(view, (x, y), swaps=[0]), "swaps must be positive integers"),
        (lambda: lesion.reorder(view, (x, y), swaps=[4]), "4 swaps are more than possible.*at most 3"),
        (lambda: lesion.delete_each(view, (x[:0], y[:0])), "empty"),
        (lambda: lesion.delete_each(view, []), "empty"),
        (lambda: lesion.delete_each(view, DataLoader(TensorDataset(x[:0], y[:0]))), "empty"),
        (lambda: lesion.delete_each(view, (x, y + 10)), "the model has 10 classes"),
        (lambda: lesion.delete_each(view, [(x, y + 10)]), "the model has 10 classes"),
        (lambda: lesion.delete_each(view, ((x[:5], y[:5]) for _ in range(2))), "one-shot iterator"),
        (lambda: lesion.delete_each(view, x), "pair or a DataLoader"),
        (lambda: lesion.evaluate(view, (x, y), deleted=[9]), "out of range"),
    ]
    for call, match in cases:
        with pytest.raises(PathensError if "range" not in match else ValueError, match=match):
            call()


class SqrtBlock(nn.Module):
    """sqrt(x + (x^2 - x + 1)) = sqrt(x^2 + 1): finite; deleting the branch leaves sqrt(x), NaN
    for negative x."""

    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def branch(self, x):
        return x * x - x + 1 + 0 * self.fc(x)

    def forward(self, x):
        return torch.sqrt(x + self.branch(x))


pathens.register_block(SqrtBlock, lambda b: pathens.BlockParts(branch=b.branch, post=torch.sqrt))


class SqrtNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(5, 4), nn.Linear(4, 3)
        self.blocks = nn.Sequential(SqrtBlock(4), SqrtBlock(4))

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


def test_nonfinite_outputs_are_recorded_not_fatal(tmp_path):
    torch.manual_seed(0)
    model = SqrtNet().double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    view = pathens.wrap(model, example_input=x[:2])
    with pytest.warns(RuntimeWarning, match="non-finite"):
        r = lesion.delete_each(view, (x, y), out=tmp_path / "nan.csv", progress=False)
    intact, first, second = r.rows
    assert intact["nonfinite"] == 0 and math.isfinite(intact["error"])
    assert first["nonfinite"] > 0 and math.isnan(first["error"]) and math.isnan(first["loss"])
    assert math.isnan(first["error_lo"]) and first["n"] == 16
    assert r.summary()[0]["nonfinite_trials"] >= 1
    with pytest.warns(RuntimeWarning):  # read back from the file, NaN stays NaN
        back = lesion.delete_each(view, (x, y), out=tmp_path / "nan.csv", progress=False)
    assert math.isnan(back.rows[1]["error"]) and back.rows[1]["nonfinite"] == first["nonfinite"]


# ---- files, loaders and the progress bar --------------------------------------------------------

def test_out_file_rows_equal_result_table_and_json(view, data, tmp_path):
    x, y = data
    out = tmp_path / "each.csv"
    r = lesion.delete_each(view, (x, y), out=out, progress=False)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# pathens lesion sweep {") and '"sweep": "delete_each"' in lines[0]
    assert lines[1:] == r.to_csv().splitlines()
    import json
    d = json.loads(r.to_json())
    assert d["sweep"] == "delete_each" and len(d["rows"]) == 10 and d["num_examples"] == 30
    shuffled = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    other = lesion.delete_each(view, shuffled, progress=False)
    assert [a["errors"] for a in other.rows] == [a["errors"] for a in r.rows]
    assert [a["loss"] for a in other.rows] == pytest.approx([a["loss"] for a in r.rows], rel=1e-12)


def test_progress_bar_counts_conditions(view, data, capsys):
    x, y = data
    lesion.delete_each(view, (x, y), batch_size=10, progress=True)
    err = capsys.readouterr().err
    assert "/10 conditions" in err and "delete_each" in err
    lesion.delete_each(view, (x, y), progress=False)
    assert capsys.readouterr().err == ""


def test_bad_settings_refused(view, data, tmp_path):
    x, y = data
    with pytest.raises(PathensError, match="group_size must be a positive integer"):
        lesion.delete_each(view, (x, y), out=tmp_path / "a.csv", group_size=0, progress=False)
    with pytest.raises(PathensError, match="needs BatchNorm layers"):
        skip = pathens.wrap(small_resnet(20, **VARIANTS[4][1]))
        lesion.delete_each(skip, (x, y), recalibrate=x, progress=False)
    with pytest.raises(PathensError, match="is a folder"):
        lesion.delete_each(view, (x, y), out=tmp_path, progress=False)
    with pytest.raises(PathensError, match="ks must be positive integers"):
        lesion.delete_random(view, (x, y), ks=[1.5], progress=False)
    assert not (tmp_path / "a.csv").exists()
