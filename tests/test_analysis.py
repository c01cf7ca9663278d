"""The whole analysis and its report, as a script calls them: documented, the same as the
command line's, refusing bad settings before any work, and covering plain networks (Veit et
al.'s residual-vs-plain contrast) as well as residual ones."""
from __future__ import annotations

import inspect
import json
import re
from dataclasses import fields

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pathens  # noqa: E402
from pathens import analysis, report  # noqa: E402
from pathens.errors import PathensError  # noqa: E402
from nets import batch, small_resnet  # noqa: E402

SETTINGS = dict(samples_per_length=2, trials=2, gradient_examples=8, progress=False,
                log=lambda line: None)


def labelled(view, n=16):
    """Inputs and the intact network's own predictions, three of them flipped: an untrained
    net's error on random labels hardly moves under lesions, its disagreement with itself does."""
    x, _ = batch(n)
    with torch.no_grad():
        y = view.run(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    return x, y


@pytest.fixture(scope="module")
def residual():
    view = pathens.wrap(small_resnet(14, width=4))
    return analysis.analyze(view, labelled(view), name="ResNet-14", **SETTINGS)


@pytest.fixture(scope="module")
def plain_view():
    torch.manual_seed(0)
    model = pathens.cifar_resnet(14, width=4, skip=False).double().eval()
    return pathens.wrap(model, allow_plain=True)


@pytest.fixture(scope="module")
def plain(plain_view):
    return analysis.analyze(plain_view, labelled(plain_view), name="plain-14", **SETTINGS)


# ---- public and documented ---------------------------------------------------------------------

def documented(fn, names):
    doc = inspect.getdoc(fn)
    return [n for n in names if not re.search(rf"(^|\s|,){n}[:,]", doc, re.M)]


def test_analyze_and_write_document_every_argument_and_field():
    args = [p for p in inspect.signature(analysis.analyze).parameters]
    assert documented(analysis.analyze, args) == []
    assert "Returns an Analysis" in inspect.getdoc(analysis.analyze)
    assert documented(analysis.Analysis, [f.name for f in fields(analysis.Analysis)]) == []
    assert documented(report.write, list(inspect.signature(report.write).parameters)) == []
    assert "report.md" in inspect.getdoc(report.write)
    assert "write" in report.__all__ and "analyze" in analysis.__all__


@pytest.mark.xfail(not hasattr(pathens, "analyze"), strict=True,
                   reason="pathens/__init__.py does not export analyze and report yet")
def test_the_package_exports_analyze_and_report():
    assert pathens.analyze is analysis.analyze and pathens.Analysis is analysis.Analysis
    assert pathens.report.write is report.write


def test_a_script_gets_the_command_lines_report(tmp_path):
    """pathens analyze and analyze() + report.write() with the same settings write the same
    numbers: results.json equal but for timings and what the caller says about the data."""
    from pathens.cli import main
    from pathens.data.datasets import load_dataset

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    model = pathens.cifar_resnet(8, width=4, in_channels=1, num_classes=10).eval()
    pathens.save_checkpoint(ckpt, model, dataset="digits", seed=0, epochs=0, accuracy=0.1)
    assert main(["analyze", str(ckpt), "--samples", "2", "--trials", "2", "--gradient-examples",
                 "8", "--limit", "24", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    model, meta = pathens.load(ckpt)
    x, y = load_dataset("digits", split="test", limit=24)
    a = analysis.analyze(pathens.wrap(model, example_input=x[:2]), (x, y), name="tiny",
                         model_info=meta, **SETTINGS)
    report.write(tmp_path / "script", [a])

    def numbers(folder):
        doc = json.loads((folder / "results.json").read_text())["models"]["tiny"]
        doc.pop("data")
        return untimed(doc)

    assert numbers(tmp_path / "cli") == numbers(tmp_path / "script")
    table = [ln for ln in (tmp_path / "cli" / "report.md").read_text().splitlines()
             if ln.startswith("| tiny |")]
    assert table and all(ln in (tmp_path / "script" / "report.md").read_text() for ln in table)


def untimed(doc):
    """doc without its "seconds" entries (timings), at any depth."""
    if isinstance(doc, dict):
        return {k: untimed(v) for k, v in doc.items() if k != "seconds"}
    if isinstance(doc, list):
        return [untimed(v) for v in doc]
    return doc


# ---- checks before the long work ---------------------------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Any measurement raising: a refusal must come before the first one."""
    def fail(*args, **kwargs):
        raise AssertionError("a measurement ran before the arguments were checked")

    for name in ("path_gradients", "branch_variance"):
        monkeypatch.setattr(analysis, name, fail)
    for name in ("delete_each", "delete_random", "reorder"):
        monkeypatch.setattr(analysis.lesion, name, fail)


@pytest.mark.parametrize("kwargs, match", [
    (dict(examples=1), "at least 2 examples"),
    (dict(gradient_examples=0), "gradient_examples must be a positive integer"),
    (dict(samples_per_length=2.5), "samples_per_length must be a non-negative integer"),
    (dict(trials=0), "trials must be a positive integer"),
    (dict(seed=-1), "seed must be an integer in 0..2"),
    (dict(seed=2 ** 63), "seed must be an integer in 0..2"),
    (dict(level=1.5), "level must be a number in"),
    (dict(margin=float("nan")), "margin must be an error increase"),
    (dict(ks=[2, 2]), "ks lists 2 more than once"),
    (dict(ks=[99]), "ks: 99 is more than the 4 blocks"),
    (dict(ks=[]), "ks is empty"),
    (dict(swaps=[0]), "swaps must be positive integers"),
    (dict(swaps=[5]), "swaps: 5 is more than the 1 disjoint swaps"),
    (dict(name=""), "name must be a non-empty string"),
])
def test_bad_settings_are_refused_before_any_work(no_work, kwargs, match):
    view = pathens.wrap(small_resnet(14, width=4))
    x, y = batch(kwargs.pop("examples", 4))
    with pytest.raises(PathensError, match=re.escape(match)):
        analysis.analyze(view, (x, y), **dict(SETTINGS, **kwargs))


def test_an_unusable_lesion_dir_is_refused_before_any_work(no_work, tmp_path):
    view = pathens.wrap(small_resnet(8, width=4))
    (tmp_path / "file").write_text("")
    with pytest.raises(PathensError, match="cannot create lesion_dir"):
        analysis.analyze(view, batch(4), lesion_dir=tmp_path / "file" / "sweeps", **SETTINGS)


# ---- plain networks ----------------------------------------------------------------------------

def test_plain_network_gets_the_lesions_that_apply(plain_view, plain):
    """A plain network: lesions of its shape-preserving layers, no path gradients; deleting a
    layer is the same as replacing it by the identity in the model itself."""
    model = plain_view.model
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, a, o, name=name: shapes.__setitem__(
        name, (tuple(a[0].shape[1:]), tuple(o.shape[1:]))))
        for name, m in model.named_modules() if isinstance(m, pathens.models.ResidualBlock)]
    x, y = labelled(plain_view)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    keeps = [i for i, (name, (a, b)) in enumerate(shapes.items()) if a == b]
    assert not plain.residual and plain.exact is None and plain.sampled is None
    assert plain.variance is None and list(plain.depth) == ["lesion"]
    rows = [r for r in plain.delete_each.rows if r["kind"] == "delete"]
    assert [r["deleted"] for r in rows] == [[i] for i in keeps] and len(keeps) < len(shapes)
    # the oracle: the model with that layer's forward swapped for the identity
    i = keeps[1]
    layer = dict(model.named_modules())[list(shapes)[i]]
    layer.forward = lambda h: h
    try:
        with torch.no_grad():
            error = (model(x).argmax(1) != y).double().mean().item()
    finally:
        del layer.forward
    assert rows[1]["error"] == pytest.approx(error, abs=1e-12)
    assert plain.delete_random is not None and plain.reorder is not None
    assert plain.config["ks"] == analysis.doubling(len(keeps))
    assert plain.depth["lesion"].details["single_tested"] == len(keeps)
    # one example is enough for lesions (no variance over examples is needed)
    one = analysis.analyze(plain_view, (x[:1], y[:1]), name="one", ks=[1], swaps=[1], **dict(
        SETTINGS, trials=1))
    assert one.delete_each.num_examples == 1


@pytest.fixture(scope="module")
def written(residual, plain, tmp_path_factory):
    """One report of both networks (written once: figures are the slow part), with what each
    saved figure showed: its title, its panels' titles, legend texts and y labels."""
    out, saved = tmp_path_factory.mktemp("report"), {}
    original = report.writer._save

    def keep(fig, folder, name):
        saved[name] = (fig._suptitle.get_text() if fig._suptitle else "",
                       [ax.get_title() for ax in fig.axes],
                       [t.get_text() for ax in fig.axes if ax.get_legend()
                        for t in ax.get_legend().get_texts()],
                       [ax.get_ylabel() for ax in fig.axes])
        return original(fig, folder, name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.writer, "_save", keep)
        path = report.write(out, [residual, plain], title="residual vs plain")
    plt.close("all")
    return path, saved


def test_report_compares_a_residual_and_a_plain_network(residual, written, tmp_path):
    path, _ = written
    folder, text = path.parent, path.read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in text.splitlines()
            if ln.startswith(("| ResNet-14 |", "| plain-14 |"))}
    assert "n/a (plain network: one path)" in rows["plain-14"]
    assert "n/a (plain network: one path)" not in rows["ResNet-14"]
    section = text.split("## plain-14")[1]
    assert "not applicable: a plain network has a single path" in section
    assert "plain-14_paths.png" not in text and "plain-14_lesions.png" in section
    assert (folder / "comparison_lesions.png").stat().st_size > 10_000
    assert not (folder / "comparison.png").exists()  # one residual network: nothing to compare
    assert not (folder / "plain-14_gradients_exact.csv").exists()
    doc = json.loads((folder / "results.json").read_text())["models"]
    assert doc["plain-14"]["exact"] is None and doc["plain-14"]["residual"] is False
    assert doc["ResNet-14"]["exact"]["num_blocks"] == 6
    with pytest.raises(PathensError, match="would write the same files"):
        report.write(tmp_path, [residual, residual])


# ---- what the report says -----------------------------------------------------------------------

def test_report_explains_exact_vs_sampled_and_the_lesion_depth(residual, written):
    text = written[0].read_text()
    head, section = text.split("## ResNet-14")[0], text.split("## ResNet-14")[1]
    assert "norm of the *sum*" in head and "sum of norms" in head
    ed = residual.depth["lesion"]
    lo, hi = ed.interval
    row = next(ln for ln in section.splitlines() if ln.startswith("| lesion |"))
    assert f"{lo}-{hi} (95% CI)" in row and "n/a" not in row and "nan" not in row
    (top,) = [ln for ln in head.splitlines() if ln.startswith("| ResNet-14 |")]
    single = ed.details
    assert f"{int(ed.depth)} (CI {lo}-{hi}; margin 2 points)" in top
    assert f"| {single['single_within']} of {single['single_tested']} |" in top
    assert "Lesion depth:" in section and "nan" not in ed.describe().lower()
    exact, sampled = (residual.depth[k].mean for k in ("gradient (exact)", "gradient (sampled)"))
    assert f"mean length {sampled:.2f} against the exact {exact:.2f}" in section


def test_every_report_figure_has_a_title_naming_its_network(written):
    saved = written[1]
    assert set(saved) == {"resnet-14_paths.png", "resnet-14_per_path.png",
                          "resnet-14_lesions.png", "resnet-14_influence.png",
                          "plain-14_lesions.png", "comparison_lesions.png"}
    for name, (suptitle, titles, legend, ylabels) in saved.items():
        owner = "ResNet-14" if name.startswith("resnet") else "plain-14"
        heading = suptitle or titles[0]
        assert owner in heading, (name, heading)
        assert all(titles), (name, titles)  # every panel says what it shows
        assert not any("sampled (sampled)" in t for t in legend), (name, legend)
        assert not any("models:" in y for y in ylabels), (name, ylabels)
    assert any("ResNet-14" in t for t in saved["resnet-14_per_path.png"][2])
    assert "plain-14" in saved["comparison_lesions.png"][0]
