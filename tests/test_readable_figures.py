"""Figures and tables a reader can read: a 48-block transformer's block names shortened and
thinned until no two tick labels overlap (their drawn extents), a SkipInit network drawn with
the SkipInit model and not the BatchNorm one, both normalisations of the gradient by length
labelled as such, the reversed Kendall-tau axis saying why, the lesion depth reconciled with
the single-block count, and the lesion command's --unit layer table."""
from __future__ import annotations

import dataclasses
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pathens  # noqa: E402
from pathens import analysis, combinatorics  # noqa: E402
from pathens.report import markdown, plots, writer  # noqa: E402
from pathens.report.plots.common import short_names  # noqa: E402
from nets import batch, small_resnet  # noqa: E402

SETTINGS = dict(samples_per_length=2, trials=2, gradient_examples=8, progress=False,
                log=lambda line: None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_block_names_are_shortened_to_layer_and_sublayer():
    names = [f"transformer.h.{i}.{s}" for i in range(12) for s in ("attn", "mlp")]
    labels, how = short_names(names)
    assert labels[6:8] == ["3a", "3m"] and labels[-1] == "11m"
    assert how == "11a = transformer.h.11.attn, 11m = transformer.h.11.mlp"
    assert short_names(["model.layers.12.self_attn", "model.layers.12.mlp"])[0] == ["12s", "12m"]
    assert short_names(["h.0", "h.1", "h.12"]) == (["0", "1", "12"], "12 = h.12")
    # sublayers with one initial keep their whole name; a CNN's names stay as they are
    assert short_names(["a.0.attn", "a.0.attn2"])[0] == ["0attn", "0attn2"]
    cnn = ["layer1.0", "layer1.1", "layer2.0"]
    assert short_names(cnn) == (cnn, None)
    assert short_names(["x.1.attn", "y.2.attn"]) == (["x.1.attn", "y.2.attn"], None)


@pytest.fixture(scope="module")
def deep_gpt():
    """A 24-layer (48-block) pathens GPT of width 8, each block deleted alone on 2 sequences."""
    torch.manual_seed(0)
    view = pathens.wrap(pathens.gpt(depth=24, width=8, heads=2, context=8).eval())
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    return {unit: pathens.lesion.delete_each(view, (ids, ids), unit=unit, progress=False)
            for unit in ("block", "layer")}


def labelled_ticks(ax) -> list:
    """(x, text, drawn extent) of every non-empty major tick label, after drawing."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    return [(t.get_position()[0], t.get_text(), t.get_window_extent(renderer))
            for t in ax.get_xticklabels() if t.get_text()]


def overlapping(ticks) -> list:
    return [(a[1], b[1]) for a, b in zip(ticks, ticks[1:]) if a[2].x1 > b[2].x0]


@pytest.mark.parametrize("panels", [1, 3])
def test_a_48_block_transformer_axis_has_legible_names(deep_gpt, panels):
    """Alone (a wide figure) every block is named; as one of the report's three lesion panels
    every 2nd; never two labels overlapping, each the short name of the block at its x."""
    r = deep_gpt["block"]
    fig, axes = plt.subplots(1, panels, figsize=(5.7 * panels, 4.7), layout="constrained",
                             squeeze=False)
    ax = axes[0][0]
    if panels == 1:
        fig.set_size_inches(12, 4)
    plots.plot_delete_each(r, ax=ax)
    ticks = labelled_ticks(ax)
    labels, how = short_names(r.block_names)
    assert [text for _, text, _ in ticks] == [labels[int(x)] for x, _, _ in ticks]
    assert overlapping(ticks) == []
    if panels == 1:
        assert len(ticks) == 48 and ax.get_xlabel() == f"deleted block ({how})"
    else:
        assert 12 <= len(ticks) <= 40 and ax.get_xlabel().endswith("; every 2nd labelled)")
        assert len(ax.get_xticks(minor=True)) == 48 - len(ticks)  # a tick at every block
    plt.close(fig)


def test_a_200_block_axis_is_thinned_to_what_fits():
    names = tuple(f"h.{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}" for i in range(200))
    c = dataclasses.make_dataclass("C", ["names", "influence", "sublayers", "unit"])(
        names, np.linspace(1, 0.01, 200), tuple(n.rsplit(".", 1)[1] for n in names), "block")
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    plots.plot_block_influence(c, ax=ax)
    ticks = labelled_ticks(ax)
    assert 10 <= len(ticks) <= 60 and overlapping(ticks) == []
    step = int(ticks[1][0] - ticks[0][0])
    assert step > 1 and f"every {step}" in ax.get_xlabel()
    plt.close(fig)


def test_a_layer_sweep_names_each_layer_by_its_index(deep_gpt):
    r = deep_gpt["layer"]
    fig, axes = plt.subplots(1, 3, figsize=(17.1, 4.7), layout="constrained")
    plots.plot_delete_each(r, ax=axes[0])
    ticks = labelled_ticks(axes[0])
    assert [t for _, t, _ in ticks] == [str(int(x)) for x, _, _ in ticks] and len(ticks) >= 12
    assert overlapping(ticks) == [] and axes[0].get_xlabel() == "deleted layer (23 = h.23)"
    plt.close(fig)


# ---- the report's figures: SkipInit's model, the two normalisations, the Kendall axis ---------

@pytest.fixture(scope="module")
def pair():
    out = {}
    for norm in ("bn", "skipinit"):
        view = pathens.wrap(small_resnet(8, width=4, norm=norm))
        x, _ = batch(12)
        with torch.no_grad():
            y = view.run(x).argmax(1)
        out[norm] = analysis.analyze(view, (x, y), name=f"{norm} net",
                                     model_info={"arch": {"depth": 8, "norm": norm}},
                                     **SETTINGS)
    return out


@pytest.fixture
def drawn(monkeypatch):
    """The figures report.writer draws, by file name, kept open instead of saved."""
    figs = {}
    monkeypatch.setattr(writer, "_save", lambda fig, out, name: figs.setdefault(name, fig)
                        and name)
    yield figs
    for fig in figs.values():
        plt.close(fig)


def legend_texts(ax) -> list:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_skipinit_network_gets_the_skipinit_model_not_the_batchnorm_one(pair, drawn,
                                                                          tmp_path):
    a = pair["skipinit"]
    writer.model_figures(tmp_path, "s", a)
    left, right = drawn["s_paths.png"].axes
    alpha = float(np.sqrt(np.mean(a.variance.ratios)))
    n = a.exact.num_blocks
    model = next(ln for ln in right.lines if ln.get_label().startswith("SkipInit model"))
    assert model.get_label() == f"SkipInit model, alpha = {alpha:.3g}"
    np.testing.assert_allclose(model.get_ydata(), combinatorics.skipinit_distribution(n, alpha))
    texts = legend_texts(left) + legend_texts(right)
    assert not [t for t in texts if "BN" in t or "BatchNorm" in t]
    assert any(t.startswith(f"share of variance, SkipInit model, alpha={alpha:.3g}")
               for t in legend_texts(left))
    drawn.clear()
    writer.model_figures(tmp_path, "b", pair["bn"])  # BatchNorm: as before
    left, right = drawn["b_paths.png"].axes
    assert "BN variance model" in legend_texts(right)
    assert any("BatchNorm model" in t for t in legend_texts(left))
    assert not [t for t in legend_texts(right) if "SkipInit" in t]


def test_magnitude_and_energy_shares_are_labelled_everywhere(pair, drawn, tmp_path):
    analyses = [pair["bn"], pair["skipinit"]]
    for a in analyses:
        writer.model_figures(tmp_path, a.name, a)
    writer._comparison_figures(tmp_path, analyses)
    per_model = [drawn[f"{a.name}_paths.png"].axes[1] for a in analyses]
    for ax in per_model:
        assert ax.get_ylabel() == "share of gradient magnitude, total[k] / Σ total"
        assert "magnitude" in ax.get_title()
        np.testing.assert_allclose(np.sum(ax.lines[0].get_ydata()), 1.0)  # shares of the sum
    comparison = drawn["comparison.png"]
    assert comparison.axes[0].get_ylabel() == "share of gradient energy, total[k]² / Σ total²"
    assert "share of energy" in comparison._suptitle.get_text()
    share = comparison.axes[0].lines[0].get_ydata()
    total = analyses[0].exact.total
    np.testing.assert_allclose(share, total ** 2 / np.sum(total ** 2))  # energy, as labelled
    lesions = drawn[f"{analyses[0].name}_lesions.png"].axes
    kendall = [ax for ax in lesions if "Kendall" in ax.get_xlabel()]
    for ax in kendall:
        lo, hi = ax.get_xlim()
        assert lo > hi and "axis reversed" in ax.get_xlabel()


# ---- the report's text and the lesion command's table -------------------------------------------

def test_a_lesion_depth_of_0_beside_free_single_blocks_is_explained(pair):
    a = pair["bn"]
    d = a.depth["lesion"]
    single = d.details["single_pool_mean_error"]
    details = dict(d.details, single_within=5, single_pool=6, threshold=single - 0.01)
    line = markdown._lesion_depth_line(a, dataclasses.replace(d, depth=0.0, details=details))
    assert (f"depth 0 although 5 blocks are each within the margin alone: one of the 6 blocks "
            f"of the pool deleted at random costs {single:.2%} error on average, beyond the "
            f"{single - 0.01:.2%} the margin allows.") in line
    quiet = markdown._lesion_depth_line(a, dataclasses.replace(d, depth=1.0, details=details))
    assert "although" not in quiet
    assert "The two can disagree" in markdown.LESION_DEPTH


def test_the_report_explains_its_share_of_paths_column(pair, tmp_path):
    md = pathens.report.write(tmp_path, [pair["bn"]]).read_text()
    table_end = md.index("\n\n", md.index("| model |"))
    assert md[table_end + 2:].startswith(markdown.PATHS_SHARE)
    assert "(% of paths)" in md and "% of paths" in markdown.PATHS_SHARE


def test_the_lesion_table_of_whole_layers_says_layer_and_keeps_its_columns():
    transformers = pytest.importorskip("transformers")
    from pathens.cli.commands import lesion_tables

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=32,
                                     n_positions=8, bos_token_id=0, eos_token_id=0)
    view = pathens.wrap(transformers.GPT2LMHeadModel(config).eval())
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    kw = dict(unit="layer", progress=False)
    each = pathens.lesion.delete_each(view, (ids, ids), **kw)
    rand = pathens.lesion.delete_random(view, (ids, ids), ks=[1, 2], trials=1, **kw)
    lines = lesion_tables(each, rand)
    assert lines[0].endswith(f"on {each.num_examples} tokens (95% interval "
                             f"{each.rows[0]['error_lo']:.2%} to "
                             f"{each.rows[0]['error_hi']:.2%})")
    head = lines.index(next(ln for ln in lines if ln.startswith("layer deleted")))
    rows = lines[head + 1:head + 3]
    assert [r.split()[0] for r in rows] == ["transformer.h.0", "transformer.h.1"]
    column = lines[head].index("error") + len("error")  # right-aligned under its header
    assert all(re.match(r"\d+\.\d\d%$", r[:column].split()[-1]) for r in rows)
    assert all(len(r[:column].rstrip()) == column for r in rows)
    assert "random layers deleted" in lines[head + 4]
