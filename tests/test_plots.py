"""Figures: each one draws exactly the numbers of the result it is given (normalised as its
docstring says), into a given Axes or a new figure, and saves as a readable PNG."""
from __future__ import annotations

import dataclasses
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats  # noqa: E402

import pathens  # noqa: E402
from pathens import lesion, paths, plots  # noqa: E402
from pathens.errors import PathensError  # noqa: E402
from nets import VARIANTS, batch, small_resnet  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def grads():
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, y = batch(4)
    exact = pathens.path_gradients(view, x, y, progress=False)
    sampled = pathens.path_gradients(view, x, y, method="sampled", samples_per_length=3,
                                     progress=False)
    return exact, sampled


@pytest.fixture(scope="module")
def lesions():
    """The three sweeps on a tiny net. Labels are the intact network's predictions: an
    untrained net's error on random labels hardly moves, its disagreement with itself does."""
    view = pathens.wrap(small_resnet(20, width=8, **VARIANTS[0][1]))
    x, _ = batch(16)
    with torch.no_grad():
        y = view.run(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # a non-zero intact error
    data = (x, y)
    return dict(each=lesion.delete_each(view, data, progress=False),
                random=lesion.delete_random(view, data, ks=[1, 2, 4], trials=4, progress=False),
                reorder=lesion.reorder(view, data, swaps=[1, 2, 3], trials=4, progress=False))


def line(ax, prefix):
    """The one line of ax whose label starts with prefix."""
    found = [ln for ln in ax.lines if ln.get_label().startswith(prefix)]
    assert len(found) == 1, [ln.get_label() for ln in ax.lines]
    return found[0]


def intact_at(ax, result):
    ln = line(ax, "intact network")
    np.testing.assert_allclose(ln.get_ydata(), [result.intact_error] * 2)


def with_nan(result, picks):
    """A copy of result whose rows at the given positions have non-finite outputs."""
    rows = [dict(r) for r in result.rows]
    for i in picks:
        rows[i].update(error=math.nan, error_lo=math.nan, error_hi=math.nan, loss=math.nan,
                       nonfinite=rows[i]["n"])
    return dataclasses.replace(result, rows=rows)


# ---- distributions and gradients -------------------------------------------------------------

def test_path_length_distribution():
    n, r = 12, np.linspace(0.1, 1.0, 12)
    fig = plots.plot_path_length_distribution(n, alpha=0.5, variance_ratios=r)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    expected = [paths.binomial_distribution(n), paths.bn_variance_distribution(n),
                paths.skipinit_distribution(n, 0.5), paths.variance_ratio_distribution(r)]
    assert len(ax.lines) == 4
    for ln, dist in zip(ax.lines, expected):
        np.testing.assert_array_equal(ln.get_xdata(), np.arange(n + 1))
        np.testing.assert_allclose(ln.get_ydata(), dist)
        assert f"mean {paths.distribution_mean(dist):.2f}" in ln.get_label()
    assert ax.lines[0].get_linestyle() == "-" and ax.lines[1].get_linestyle() == "--"
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() and not ax.get_title()
    # only the paths and the BN model by default; into a given Axes
    fig2, ax2 = plt.subplots()
    assert plots.plot_path_length_distribution(5, ax=ax2) is fig2 and len(ax2.lines) == 2
    with pytest.raises(PathensError, match="one ratio per block"):
        plots.plot_path_length_distribution(n, variance_ratios=r[:3])


def test_total_gradient_exact_and_sampled(grads):
    exact, sampled = grads
    n = exact.num_blocks
    bn = paths.bn_variance_distribution(n)
    fig = plots.plot_total_gradient({"net": exact, "net ": sampled}, overlays={"BN model": bn})
    ax = fig.axes[0]
    e, s, o = line(ax, "net (exact)"), line(ax, "net  (sampled)"), line(ax, "BN model")
    np.testing.assert_allclose(e.get_ydata(), exact.total / exact.total.sum())
    np.testing.assert_allclose(s.get_ydata(), sampled.total / sampled.total.sum())
    np.testing.assert_allclose(o.get_ydata(), bn)
    assert e.get_marker() != s.get_marker() and e.get_linestyle() != s.get_linestyle()
    assert o.get_linestyle() == "--"
    # the sampled standard errors, C(n, k) se / sum(total), as vertical bars about the line
    (bars,) = ax.collections
    half = np.array([seg[1, 1] - seg[0, 1] for seg in bars.get_segments()]) / 2
    np.testing.assert_allclose(half, sampled.counts * sampled.per_path_se / sampled.total.sum())
    assert ax.get_legend() is not None and ax.get_ylabel().startswith("share")
    # unnormalised: the totals themselves, the overlay scaled to the first result's sum
    fig, ax = plt.subplots()
    assert plots.plot_total_gradient({"a": exact}, ax=ax, overlays={"BN": bn},
                                     normalize=False) is fig
    np.testing.assert_allclose(line(ax, "a").get_ydata(), exact.total)
    np.testing.assert_allclose(line(ax, "BN").get_ydata(), bn * exact.total.sum())
    # a single result is accepted; energy normalises total^2
    ax = plots.plot_total_gradient(exact, quantity="energy").axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), exact.total ** 2 / (exact.total ** 2).sum())
    with pytest.raises(PathensError, match="quantity"):
        plots.plot_total_gradient(exact, quantity="power")


def test_gradient_by_length_kept(grads):
    """The demo's call: energy shares and dashed overlays."""
    exact, _ = grads
    dist = paths.binomial_distribution(exact.num_blocks)
    fig, ax = plt.subplots()
    assert plots.plot_gradient_by_length({"m": exact}, ax=ax, overlays={"m: analytic": dist}) is fig
    np.testing.assert_allclose(ax.lines[0].get_ydata(), exact.total ** 2 / (exact.total ** 2).sum())
    np.testing.assert_allclose(ax.lines[1].get_ydata(), dist)
    fig = plots.plot_gradient_by_length({"m": exact}, quantity="magnitude")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), exact.fraction())


def test_per_path(grads):
    exact, sampled = grads
    fig, ax = plt.subplots()
    assert plots.plot_per_path({"e": exact, "s": sampled}, ax=ax) is fig
    assert [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")] == [
        "s (sampled)"]  # the exact result is skipped
    ln = line(ax, "s (sampled)")
    keep = sampled.per_path > 0
    np.testing.assert_allclose(ln.get_ydata(), sampled.per_path[keep])
    np.testing.assert_array_equal(ln.get_xdata(), sampled.lengths[keep])
    assert ax.get_yscale() == "log" and ax.get_xlabel() and ax.get_ylabel()
    ax = plots.plot_per_path({"e": exact}).axes[0]  # nothing to draw: a note, not an error
    assert not ax.lines and "sampled" in ax.texts[0].get_text()


def test_compare(grads):
    exact, sampled = grads
    results = {"BN": exact, "BN sampled": sampled}
    dist = paths.bn_variance_distribution(exact.num_blocks)
    fig = plots.plot_compare(results, overlays={"BN": dist})
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # one panel per model
    for ax, res in zip(fig.axes, results.values()):
        share = res.total ** 2 / (res.total ** 2).sum()
        np.testing.assert_allclose(ax.lines[0].get_ydata(), share)
        mean = float((res.lengths * share).sum())
        np.testing.assert_allclose(line(ax, "mean length").get_xdata(), [mean, mean])
        assert ax.get_legend() is not None and ax.get_xlabel()
    np.testing.assert_allclose(line(fig.axes[0], "analytic").get_ydata(), dist)
    # one shared Axes: a line and a mean per model, in distinct colours
    fig, ax = plt.subplots()
    assert plots.plot_compare(results, axes=ax, quantity="magnitude") is fig
    data = [ln for ln in ax.lines if not ln.get_label().startswith("mean")]
    assert len(data) == 2 and data[0].get_color() != data[1].get_color()
    np.testing.assert_allclose(data[1].get_ydata(), sampled.fraction())
    with pytest.raises(PathensError, match="one per model"):
        plots.plot_compare(results, axes=[ax])


# ---- lesions ---------------------------------------------------------------------------------

def test_delete_each(lesions):
    r = lesions["each"]
    fig, ax = plt.subplots()
    assert plots.plot_delete_each(r, ax=ax) is fig
    rows = {row["deleted"][0]: row for row in r.rows if row["kind"] == "delete"}
    down = line(ax, "downsampling block")
    assert len(down.get_xdata()) == len(r.downsampling_blocks) > 0
    np.testing.assert_array_equal(down.get_xdata(), r.downsampling_blocks)
    other = line(ax, "deleted block")
    assert set(other.get_xdata()) | set(down.get_xdata()) == set(rows)
    assert down.get_color() != other.get_color() and down.get_marker() != other.get_marker()
    for ln in (down, other):
        np.testing.assert_allclose(ln.get_ydata(), [rows[i]["error"] for i in ln.get_xdata()])
    # Wilson intervals as error bars, one per block
    segs = [s for c in ax.collections for s in c.get_segments()]
    got = sorted((s[0, 0], s[0, 1], s[1, 1]) for s in segs)
    want = sorted((i, rows[i]["error_lo"], rows[i]["error_hi"]) for i in rows)
    np.testing.assert_allclose(got, want)
    intact_at(ax, r)
    # block names as minor tick labels (few blocks)
    assert [t.get_text() for t in ax.get_xticklabels(minor=True)] == list(r.block_names)
    assert ax.get_ylabel() and ax.get_legend() is not None and not ax.get_title()


def test_delete_each_skips_nan(lesions):
    r = with_nan(lesions["each"], [1 + lesions["each"].downsampling_blocks[0], 2])
    ax = plots.plot_delete_each(r).axes[0]
    assert len(line(ax, "downsampling block").get_xdata()) == len(r.downsampling_blocks) - 1
    others = len(r.block_names) - len(r.downsampling_blocks)
    assert len(line(ax, "deleted block").get_xdata()) == others - 1
    assert "2 conditions with NaN error" in ax.get_legend().get_title().get_text()


def test_delete_random(lesions):
    r = lesions["random"]
    summ = r.summary()
    fig, ax = plt.subplots()
    assert plots.plot_delete_random(r, ax=ax) is fig
    mean = line(ax, "mean over")
    np.testing.assert_array_equal(mean.get_xdata(), [s["k"] for s in summ])
    np.testing.assert_allclose(mean.get_ydata(), [s["error_mean"] for s in summ])
    # the band: at each k its polygon spans exactly summary()'s error_lo .. error_hi
    (band,) = [c for c in ax.collections if c.get_label().startswith("95% band")]
    v = band.get_paths()[0].vertices
    assert any(s["error_hi"] > s["error_lo"] for s in summ)  # a band worth checking
    for s in summ:
        ys = v[np.isclose(v[:, 0], s["k"]), 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [s["error_lo"], s["error_hi"]])
    trials = line(ax, "single trials")
    rows = [row for row in r.rows if row["kind"] == "delete"]
    np.testing.assert_allclose(trials.get_ydata(), [row["error"] for row in rows])
    np.testing.assert_array_equal(trials.get_xdata(), [row["k"] for row in rows])
    assert trials.get_alpha() < 1
    intact_at(ax, r)
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
    # non-finite trials are left out of dots and means, and counted
    r2 = with_nan(r, [1, 2])
    ax = plots.plot_delete_random(r2).axes[0]
    assert len(line(ax, "single trials").get_xdata()) == len(rows) - 2
    np.testing.assert_allclose(line(ax, "mean over").get_ydata(),
                               [s["error_mean"] for s in r2.summary()])
    assert "2 trials with NaN error" in ax.get_legend().get_title().get_text()


def test_reorder(lesions):
    r = lesions["reorder"]
    fig, ax = plt.subplots()
    assert plots.plot_reorder(r, ax=ax) is fig
    rows = [row for row in r.rows if row["kind"] == "reorder"]
    (dots,) = ax.collections
    np.testing.assert_allclose(dots.get_offsets(), [(row["tau"], row["error"]) for row in rows])
    lo, hi = ax.get_xlim()
    assert lo > 1 > hi and hi < min(row["tau"] for row in rows)  # decreasing from 1
    summ = r.summary()
    np.testing.assert_allclose(line(ax, "mean per").get_xdata(), [s["tau_mean"] for s in summ])
    intact_at(ax, r)
    assert "Kendall" in ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
    ax = plots.plot_reorder(with_nan(r, [1])).axes[0]
    assert len(ax.collections[0].get_offsets()) == len(rows) - 1
    assert "1 trial with NaN error" in ax.get_legend().get_title().get_text()


def test_each_figure_saves(grads, lesions, tmp_path):
    exact, sampled = grads
    n = exact.num_blocks
    figures = {
        "distribution": plots.plot_path_length_distribution(54, alpha=[0.2, 0.5]),
        "per_path": plots.plot_per_path({"BN": sampled}),
        "total": plots.plot_total_gradient(
            {"BN": exact, "BN ": sampled},
            overlays={"BN variance model": paths.bn_variance_distribution(n),
                      "Binomial(n, 1/2)": paths.binomial_distribution(n)}),
        "compare": plots.plot_compare({"exact": exact, "sampled": sampled}),
        "delete_each": plots.plot_delete_each(lesions["each"]),
        "delete_random": plots.plot_delete_random(lesions["random"]),
        "reorder": plots.plot_reorder(lesions["reorder"]),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure) and not fig.axes[0].get_title()
        fig.savefig(tmp_path / f"{name}.png", dpi=80)
        assert (tmp_path / f"{name}.png").stat().st_size > 5000


def test_total_gradient_crops_a_deep_network_to_its_mass(grads):
    """600 blocks with all gradient in lengths 0..20: the axis ends shortly after 20, and
    every length holding >= 1e-3 of the peak share stays visible; a shallow one is not cut."""
    exact, _ = grads
    n = 600
    total = np.zeros(n + 1)
    total[:21] = np.exp(-0.5 * ((np.arange(21) - 8) / 3.0) ** 2)
    deep = dataclasses.replace(exact, num_blocks=n, lengths=np.arange(n + 1), total=total,
                               counts=np.ones(n + 1), per_path=total,
                               per_path_se=np.full(n + 1, np.nan), samples=np.zeros(n + 1))
    ax = plots.plot_total_gradient(deep).axes[0]
    share = total / total.sum()
    visible = np.flatnonzero(share >= 1e-3 * share.max()).max()
    lo, hi = ax.get_xlim()
    assert visible < hi < 40 and lo < 0
    ax = plots.plot_total_gradient(exact).axes[0]  # 9 blocks: the whole axis
    assert ax.get_xlim()[1] >= exact.num_blocks


# ---- labels, titles, comparisons of lesions ---------------------------------------------------

def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_bare_result_is_labelled_by_its_method_once(grads):
    """A single result is labelled by its method, not "sampled (sampled)"; a label that
    already names the method is not repeated either; any other gets "(method)" appended."""
    exact, sampled = grads
    assert legend_texts(plots.plot_per_path(sampled).axes[0]) == ["sampled"]
    assert legend_texts(plots.plot_total_gradient(exact).axes[0]) == ["exact"]
    ax = plots.plot_total_gradient({"exact: norm of the sum": exact, "BN": sampled}).axes[0]
    assert legend_texts(ax) == ["exact: norm of the sum", "BN (sampled)"]
    assert legend_texts(plots.plot_compare(sampled).axes[0])[0] == "sampled"


def test_path_length_axis_says_what_each_curve_is_a_share_of():
    ax = plots.plot_path_length_distribution(12, alpha=0.5, variance_ratios=np.ones(12)).axes[0]
    assert "models:" not in ax.get_ylabel() and "share" in ax.get_ylabel()
    texts = legend_texts(ax)
    assert texts[0].startswith("share of the 2^12 paths")
    assert all(t.startswith("share of variance") for t in texts[1:]) and len(texts) == 4


def test_every_plot_takes_a_title(grads, lesions):
    exact, sampled = grads
    calls = {
        "distribution": lambda t: plots.plot_path_length_distribution(5, title=t),
        "total": lambda t: plots.plot_total_gradient(exact, title=t),
        "by_length": lambda t: plots.plot_gradient_by_length({"m": exact}, title=t),
        "per_path": lambda t: plots.plot_per_path(sampled, title=t),
        "delete_each": lambda t: plots.plot_delete_each(lesions["each"], title=t),
        "delete_random": lambda t: plots.plot_delete_random(lesions["random"], title=t),
        "reorder": lambda t: plots.plot_reorder(lesions["reorder"], title=t),
        "compare_lesions": lambda t: plots.plot_compare_lesions({"a": lesions["each"]}, title=t),
    }
    for name, call in calls.items():
        assert call(f"net: {name}").axes[0].get_title() == f"net: {name}", name
    fig = plots.plot_compare({"BN": exact, "SkipInit": sampled}, title="BN vs SkipInit")
    assert fig._suptitle.get_text() == "BN vs SkipInit"
    assert [ax.get_title() for ax in fig.axes] == ["BN", "SkipInit"]


def test_compare_lesions_draws_each_network_in_its_colour(lesions):
    """Single deletions of two networks on one axis: per network, y = the error of deleting
    block x (NaN at blocks not deleted: a plain network's shape-changing layers), hollow
    squares on downsampling blocks, its intact error dotted in the same colour."""
    each = lesions["each"]
    rows = [r for r in each.rows if r["kind"] == "delete"]
    drop = rows[1]["deleted"][0]
    plain = dataclasses.replace(each, rows=[r for r in each.rows if r is not rows[1]],
                                intact_error=0.5)
    ax = plots.plot_compare_lesions({"res": each, "plain": plain}).axes[0]
    (res,), (pl,) = ([ln for ln in ax.lines if ln.get_label() == k] for k in ("res", "plain"))
    want = np.full(len(each.block_names), np.nan)
    for r in rows:
        want[r["deleted"][0]] = r["error"]
    np.testing.assert_allclose(res.get_ydata(), want)
    want[drop] = np.nan
    np.testing.assert_allclose(pl.get_ydata(), want)
    assert res.get_color() != pl.get_color()
    down = line(ax, "res: downsampling")
    np.testing.assert_array_equal(down.get_xdata(), each.downsampling_blocks)
    for label, result, ln in (("res", each, res), ("plain", plain, pl)):
        intact = line(ax, f"{label}: intact")
        np.testing.assert_allclose(intact.get_ydata(), [result.intact_error] * 2)
        assert intact.get_color() == ln.get_color()
    # random deletions: the mean per k and the summary's band, per network
    r = lesions["random"]
    ax = plots.plot_compare_lesions({"a": r, "b": with_nan(r, [1])}).axes[0]
    np.testing.assert_allclose(line(ax, "a: mean").get_ydata(),
                               [s["error_mean"] for s in r.summary()])
    band = ax.collections[0].get_paths()[0].vertices
    for s in r.summary():
        ys = band[np.isclose(band[:, 0], s["k"]), 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [s["error_lo"], s["error_hi"]])
    assert "1 trial with NaN error" in ax.get_legend().get_title().get_text()
    with pytest.raises(PathensError, match="one kind"):
        plots.plot_compare_lesions({"a": each, "b": r})
    with pytest.raises(PathensError, match="at least one"):
        plots.plot_compare_lesions({})


# ---- language models and a transformer's sublayers -------------------------------------------

@pytest.fixture(scope="module")
def lm_lesions():
    """A tiny float64 GPT (4 blocks: attn, mlp, attn, mlp), weights large enough that each
    deletion costs its own amount; its sweeps per block and per layer."""
    torch.manual_seed(0)
    model = pathens.gpt(depth=2, width=16, heads=2, context=16, norm="pre").double()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    view = pathens.wrap(model.eval())
    ids = torch.randint(0, 256, (6, 10), generator=torch.Generator().manual_seed(1))
    data = (ids, ids)
    return dict(each=lesion.delete_each(view, data, progress=False),
                layers=lesion.delete_each(view, data, unit="layer", progress=False),
                random=lesion.delete_random(view, data, ks=[1, 2, 3], trials=3, progress=False))


def test_delete_each_draws_a_transformers_sublayers_apart(lm_lesions):
    r = lm_lesions["each"]
    assert r.tokens and r.sublayers == ("attn", "mlp", "attn", "mlp")
    ax = plots.plot_delete_each(r).axes[0]
    loss = {row["deleted"][0]: row["loss"] for row in r.rows if row["kind"] == "delete"}
    attn, mlp = line(ax, "attention sublayer (attn)"), line(ax, "MLP sublayer (mlp)")
    for ln, blocks in ((attn, [0, 2]), (mlp, [1, 3])):
        np.testing.assert_array_equal(ln.get_xdata(), blocks)
        np.testing.assert_allclose(ln.get_ydata(), [loss[i] for i in blocks])
    assert attn.get_color() != mlp.get_color() and attn.get_marker() != mlp.get_marker()
    assert legend_texts(ax)[:2] == ["attention sublayer (attn)", "MLP sublayer (mlp)"]
    assert not ax.collections  # the loss has no interval: no error bars
    ln = line(ax, "intact network")
    np.testing.assert_allclose(ln.get_ydata(), [r.intact_loss] * 2)
    assert f"perplexity {math.exp(r.intact_loss):.3g}" in ln.get_label()
    (right,) = ax.child_axes
    ax.figure.canvas.draw()  # a secondary axis takes its limits when drawn
    np.testing.assert_allclose(right.get_ylim(), np.exp(ax.get_ylim()))
    assert ax.get_ylabel() == "mean next-token loss (nats)" and "perplexity" in right.get_ylabel()
    # the error on request: Wilson bars, still one group per sublayer
    ax = plots.plot_delete_each(r, metric="error").axes[0]
    np.testing.assert_allclose(line(ax, "MLP sublayer (mlp), 95% Wilson interval").get_ydata(),
                               [row["error"] for row in r.rows if row["deleted"] in ([1], [3])])
    assert ax.collections and not ax.child_axes and ax.get_ylabel().startswith("next-token error")


def test_delete_each_of_whole_layers_sits_at_the_layer_index(lm_lesions):
    r = lm_lesions["layers"]
    ax = plots.plot_delete_each(r).axes[0]
    ln = line(ax, "deleted layer (all its sublayers)")
    np.testing.assert_array_equal(ln.get_xdata(), [0, 1])
    np.testing.assert_allclose(ln.get_ydata(), [row["loss"] for row in r.rows[1:]])
    assert [row["deleted"] for row in r.rows[1:]] == [[0, 1], [2, 3]]
    # the layers' names shortened to their index, the axis label saying so
    assert list(ax.get_xticks()) == [0, 1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    assert ax.get_xlabel() == "deleted layer (1 = h.1)"


def test_delete_random_of_a_language_model_draws_the_loss_and_its_band(lm_lesions):
    r = lm_lesions["random"]
    summ = r.summary()
    for s in summ:  # the loss band: a t interval over the trials' losses, by scipy
        losses = [row["loss"] for row in r.rows if row["kind"] == "delete" and row["k"] == s["k"]]
        half = stats.t.ppf(0.975, len(losses) - 1) * np.std(losses, ddof=1) / np.sqrt(3)
        np.testing.assert_allclose([s["loss_lo"], s["loss_hi"]],
                                   [max(0, np.mean(losses) - half), np.mean(losses) + half])
        assert s["perplexity_mean"] == pytest.approx(np.mean(np.exp(losses)))
    ax = plots.plot_delete_random(r).axes[0]
    np.testing.assert_allclose(line(ax, "mean over").get_ydata(), [s["loss_mean"] for s in summ])
    (band,) = [c for c in ax.collections if c.get_label().startswith("95% band")]
    v = band.get_paths()[0].vertices
    for s in summ:
        ys = v[np.isclose(v[:, 0], s["k"]), 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [s["loss_lo"], s["loss_hi"]])
    assert ax.get_ylabel() == "mean next-token loss (nats)" and ax.child_axes
    # a classifier's summary gains no loss band: its CSV columns are as before
    assert "loss_lo" not in lesions_summary_keys()


def lesions_summary_keys():
    view = pathens.wrap(small_resnet(8, width=4))
    x, y = batch(4)
    return set(lesion.delete_random(view, (x, y), ks=[1], trials=2,
                                    progress=False).summary()[0])


def test_compare_lesions_of_language_models_draws_the_loss_and_the_sublayers(lm_lesions):
    each, layers = lm_lesions["each"], lm_lesions["layers"]
    ax = plots.plot_compare_lesions({"blocks": each, "layers": layers}).axes[0]
    assert ax.get_ylabel() == "mean next-token loss (nats)"
    (joined,) = [ln for ln in ax.lines if ln.get_label() == "blocks"]
    np.testing.assert_allclose(joined.get_ydata(), [row["loss"] for row in each.rows[1:]])
    np.testing.assert_allclose(line(ax, "blocks: MLP sublayer (mlp)").get_ydata(),
                               [each.rows[2]["loss"], each.rows[4]["loss"]])
    (joined,) = [ln for ln in ax.lines if ln.get_label() == "layers"]
    np.testing.assert_array_equal(joined.get_xdata(), [0, 1])
    assert ax.get_xlabel() == "deleted block or layer (index)"


def test_influence_figures_draw_the_table_on_log_axes_when_it_spans_decades(lm_lesions):
    from pathens.measure.influence_cost import influence_vs_deletion
    each = lm_lesions["each"]
    bi = dataclasses.make_dataclass("BI", ["unit", "names", "blocks", "influence", "num_items"])(
        "block", tuple(each.block_names), ((0,), (1,), (2,), (3,)),
        np.array([0.5, 0.002, 0.05, np.nan]), 60)
    c = influence_vs_deletion(bi, each)
    assert c.compared == (0, 1, 2)
    ax = plots.plot_block_influence(c).axes[0]
    np.testing.assert_allclose(line(ax, "attention sublayer (attn)").get_ydata(), [0.5, 0.05])
    assert ax.get_yscale() == "log"  # 0.002 .. 0.5
    assert "1 block without a Block Influence" in ax.get_legend().get_title().get_text()
    ax = plots.plot_influence_vs_deletion(c).axes[0]
    mlp = line(ax, "MLP sublayer (mlp)")
    np.testing.assert_allclose(mlp.get_xdata(), [0.002])
    np.testing.assert_allclose(mlp.get_ydata(), [c.loss_increase[1]])
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.texts] == ["0", "1", "2"]
    rho = stats.spearmanr([0.5, 0.002, 0.05], c.loss_increase[:3]).statistic
    assert c.spearman == pytest.approx(rho)
    assert f"Spearman rho {rho:.2f} over 3 blocks" in ax.get_legend().get_title().get_text()
