"""Results where researchers read them: every result's tables as pandas DataFrames holding the
cells of its CSV (read back as text, compared cell for cell), an Analysis's frames against the
CSV files of its report, and one line that says how to install pandas when it is missing."""
from __future__ import annotations

import base64
import importlib
import io
import json
import math
import pkgutil
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pathens  # noqa: E402
from pathens import analysis, report  # noqa: E402
from pathens.errors import PathensError  # noqa: E402
from pathens import display  # noqa: E402
from pathens.results import Result, csv_text, plain  # noqa: E402
from nets import batch, small_resnet  # noqa: E402


@pytest.fixture
def pd():
    """pandas (an optional dependency: the DataFrame tests skip without it)."""
    return pytest.importorskip("pandas")

SETTINGS = dict(samples_per_length=2, trials=2, gradient_examples=8, progress=False,
                log=lambda line: None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def labelled(view, n=16):
    """Inputs and the network's own predictions, three flipped (lesions then move the error)."""
    x, _ = batch(n)
    with torch.no_grad():
        y = view.run(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    return x, y


@pytest.fixture(scope="module")
def cnn(one_thread):
    view = pathens.wrap(small_resnet(8, width=4))
    return view, analysis.analyze(view, labelled(view), name="ResNet-8", **SETTINGS)


@pytest.fixture(scope="module")
def gpt(one_thread):
    """A tiny pre-LN GPT (2 layers = 4 blocks): token rows with perplexity columns."""
    torch.manual_seed(0)
    model = pathens.gpt(depth=2, width=16, heads=2, context=16).double().eval()
    view = pathens.wrap(model)
    ids = torch.randint(0, 256, (6, 12), generator=torch.Generator().manual_seed(1))
    return view, ids, analysis.analyze(view, (ids, ids), name="GPT-2x16", **SETTINGS)


def all_result_types() -> set:
    """Every Result subclass pathens defines (its modules imported first)."""
    for info in pkgutil.walk_packages(pathens.__path__, "pathens."):
        if info.name.split(".")[1] not in ("cli", "__main__") and "zoo" not in info.name:
            importlib.import_module(info.name)
    out, todo = set(), [Result]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("pathens."):
                out.add(sub)
            todo.append(sub)
    return out


@pytest.fixture(scope="module")
def results(cnn, gpt):
    """At least one result of every type, measured on the tiny networks."""
    from pathens.measure.importance import angular_distance
    from pathens.measure.singularities import singularities
    from pathens.models.train_text import train_lm

    view, a = cnn
    gview, ids, lm = gpt
    out = [getattr(x, f) for x in (a, lm) for f in (
        "exact", "sampled", "delete_each", "delete_random", "reorder", "variance", "influence",
        "influence_vs_deletion")]
    out += list(a.depth.values()) + list(lm.depth.values())
    out.append(angular_distance(gview, ids, 1, unit="block"))
    out.append(singularities(view, labelled(view)[0], progress=False))
    x, y = labelled(view, 8)
    out.append(pathens.signal_propagation(view, (x, y), progress=False))
    out.append(pathens.block_jacobian_spectra(view, x[:2], k=2, blocks=[0], iters=5))
    out.append(pathens.hessian(view, (x, y), params="layer1.0", top_k=1, trace_probes=3,
                               density_probes=1, lanczos_steps=5, progress=False))
    model = pathens.gpt(depth=1, width=8, heads=2, context=8).eval()
    out.append(train_lm(model, ids.flatten(), steps=2, batch_size=2, seq_len=8, warmup_steps=1,
                        eval_data=ids[:2, :8], progress=False))
    return [r for r in out if r is not None]


def csv_cell(v) -> str:
    """A DataFrame cell as the csv module writes the value: missing -> "", else str()."""
    import pandas as pd
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def assert_frame_is_csv(frame, text: str) -> None:
    """The frame's columns and every cell, rendered as csv writes them, equal the CSV text read
    back as strings (no type inference, no NA parsing)."""
    import pandas as pd
    read = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(read.columns)
    assert len(frame) == len(read)
    got = [[csv_cell(v) for v in row] for row in frame.astype(object).itertuples(index=False)]
    assert got == read.values.tolist()


def test_every_result_type_frame_equals_its_csv_cell_for_cell(results, pd):
    assert {type(r) for r in results} == all_result_types()  # a new type must be added here
    for res in results:
        frames = res.frames()
        assert list(frames) == list(res.tables())
        for suffix, rows in res.tables().items():
            assert_frame_is_csv(frames[suffix], csv_text(rows))
            assert frames[suffix].attrs == dict(result=type(res).__name__, table=suffix,
                                                config=plain(getattr(res, "config", {})))
        assert_frame_is_csv(res.to_frame(), res.to_csv())


def test_numeric_columns_are_numbers_with_the_results_values(cnn, gpt, pd):
    """Frames are for analysis: errors are float64, counts int64, flags bool, the deleted
    blocks lists; a NaN of the result (a sampled length nobody drew) is NaN, not ""."""
    _, a = cnn
    f = a.delete_random.to_frame()
    assert f["error"].dtype == np.float64 and f["errors"].dtype == np.int64
    assert f["downsampling"].dtype == bool
    assert f["error"].tolist() == [r["error"] for r in a.delete_random.rows]
    assert f["deleted"].tolist() == [list(r["deleted"]) for r in a.delete_random.rows]
    s = a.delete_random.frames()["delete_random_summary"]
    assert s["k"].tolist() == [r["k"] for r in a.delete_random.summary()]
    g = a.exact.to_frame()
    np.testing.assert_array_equal(g["total"].to_numpy(), a.exact.total)
    lm = gpt[2].delete_each.to_frame()
    np.testing.assert_allclose(lm["perplexity"], np.exp(lm["loss"]), rtol=1e-12)
    assert lm["tau"].isna().all()  # NaN in the result (no reordering): missing, as in the CSV


def test_analysis_frames_are_the_report_csv_files(cnn, gpt, tmp_path, pd):
    for name, a in (("cnn", cnn[1]), ("lm", gpt[2])):
        report.write(tmp_path / name, [a])
        slug = report.writer.file_slug(a.name)
        files = {p.name[len(slug) + 1:-4] for p in (tmp_path / name).glob(f"{slug}_*.csv")}
        frames = a.frames()
        assert set(frames) == files and "effective_depth" in files
        assert "delete_random_summary" in files and "block_influence" in files
        for key, frame in frames.items():
            assert_frame_is_csv(frame, (tmp_path / name / f"{slug}_{key}.csv").read_text())
            assert frame.attrs["analysis"] == a.name and frame.attrs["table"] == key
        assert frames["delete_each"].attrs["config"] == plain(a.delete_each.config)
        assert frames["effective_depth"].attrs["config"] == plain(a.config)
        assert frames["effective_depth"]["measure"].tolist() == list(a.depth)
        assert frames["effective_depth"]["depth"].tolist() == [d.depth for d in a.depth.values()]


def test_without_pandas_one_line_says_how_to_install(cnn, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)  # import pandas fails
    _, a = cnn
    for call in (a.exact.to_frame, a.delete_random.frames, a.frames):
        with pytest.raises(PathensError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "pip install 'pathens[pandas]'" in msg


# ---- notebooks ---------------------------------------------------------------------------------

class Tables(HTMLParser):
    """Every <table> of an HTML text as (header cells, body rows of cell texts), every <img> src,
    and the text of the element with id="probe"."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self.images, self.probe = [], [], None
        self._cell = self._row = None
        self._in_probe = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif attrs.get("id") == "probe":
            self._in_probe, self.probe = True, ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            head, body = self.tables[-1]
            (body if head else head).extend([self._row] if head else self._row)
            self._row = None
        elif self._in_probe:
            self._in_probe = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_probe:
            self.probe += data


def decoded_png(src: str):
    """The PIL image a data URI holds (asserting it is a PNG data URI)."""
    from PIL import Image
    assert src.startswith("data:image/png;base64,"), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))


def test_a_view_shows_its_blocks_as_the_model_runs_them():
    """One row per block, the shapes those the block modules see in the model's own forward
    (forward hooks), the downsampling blocks those whose shapes change, SkipInit's alpha."""
    model = small_resnet(8, width=4, norm="skipinit")
    view = pathens.wrap(model)
    seen = {}
    hooks = [b.module.register_forward_hook(
        lambda m, i, o, name=b.name: seen.__setitem__(name, (tuple(i[0].shape[1:]),
                                                             tuple(o.shape[1:]))))
        for b in view.blocks]
    with torch.no_grad():
        model(batch(2, size=32)[0])  # the size of the probe wrap ran
    for h in hooks:
        h.remove()
    (head, rows), = Tables(view._repr_html_()).tables
    assert head == ["block", "name", "sublayer", "input", "output", "identity shortcut",
                    "downsample", "scale"]
    assert [r[1] for r in rows] == [n for n, _ in model.named_modules() if n in seen]
    for r in rows:
        i, o = seen[r[1]]
        assert (r[3], r[4]) == (str(i), str(o))
        assert r[6] == ("yes" if i != o else "no")
        assert r[5] == "yes" if i == o else r[5].startswith("no")
        alpha = float(model.get_submodule(r[1]).alpha.detach())
        assert r[7] == f"{alpha:.4g}"


def test_a_transformer_view_names_its_sublayers(gpt):
    view = gpt[0]
    (_, rows), = Tables(view._repr_html_()).tables
    assert [r[2] for r in rows] == ["attn", "mlp"] * 2
    assert all(r[7] == "1" and r[6] == "no" for r in rows)


def test_a_result_shows_the_first_rows_of_its_tables(cnn):
    _, a = cnn
    res = a.exact
    (head, rows), = Tables(res._repr_html_()).tables
    table = res.table()
    assert head == list(table[0]) and len(rows) == len(table)
    assert [float(v) for v in (r[head.index("total")] for r in rows)] == pytest.approx(
        list(res.total), rel=1e-3)
    big = a.delete_random
    text = big._repr_html_()
    tables = Tables(text).tables
    assert len(tables) == 2  # the rows and the summary per k
    assert len(tables[0][1]) == min(len(big.rows), display.MAX_ROWS)
    md = big._repr_markdown_()
    assert md.startswith(f"**{big!r}**") and "*delete_random_summary*" in md
    many = analysis.LesionResult(**{**big.__dict__, "rows": big.rows * 10})
    assert f"{len(many.rows) - display.MAX_ROWS} more rows of {len(many.rows)}" in \
        many._repr_html_()
    assert len(Tables(many._repr_html_()).tables[0][1]) == display.MAX_ROWS


def test_an_analysis_shows_its_depth_table_and_figures_inline(cnn):
    import matplotlib.pyplot as plt
    _, a = cnn
    before = plt.get_fignums()
    text = a._repr_html_()
    assert plt.get_fignums() == before  # drawn, embedded and closed: never shown
    parsed = Tables(text)
    head, rows = parsed.tables[0]
    assert head[0] == "model" and rows[0][:2] == [a.name, str(a.num_blocks)]
    # the figures the report draws for this network: paths, one path, lesions, influence
    assert len(parsed.images) == 4
    for src in parsed.images:
        img = decoded_png(src)
        assert img.width > 300 and img.height > 200
    md = a._repr_markdown_()
    assert md.startswith(f"## {a.name}\n") and "| model | blocks |" in md and "![" not in md


# ---- report.html in a real browser ------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: apt-get install chromium
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium "
                                    "(apt-get install chromium)")

# Injected first into the <head> of a copy of the page: records every error (thrown, failed
# resource, console.error, rejected promise), then at load each image's natural size, and
# clicks a header of the first sortable table twice, recording that column after each sort.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(e.message || ("failed to load " + (e.target.src || e.target.href)));
}, true);
window.addEventListener("unhandledrejection", function (e) {
  window.__errors.push("unhandled rejection: " + e.reason); });
(function () { var orig = console.error; console.error = function () {
  window.__errors.push(Array.prototype.join.call(arguments, " "));
  orig.apply(console, arguments); }; })();
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    return {width: i.naturalWidth, height: i.naturalHeight, complete: i.complete, alt: i.alt}; });
  var sorted = [], t = document.querySelector("table.sortable");
  if (t) { var th = t.tHead.rows[0].cells[SORT_COLUMN];
    for (var n = 0; n < 2; n++) { th.click(); sorted.push(Array.prototype.map.call(
      t.tBodies[0].rows, function (r) { return r.cells[SORT_COLUMN].textContent; })); } }
  var pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify({errors: window.__errors, images: images, sorted: sorted});
  document.body.appendChild(pre);
});
</script>"""


def in_chromium(page: Path, tmp_path: Path, sort_column: int = 2) -> tuple:
    """(the probe's record, the DOM after load as Tables, console lines reporting an error) of
    a copy of `page` with PROBE injected, loaded by headless Chromium."""
    copy = page.with_name("probed_" + page.name)
    text = page.read_text()
    assert text.count("<head>") == 1
    copy.write_text(text.replace("<head>", "<head>\n" + PROBE.replace(
        "SORT_COLUMN", str(sort_column)), 1))
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
         copy.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Tables(done.stdout)
    assert dom.probe is not None, f"the probe did not run: {done.stderr[-2000:]}"
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln and
               re.search(r"uncaught|error|failed|refused", ln, re.I)]
    return json.loads(dom.probe), dom, console


@needs_chromium
def test_the_chromium_probe_sees_errors_and_broken_images(tmp_path):
    """The harness itself: a page with a thrown error, a console.error, an undecodable and a
    missing image is caught on all four counts."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>t</title></head><body>'
                    '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
                    '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    probe, _, console = in_chromium(page, tmp_path)
    assert [i["width"] for i in probe["images"]] == [0, 0]
    assert any("boom" in e for e in probe["errors"])
    assert any("undefinedFunction" in e for e in probe["errors"])
    assert any("missing.png" in e for e in probe["errors"])
    assert any("Uncaught" in ln for ln in console)


def depth_cells(depth: dict) -> list:
    """The depth table's gradient, energy and variance cells from results.json's numbers, as
    report/markdown.py formats them."""
    g, e, v = (depth[k] for k in ("gradient (exact)", "gradient energy (exact)", "variance"))
    cells = [f"{g['mean']:.2f} / {g['mode']} / {g['interval'][0]}-{g['interval'][1]} "
             f"({100 * g['path_fraction']:.3g}%)"]
    s = depth.get("gradient (sampled)")
    cells.append("not run" if s is None else
                 f"{s['mean']:.2f} / {s['interval'][0]}-{s['interval'][1]}")
    return cells + [f"{e['mean']:.2f}", f"{v['mean']:.2f}"]


def check_report_in_chromium(folder: Path, tmp_path: Path) -> None:
    """report.html of `folder` loads with no error, every figure of report.md decodes, the
    effective-depth table has the numbers of results.json, and a click sorts it."""
    md = (folder / "report.md").read_text()
    probe, dom, console = in_chromium(folder / "report.html", tmp_path)
    assert probe["errors"] == [] and console == []
    figures = re.findall(r"^!\[([^\]]*)\]\(([^)]+)\)$", md, re.M)
    assert [i["alt"] for i in probe["images"]] == [alt for alt, _ in figures]
    for img, (_, name) in zip(probe["images"], figures):
        assert img["complete"] and img["width"] > 0 and img["height"] > 0
        from PIL import Image
        assert (img["width"], img["height"]) == Image.open(folder / name).size
    assert "report.html" not in md and "data:image" not in md
    models = json.loads((folder / "results.json").read_text())["models"]
    head, rows = dom.tables[0]
    assert head[:2] == ["model", "blocks"] and head[2].startswith("intact error")
    assert len(rows) == len(models)
    for row in rows:
        doc = models[row[0]]
        assert row[1] == str(len(doc["delete_each"]["block_names"]))
        assert row[2].startswith(f"{doc['intact_error']:.2%}")
        assert row[3:7] == depth_cells(doc["effective_depth"])
    column = [[float(c.split()[0].rstrip("%")) for c in s] for s in probe["sorted"]]
    assert column[0] == sorted(column[0]) and column[1] == sorted(column[1], reverse=True)
    assert len(column[0]) == len(models)


@pytest.fixture(scope="module")
def skipinit(one_thread):
    view = pathens.wrap(small_resnet(8, width=4, norm="skipinit"))
    return analysis.analyze(view, labelled(view), name="SkipInit ResNet-8", **SETTINGS)


@needs_chromium
def test_the_html_report_of_two_networks_opens_in_chromium(cnn, skipinit, tmp_path):
    """A demo-like report: a BatchNorm and a SkipInit network compared."""
    report.write(tmp_path / "out", [cnn[1], skipinit], title="BN vs SkipInit",
                 command="pathens compare a.pt b.pt")
    check_report_in_chromium(tmp_path / "out", tmp_path)


@needs_chromium
def test_the_html_report_of_a_gpt2_opens_in_chromium(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    view = pathens.wrap(transformers.GPT2LMHeadModel(config).double().eval())
    ids = torch.randint(0, 64, (6, 12), generator=torch.Generator().manual_seed(2))
    a = analysis.analyze(view, (ids, ids), name="GPT-2 (2 layers)", **SETTINGS)
    report.write(tmp_path / "gpt2", [a])
    check_report_in_chromium(tmp_path / "gpt2", tmp_path)


def test_report_html_holds_the_markdown(cnn, tmp_path):
    """Without a browser: every heading, table row and bullet of report.md is in report.html,
    and every figure is a data URI of its PNG file."""
    out = report.write(tmp_path, [cnn[1]]).parent
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    dom = Tables(page)
    md_tables = [ln for ln in md.splitlines() if ln.startswith("|") and "---" not in ln]
    html_rows = [r for head, rows in dom.tables for r in [head] + rows]
    assert len(md_tables) == len(html_rows)
    figures = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", md, re.M)
    assert [base64.b64decode(src.split(",", 1)[1]) for src in dom.images] == \
        [(out / name).read_bytes() for name in figures]
    for heading in re.findall(r"^#+ (.+)$", md, re.M):
        assert display.html.escape(heading) in page
