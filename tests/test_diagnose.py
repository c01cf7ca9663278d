"""The diagnostics as the report gives them: `pathens diagnose` and analyze(diagnose=...) hold
the numbers of the measurement functions called directly on the same data (the oracle: the
API against the report), every section and figure is written, and bad input is refused in one
line with nothing written."""
from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pytest
import torch
from cli_helpers import checkpoint, refused, run
from nets import batch, small_resnet

import pathens
from pathens import analysis
from pathens.cli.arguments import DIAGNOSTICS
from pathens.data.datasets import load_dataset
from pathens.errors import PathensError
from pathens.measure.registry import MEASUREMENTS, diagnostics
from pathens.models.modes import recalibrate_batchnorm

matplotlib.use("Agg")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
LIMIT = 40  # digits test examples every CLI run reads


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Untrained depth-8, width-4 digits networks: BatchNorm and plain."""
    folder = tmp_path_factory.mktemp("ckpts")
    return {"bn": checkpoint(folder / "bn.pt"),
            "plain": checkpoint(folder / "plain.pt", skip=False, seed=2)}


def digits():
    return load_dataset("digits", split="test", limit=LIMIT)


def close(stored, value, rtol=1e-9):
    """A number of results.json (None for NaN) against the API's."""
    got = np.array([math.nan if v is None else v for v in np.ravel(stored)], float)
    np.testing.assert_allclose(got, np.ravel(np.asarray(value, float)), rtol=rtol, atol=1e-300)


def test_the_diagnostics_are_registered_and_named_in_the_help():
    names = tuple(m.name for m in MEASUREMENTS.values() if m.diagnostic)
    assert names == DIAGNOSTICS
    assert all(not MEASUREMENTS[n].residual for n in DIAGNOSTICS)  # plain networks: per layer
    assert list(diagnostics(True)) == list(names)
    assert list(diagnostics(("singularities", "signal"))) == ["signal", "singularities"]
    assert diagnostics({"jacobians": {"k": 2}})["jacobians"]["k"] == 2
    assert diagnostics(False) == {}


def test_pathens_diagnose_report_holds_the_api_numbers(capsys, ckpts, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "diagnose", *ckpts.values(), "--limit", LIMIT, "--jacobian-k", 2,
                       "--jacobian-iters", 40, "--eps", 0.01, "--out", out, "--quiet")
    assert code == 0, err
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())["models"]
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "diagnose" and config["diagnostics"]["jacobians"]["k"] == 2
    assert config["models"]["bn"]["dataset"] == "digits"
    x, y = digits()
    for name, path in ckpts.items():
        model, _ = pathens.load(path)
        view = pathens.wrap(model, allow_plain=True, example_input=x[:2])
        sp = pathens.signal_propagation(view, (x, y), progress=False)
        js = pathens.block_jacobian_spectra(view, x[:2], k=2, iters=40, seed=0)
        si = pathens.singularities(view, (x, y), eps=0.01, progress=False)
        stored = results[name]
        assert stored["residual"] == (name != "plain")
        assert stored["config"]["diagnose"]["singularities"]["eps"] == 0.01
        for key in ("channel_mean_sq", "channel_variance", "branch_variance", "grad_norm",
                    "norm_ratio"):
            close(stored["signal_propagation"][key], getattr(sp, key))
        for key in ("top", "bottom", "branch_top", "isometry_gap"):
            close(stored["jacobian_spectra"][key], getattr(js, key))
        assert stored["jacobian_spectra"]["config"]["examples"] == 2
        for key in ("eliminated", "overlapping_units", "participation_ratio", "components"):
            close(stored["singularities"][key], getattr(si, key))
        assert stored["singularities"]["names"] == list(si.names)
        # the report: its sections, figures and the side-by-side table, from the same numbers
        unit = "block" if name != "plain" else "layer"
        assert f"## {name}\n" in report
        for title in ("signal propagation", "block Jacobian spectra", "singularities"):
            assert f"### {name}: {title}" in report
        for suffix in ("signal", "jacobians", "singularities"):
            assert f"({name}_{suffix}.png)" in report and (out / f"{name}_{suffix}.png").is_file()
        assert f"{name}_signal_propagation.csv" in {p.name for p in out.iterdir()}
        row = next(r for r in report.splitlines() if r.startswith(f"| {name} |"))
        assert f"| {view.num_blocks} {unit}s |" in row
        reach = sp.gradient_reach()
        assert (f"| {reach:.3g} |" if np.isfinite(reach) else "| n/a |") in row
    assert "plain network: per layer" in report
    assert "### plain: signal propagation (plain network: per layer, no branch)" in report
    for file in ("comparison_signal.png", "comparison_jacobians.png",
                 "comparison_singularities.png"):
        assert f"]({file})" in report and (out / file).stat().st_size > 10_000
    for note in ("**Signal propagation and norm preservation.**", "**Block Jacobian spectra.**",
                 "**Singularities.**"):
        assert report.count(note) == 1


def test_recalibrated_batchnorm_is_measured_as_the_api_gives_it(capsys, ckpts, tmp_path):
    """--recalibrate N: the BatchNorm statistics re-estimated on the first N training examples
    (pathens.modes.recalibrate_batchnorm), then measured; recorded with the model."""
    out = tmp_path / "out"
    code, _, err = run(capsys, "diagnose", ckpts["bn"], "--only", "signal", "--recalibrate", 24,
                       "--limit", 16, "--out", out, "--quiet")
    assert code == 0, err
    stored = json.loads((out / "results.json").read_text())["models"]["bn"]
    assert "recalibrated on 24 examples (the train split of digits)" in stored["model"]["batchnorm"]
    assert list(stored["config"]["diagnose"]) == ["signal"] and "jacobian_spectra" not in stored
    model, _ = pathens.load(ckpts["bn"])
    before = pathens.signal_propagation(pathens.wrap(model), load_dataset(
        "digits", split="test", limit=16), progress=False)
    with torch.no_grad():
        recalibrate_batchnorm(model, load_dataset("digits", split="train", limit=24)[0])
    sp = pathens.signal_propagation(pathens.wrap(model), load_dataset("digits", split="test",
                                                                      limit=16), progress=False)
    close(stored["signal_propagation"]["channel_variance"], sp.channel_variance)
    close(stored["signal_propagation"]["grad_norm"], sp.grad_norm)
    assert not np.allclose(before.channel_variance, sp.channel_variance)  # it did change


def labelled(view, n=12):
    x, _ = batch(n)
    with torch.no_grad():
        y = view.run(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    return x, y


def test_analyze_diagnose_equals_the_direct_calls(tmp_path):
    view = pathens.wrap(small_resnet(8, width=4))
    x, y = labelled(view)
    settings = dict(samples_per_length=2, trials=2, gradient_examples=8, progress=False,
                    log=lambda line: None)
    chosen = {"signal": {}, "jacobians": {"examples": 3, "k": 2, "iters": 30},
              "singularities": {"delta": 0.05},
              "hessian": {"top_k": 2, "trace_probes": 4, "density_probes": 1,
                          "lanczos_steps": 8}}
    a = analysis.analyze(view, (x, y), name="ResNet-8", diagnose=chosen, batch_size=5,
                         **settings)
    sp = pathens.signal_propagation(view, (x, y), progress=False)
    js = pathens.block_jacobian_spectra(view, x[:3], k=2, iters=30, seed=0)
    si = pathens.singularities(view, (x, y), delta=0.05, progress=False)
    he = pathens.hessian(view, (x, y), top_k=2, trace_probes=4, density_probes=1,
                         lanczos_steps=8, eps=1e-2, tol=1e-3, batch_size=5, seed=0,
                         progress=False)
    got = a.results
    assert list(got)[-4:] == ["signal_propagation", "jacobian_spectra", "singularities",
                              "hessian"]
    np.testing.assert_allclose(got["hessian"].eigenvalues, he.eigenvalues, rtol=1e-9)
    np.testing.assert_allclose(got["hessian"].trace_samples, he.trace_samples, rtol=1e-9)
    assert got["hessian"].degenerate_mass == pytest.approx(he.degenerate_mass, abs=1e-9)
    for key in ("channel_mean_sq", "channel_variance", "branch_variance", "grad_norm"):
        np.testing.assert_allclose(getattr(got["signal_propagation"], key), getattr(sp, key),
                                   rtol=1e-12)  # batches of 5 against one of 12: rounding
    np.testing.assert_array_equal(got["jacobian_spectra"].top, js.top)
    np.testing.assert_array_equal(got["jacobian_spectra"].bottom, js.bottom)
    for key in ("eliminated", "overlapping_units", "participation_ratio", "components"):
        np.testing.assert_allclose(getattr(got["singularities"], key), getattr(si, key),
                                   rtol=1e-9)
    assert a.config["diagnose"]["jacobians"] == {"examples": 3, "k": 2, "iters": 30, "tol": 1e-6}
    assert a.config["diagnose"]["singularities"]["delta"] == 0.05
    # the default: no diagnostic; a name: that one alone
    plain_view = pathens.wrap(small_resnet(8, width=4, skip=False), allow_plain=True)
    none = analysis.analyze(view, (x, y), name="none", **settings)
    assert none.config["diagnose"] is False and "signal_propagation" not in none.results
    plain = analysis.analyze(plain_view, labelled(plain_view), name="plain-8", diagnose="signal",
                             **settings)
    assert list(plain.results) == ["signal_propagation"]
    assert plain.results["signal_propagation"].unit == "layer"
    # the report of analyses: their sections and the comparison the registry draws
    path = pathens.report.write(tmp_path, [a, plain])
    text = path.read_text()
    assert "### ResNet-8: singularities" in text and "(comparison_signal.png)" in text
    assert "### ResNet-8: the Hessian" in text and (tmp_path / "resnet-8_hessian.png").is_file()
    assert text.count("**The Hessian.**") == 1
    assert (tmp_path / "resnet-8_jacobians.png").is_file()
    assert "(comparison_jacobians.png)" not in text  # one network has them: nothing to compare
    stored = json.loads((tmp_path / "results.json").read_text())["models"]
    assert stored["plain-8"]["singularities"] is None
    close(stored["ResNet-8"]["signal_propagation"]["grad_norm"],
          got["signal_propagation"].grad_norm)


def test_fixup_at_initialisation_is_its_shortcuts():
    """Fixup's branches end in zero-initialised layers and its classifier is zero: the stream
    passes the blocks unchanged (ratio 1 where the shape is kept) and no gradient reaches it,
    which the text says rather than printing a ratio of zeros."""
    torch.manual_seed(0)
    view = pathens.wrap(pathens.cifar_resnet(8, width=4, norm="fixup").double().eval())
    x, y = batch(6)
    d = pathens.diagnose(view, (x, y), which=("signal", "jacobians"), progress=False,
                         log=lambda line: None)
    sp, js = d.results["signal_propagation"], d.results["jacobian_spectra"]
    assert np.all(sp.branch_variance == 0) and np.all(sp.grad_norm == 0)
    assert math.isnan(sp.gradient_reach())
    assert "classifier initialised to zero" in " ".join(sp.summary_lines())
    np.testing.assert_array_equal(js.branch_top, 0)  # each branch's Jacobian is 0
    assert d.config["diagnose"] == diagnostics(("signal", "jacobians"))


def test_api_refusals():
    view = pathens.wrap(small_resnet(8, width=4))
    x, y = labelled(view, 4)
    for bad, match in [("hessianx", "unknown diagnostic 'hessianx'"), (3, "diagnose must be"),
                       ({"singularities": {"delta": 1.5}}, "delta must be a number in (0, 1)"),
                       ({"singularities": {"eps": -1}}, "eps must be a non-negative number"),
                       ({"singularities": {"epsilon": 1}}, "has no option 'epsilon'"),
                       ({"jacobians": {"k": 0}}, "k must be an integer >= 1"),
                       ({"signal": {"k": 1}}, "takes no options")]:
        with pytest.raises(PathensError, match=match.replace("(", r"\(").replace(")", r"\)")):
            analysis.analyze(view, (x, y), diagnose=bad, progress=False)
        with pytest.raises(PathensError):
            pathens.diagnose(view, (x, y), which=bad, progress=False)
    with pytest.raises(PathensError, match="at least 2 examples"):
        pathens.diagnose(view, (x[:1], y[:1]), progress=False)
    with pytest.raises(PathensError, match="chooses no diagnostic"):
        pathens.diagnose(view, (x, y), which=(), progress=False)


def overflowing(path, x):
    """A BN network whose logit 0 overflows to inf on some of the examples x but not on the
    first two (the probe that wrap checks): a non-finite loss only the diagnostics meet."""
    torch.manual_seed(3)
    model = pathens.cifar_resnet(8, width=4, in_channels=1, num_classes=10).eval()
    seen = {}
    hook = model.linear.register_forward_hook(lambda m, a, o: seen.setdefault("h", a[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    h = seen["h"]
    j = int(torch.argmax(h[2:].max(0).values - h[:2].max(0).values))
    threshold = float(h[:2, j].max() + h[2:, j].max()) / 2
    assert h[2:, j].max() > threshold > h[:2, j].max()
    with torch.no_grad():
        model.linear.weight[0].zero_()
        model.linear.weight[0, j] = 3e38 / threshold
    return pathens.save_checkpoint(path, model, dataset="digits", seed=3, epochs=0,
                                   accuracy=None)


def test_cli_refusals_write_nothing(capsys, ckpts, tmp_path):
    out = tmp_path / "out"
    bn = ckpts["bn"]
    cases = [
        (("--eps", -1), "--eps must be a non-negative number"),
        (("--delta", 1.5), "--delta must be a number in (0, 1)"),
        (("--share", 0), "--share must be a fraction in (0, 1]"),
        (("--variance", "nan"), "--variance must be a fraction in (0, 1]"),
        (("--jacobian-k", 0), "--jacobian-k must be a positive integer"),
        (("--only", "hessianx"), "unknown diagnostic 'hessianx'"),
        (("--only", "signal", "--eps", 0.1),
         "--eps is an option of the diagnostic 'singularities', which this run leaves out"),
        (("--limit", 1), "the diagnostics need at least 2"),
    ]
    for flags, match in cases:
        refused(capsys, "diagnose", bn, *flags, "--out", out, "--quiet", match=match)
        assert not out.exists()
    refused(capsys, "analyze", bn, "--eps", 0.1, "--out", out, "--quiet",
            match="add --diagnose")
    refused(capsys, "compare", bn, bn, "--diagnose", "signal", "--delta", 0.1, "--out", out,
            match="add singularities to --diagnose")
    # a network with no residual blocks (nor layers pathens can take one by one)
    (tmp_path / "mlp.py").write_text(
        "import torch\n\ndef mlp():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
        "torch.nn.Linear(64, 10))\n")
    refused(capsys, "diagnose", "--model", f"{tmp_path / 'mlp.py'}:mlp", "--data", "digits",
            "--out", out, "--quiet", match="has no residual additions at all")
    # a layer of one unit: no correlation, no overlap (found by the singularities' first pass)
    torch.manual_seed(0)
    thin = pathens.save_checkpoint(tmp_path / "thin.pt", pathens.cifar_resnet(
        8, width=1, in_channels=1), dataset="digits", seed=0, epochs=0, accuracy=None)
    refused(capsys, "diagnose", thin, "--limit", 8, "--only", "singularities", "--out", out,
            "--quiet", match="singularities need at least 2 units per layer")
    # a non-finite loss, met by signal propagation after wrap's probe passed
    x, _ = digits()
    bad = overflowing(tmp_path / "overflow.pt", x)
    refused(capsys, "diagnose", bad, "--limit", LIMIT, "--out", out, "--quiet",
            match="the loss is not finite")
    assert not out.exists()
