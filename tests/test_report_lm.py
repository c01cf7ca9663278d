"""analyze and the report for language models, against independent computations: a streamed
loader against the same examples as one pair, the Block Influence against
importance.block_influence and each deletion's cost against lesion.evaluate, the rank
correlation against scipy's, and the report's figures drawing attention and MLP sublayers
apart (their artists' data and legend entries), beside a CNN whose report is as before."""
from __future__ import annotations

import json
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import pathens  # noqa: E402
from pathens import analysis, importance, lesion, report  # noqa: E402
from pathens.errors import PathensError  # noqa: E402
from nets import batch, small_resnet  # noqa: E402

SETTINGS = dict(samples_per_length=2, trials=2, gradient_examples=5, progress=False,
                log=lambda line: None)
N, T = 8, 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster (and much faster on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def view(one_thread):
    """The brief's tiny pre-LN GPT (4 blocks), float64, weights large enough that every
    sublayer's deletion changes the loss by its own amount."""
    torch.manual_seed(0)
    model = pathens.gpt(depth=2, width=16, heads=2, context=16, norm="pre").double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return pathens.wrap(model.eval())


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (N, T), generator=torch.Generator().manual_seed(1))


def loader(ids, size=3):
    """The same sequences in batches of 3 (3 + 3 + 2): partitions unlike the pair's one batch,
    and gradient_examples=5 spans two of them."""
    return DataLoader(TensorDataset(ids, ids), batch_size=size)


@pytest.fixture(scope="module")
def lm(view, ids):
    return analysis.analyze(view, (ids, ids), name="GPT-2x16", **SETTINGS)


@pytest.fixture(scope="module")
def streamed(view, ids):
    return analysis.analyze(view, loader(ids), name="GPT-2x16", **SETTINGS)


def rows(result):
    return [{k: r[k] for k in ("kind", "k", "trial", "deleted", "order", "errors", "n",
                               "nonfinite")} for r in result.rows]


def values(result, key):
    return np.array([r[key] for r in result.rows], float)


# ---- the analysis ----------------------------------------------------------------------------

def test_a_streamed_loader_gives_the_pairs_numbers(view, ids, lm, streamed):
    assert lm.tokens and lm.config["loss"] == "next_token" and lm.config["unit"] == "block"
    assert lm.delete_each.num_examples == N * (T - 1)  # every next token
    assert lm.delete_each.sublayers == ("attn", "mlp", "attn", "mlp")
    for key in ("delete_each", "delete_random", "reorder"):
        a, b = getattr(lm, key), getattr(streamed, key)
        assert rows(a) == rows(b), key
        for v in ("error", "loss"):
            np.testing.assert_allclose(values(b, v), values(a, v), rtol=1e-12, err_msg=key)
    np.testing.assert_allclose(streamed.variance.ratios, lm.variance.ratios, rtol=1e-10)
    np.testing.assert_allclose(streamed.influence.influence, lm.influence.influence, rtol=1e-10)
    assert streamed.influence.num_items == lm.influence.num_items == N * T
    # the path gradients: the first 5 sequences, read from the loader's first two batches
    assert lm.config["gradient_examples"] == streamed.config["gradient_examples"] == 5
    np.testing.assert_array_equal(streamed.exact.total, lm.exact.total)
    np.testing.assert_array_equal(streamed.sampled.total, lm.sampled.total)
    direct = pathens.path_gradients(view, ids[:5], ids[:5], progress=False)
    np.testing.assert_allclose(lm.exact.total, direct.total, rtol=1e-12)
    for k in lm.depth:
        assert streamed.depth[k].depth == pytest.approx(lm.depth[k].depth, rel=1e-9), k
    same = {k: v for k, v in lm.config.items() if k != "seconds"}
    assert same == {k: v for k, v in streamed.config.items() if k != "seconds"}
    assert same["examples"] == N and same["tokens"] == N * (T - 1)


def test_the_influence_table_is_block_influence_and_the_deletion_cost(view, ids, lm):
    bi = importance.block_influence(view, (ids, ids), unit="block", batch_size=256)
    np.testing.assert_array_equal(lm.influence.influence, bi.influence)
    c = lm.influence_vs_deletion
    table = c.table()
    assert [r["name"] for r in table] == ["h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp"]
    assert [r["sublayer"] for r in table] == ["attn", "mlp", "attn", "mlp"]
    np.testing.assert_array_equal([r["influence"] for r in table], bi.influence)
    intact = lesion.evaluate(view, (ids, ids))["loss"]
    for r in table:  # each cost by its own evaluation of the lesioned network
        alone = lesion.evaluate(view, (ids, ids), deleted=[r["index"]])["loss"]
        assert r["deleted_loss"] == pytest.approx(alone, rel=1e-12)
        assert r["loss_increase"] == pytest.approx(alone - intact, rel=1e-9, abs=1e-12)
    assert len({round(r["loss_increase"], 9) for r in table}) == 4  # four distinct costs
    rho = stats.spearmanr([r["influence"] for r in table], [r["loss_increase"] for r in table])
    assert c.spearman == pytest.approx(rho.statistic, abs=1e-12) and len(c.compared) == 4
    assert c.pvalue == pytest.approx(rho.pvalue, abs=1e-12)


def test_whole_layers_pair_with_the_layer_deletions(view, ids):
    a = analysis.analyze(view, (ids, ids), name="layers", unit="layer", ks=[1, 2], swaps=[1],
                         **dict(SETTINGS, samples_per_length=0))
    bi = importance.block_influence(view, (ids, ids), unit="layer", batch_size=256)
    c = a.influence_vs_deletion
    assert c.unit == "layer" and c.names == ("h.0", "h.1") and c.blocks == ((0, 1), (2, 3))
    np.testing.assert_array_equal(c.influence, bi.influence)
    both = lesion.evaluate(view, (ids, ids), deleted=[2, 3])["loss"]
    assert c.deleted_loss[1] == pytest.approx(both, rel=1e-12)
    assert math.isnan(c.spearman)  # two layers: a rank correlation says nothing
    assert a.config["unit"] == "layer" and a.delete_each.config["unit"] == "layer"
    assert [r["deleted"] for r in a.delete_random.rows if r["k"] == 2] == [[0, 1, 2, 3]] * 2


def test_the_cnn_analysis_keeps_its_sweeps_and_gains_the_influence(tmp_path):
    """A CNN's sweep files record what they always did (no loss, no unit: files written before
    still resume), a second run recomputes nothing, and its Block Influence leaves the
    downsampling blocks out (NaN: the stream changes shape)."""
    view = pathens.wrap(small_resnet(14, width=4))
    x, y = batch(8)
    a = analysis.analyze(view, (x, y), name="cnn", lesion_dir=tmp_path, **SETTINGS)
    first = json.loads((tmp_path / "delete_each.csv").read_text().splitlines()[0]
                       .removeprefix("# pathens lesion sweep "))
    assert "loss" not in first and "unit" not in first and a.delete_each.sublayers == ()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pathens.measure.lesion_engine, "evaluate_group",
                   lambda *args, **kw: pytest.fail("a finished condition was recomputed"))
        again = analysis.analyze(view, (x, y), name="cnn", lesion_dir=tmp_path, **SETTINGS)
    assert again.delete_each.rows == a.delete_each.rows
    c = a.influence_vs_deletion
    down = list(a.delete_each.downsampling_blocks)
    assert np.isnan(c.influence[down]).all() and not set(down) & set(c.compared)
    assert len(c.compared) == a.num_blocks - len(down)


def test_influence_false_skips_it_and_its_figure(tmp_path):
    view = pathens.wrap(small_resnet(8, width=4))
    a = analysis.analyze(view, batch(4), name="cnn", influence=False,
                         **dict(SETTINGS, samples_per_length=0))
    assert a.influence is None and a.influence_vs_deletion is None
    assert a.config["influence"] is False
    path, saved = written(tmp_path, [a])
    assert "cnn_influence.png" not in saved and not (tmp_path / "cnn_block_influence.csv").exists()
    (row,) = [ln for ln in path.read_text().splitlines() if ln.startswith("| cnn |")]
    assert row.endswith("| not run |")
    plt.close("all")


@pytest.fixture
def no_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a measurement ran before the arguments were checked")

    for name in ("path_gradients", "branch_variance"):
        monkeypatch.setattr(analysis, name, fail)
    monkeypatch.setattr(pathens.measure.influence_cost, "block_influence", fail)
    for name in ("delete_each", "delete_random", "reorder"):
        monkeypatch.setattr(analysis.lesion, name, fail)


@pytest.mark.parametrize("kwargs, match", [
    (dict(unit="sublayer"), "unit must be 'block' or 'layer'"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(influence="yes"), "influence must be True or False"),
    (dict(loss="perplexity"), "unknown loss 'perplexity'"),
    (dict(loss="classification"), "are next-token targets, but the loss is 'classification'"),
    (dict(unit="layer", ks=[3]), "ks: 3 is more than the 2 layers"),
])
def test_bad_settings_are_refused_before_any_work(no_work, view, ids, kwargs, match):
    with pytest.raises(PathensError, match=re.escape(match)):
        analysis.analyze(view, (ids, ids), **dict(SETTINGS, **kwargs))


def test_bad_loaders_are_refused_before_any_work(no_work, view, ids):
    with pytest.raises(PathensError, match="at least 2 examples"):
        analysis.analyze(view, [(ids[:1], ids[:1])], **SETTINGS)
    ragged = [(ids[:3], ids[:3]), (ids[3:6, :8], ids[3:6, :8])]
    with pytest.raises(PathensError, match=re.escape("differ in shape ((3, 12) and (3, 8))")):
        analysis.analyze(view, ragged, **SETTINGS)


# ---- the report ------------------------------------------------------------------------------

def written(out, analyses):
    """report.write, keeping every saved figure's axes (legend texts, lines, labels)."""
    saved = {}
    original = report.writer._save

    def keep(fig, folder, name):
        saved[name] = fig
        return original(fig, folder, name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report.writer, "_save", keep)
        path = report.write(out, analyses)
    return path, saved


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def line(ax, label):
    (found,) = [ln for ln in ax.lines if ln.get_label() == label]
    return found


def test_the_report_of_a_language_model(lm, tmp_path):
    path, saved = written(tmp_path, [lm])
    text = path.read_text()
    each = lm.delete_each
    ppl = math.exp(each.intact_loss)
    assert (f"Intact next-token error {each.intact_error:.2%} on {N * (T - 1)} tokens ({N} "
            f"sequences): mean next-token loss {each.intact_loss:.4f}, perplexity {ppl:.4g}"
            in text)
    (row,) = [ln for ln in text.splitlines() if ln.startswith("| GPT-2x16 | 4 |")]
    assert f"{each.intact_error:.2%} (loss {each.intact_loss:.3f}, perplexity {ppl:.4g})" in row
    assert "- Deleting one attention sublayer (attn): next-token loss" in text
    assert "- Deleting one MLP sublayer (mlp): next-token loss" in text
    assert "Lesion depth (on the top-1 next-token error)" in text
    c = lm.influence_vs_deletion
    assert f"Spearman rho {c.spearman:+.2f} (4 blocks; p {c.pvalue:.2g})" in text
    for r in c.table():
        assert f"| {r['index']} | `{r['name']}` | {r['sublayer']} | {r['influence']:.4g} |" in text
    doc = json.loads((tmp_path / "results.json").read_text())["models"]["GPT-2x16"]
    assert doc["config"]["loss"] == "next_token" and doc["config"]["unit"] == "block"
    assert doc["intact_perplexity"] == pytest.approx(ppl)
    assert doc["influence"]["influence"] == pytest.approx(list(lm.influence.influence))
    assert doc["influence_vs_deletion"]["spearman"] == pytest.approx(c.spearman)
    assert doc["delete_each"]["sublayers"] == ["attn", "mlp", "attn", "mlp"]
    csv = (tmp_path / "gpt-2x16_block_influence.csv").read_text().splitlines()
    assert csv[0].startswith("index,name,blocks,sublayer,influence,deleted_loss,loss_increase")
    # the lesion figure: the loss, attention and MLP apart, each with its legend entry
    fig = saved["gpt-2x16_lesions.png"]
    ax = fig.axes[0]
    assert ax.get_ylabel() == "mean next-token loss (nats)"
    labels = legend_texts(ax)
    assert "attention sublayer (attn)" in labels and "MLP sublayer (mlp)" in labels
    loss = {r["deleted"][0]: r["loss"] for r in each.rows if r["kind"] == "delete"}
    for label, blocks in (("attention sublayer (attn)", [0, 2]), ("MLP sublayer (mlp)", [1, 3])):
        ln = line(ax, label)
        np.testing.assert_array_equal(ln.get_xdata(), blocks)
        np.testing.assert_allclose(ln.get_ydata(), [loss[i] for i in blocks])
    assert line(ax, "attention sublayer (attn)").get_color() != \
        line(ax, "MLP sublayer (mlp)").get_color()
    (right,) = ax.child_axes  # the perplexity axis: exp of the loss axis
    assert "perplexity" in right.get_ylabel()
    np.testing.assert_allclose(right.get_ylim(), np.exp(ax.get_ylim()))
    assert "mean next-token loss" in fig._suptitle.get_text()
    # the influence figure: per block, and against the cost, attention and MLP apart
    fig = saved["gpt-2x16_influence.png"]
    per, versus = fig.axes[:2]
    for ax in (per, versus):
        assert {"attention sublayer (attn)", "MLP sublayer (mlp)"} <= set(legend_texts(ax))
    mlp = line(versus, "MLP sublayer (mlp)")
    np.testing.assert_allclose(mlp.get_xdata(), c.influence[[1, 3]])
    np.testing.assert_allclose(mlp.get_ydata(), c.loss_increase[[1, 3]])
    np.testing.assert_allclose(line(per, "attention sublayer (attn)").get_ydata(),
                               c.influence[[0, 2]])
    assert f"Spearman rho {c.spearman:.2f} over 4 blocks" in \
        versus.get_legend().get_title().get_text()
    plt.close("all")


def test_a_report_comparing_a_cnn_and_a_language_model(lm, tmp_path):
    view = pathens.wrap(small_resnet(14, width=4))
    x, _ = batch(8)
    with torch.no_grad():
        y = view.run(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10
    cnn = analysis.analyze(view, (x, y), name="ResNet-14", **SETTINGS)
    path, saved = written(tmp_path, [cnn, lm])
    text = path.read_text()
    section = text.split("\n## ResNet-14\n")[1].split("\n## GPT-2x16\n")[0]
    assert f"Intact error {cnn.intact_error:.2%} on 8 examples" in section
    assert "- Deleting one non-downsampling block: error" in text  # the CNN's line, as before
    for a in (cnn, lm):  # the effective-depth table: the rank correlation beside the depths
        (row,) = [ln for ln in text.splitlines() if ln.startswith(f"| {a.name} |")]
        c = a.influence_vs_deletion
        assert row.endswith(f"| {c.spearman:+.2f} ({len(c.compared)} blocks; p "
                            f"{c.pvalue:.2g}) |"), row
    # one axis for both: the error (the one number both have), the GPT's sublayers apart
    ax = saved["comparison_lesions.png"].axes[0]
    labels = legend_texts(ax)
    assert {"GPT-2x16: attention sublayer (attn)", "GPT-2x16: MLP sublayer (mlp)",
            "ResNet-14: downsampling blocks"} <= set(labels)
    assert "language models" in ax.get_ylabel()
    err = {r["deleted"][0]: r["error"] for r in lm.delete_each.rows if r["kind"] == "delete"}
    np.testing.assert_allclose(line(ax, "GPT-2x16").get_ydata(), [err[i] for i in range(4)])
    np.testing.assert_allclose(line(ax, "GPT-2x16: MLP sublayer (mlp)").get_ydata(),
                               [err[1], err[3]])
    # the CNN's own lesion figure is drawn as it always was: the error, no sublayers
    ax = saved["resnet-14_lesions.png"].axes[0]
    assert ax.get_ylabel() == "error (fraction misclassified)"
    assert legend_texts(ax)[:2] == ["deleted block, 95% Wilson interval", "downsampling block"]
    plt.close("all")
