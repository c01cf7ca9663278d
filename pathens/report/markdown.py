"""What the report says, as Markdown: the effective-depth table across networks, each network's
section (its intact numbers, single deletions by what was deleted, the lesion depth, the Block
Influence against the single-deletion cost), and the paragraphs that explain them. Text from
Analysis objects only; report.py writes it with the figures and files.
"""
from __future__ import annotations

import json

import numpy as np

from .plots import common as plots_common
from ..data.losses import perplexity
from ..results import fmt
from .plots.lesion import unit_of  # an Analysis has the same config["unit"]

NOT_PLAIN = "n/a (plain network: one path)"


# Why the exact and the sampled effective depths differ: said once under the depth table.
EXACT_VS_SAMPLED = (
    "**Exact and sampled gradients measure different things.** Exact: total[k] = ||G_k||, the "
    "norm of the *sum* of the gradients of all C(n, k) paths of length k, so paths whose "
    "gradients point different ways cancel, as they do in the network's own gradient "
    "(sum_k G_k is that gradient). Sampled (Veit et al.'s protocol): total[k] = C(n, k) x the "
    "mean *norm* of one path's gradient, a sum of norms that no cancellation reduces (never "
    "smaller than the exact total), estimated from a few paths per length (standard errors in "
    "the sampled CSV). The more the paths of a length cancel, the more weight the sampled mix "
    "gives that length relative to the exact one, so the two effective depths differ even "
    "without sampling error; cite the exact one for where the gradient comes from, the sampled "
    "one to compare with Veit et al.")

LESION_DEPTH = (
    "**Lesion depth.** The largest tested k such that deleting k random blocks (never a "
    "downsampling one) keeps the mean error over the trials within the margin of the intact "
    "error, for that k and every smaller tested k; untested k between two tested ones are "
    "unknown. Its 95% interval applies the same rule to the top and to the bottom of each k's "
    "band over the trials (the spread of the random draws; the test set's own sampling error "
    "is shared by every condition). k = 1 is judged exactly from the single deletions (every "
    "block of the pool deleted alone), which also give the count of blocks that can each be "
    "deleted alone within the margin. The two can disagree: k = 1 takes the *mean* error over "
    "the pool's single deletions, so a few costly blocks can make the lesion depth 0 while "
    "most blocks are each deletable alone; the count says which blocks are free to delete, "
    "the depth what deleting blocks at random costs.")

# Under the effective-depth table: what its "(% of paths)" means.
PATHS_SHARE = (
    "**% of paths** (effective-depth tables): the share of all 2^n paths whose length lies in "
    "the interval, the shortest range of lengths holding the level's share of the gradient "
    "(of the variance, for the variance model); a small share means that few paths carry "
    "most of it (Veit et al.: 0.45% of ResNet-110's paths carry almost all of its gradient).")

# Said once when a language model is in the report.
LM_METRICS = (
    "**Language models.** Errors are top-1 next-token errors over every predicted token (position "
    "t predicts token t+1), given beside the mean next-token loss (nats) and the perplexity "
    "exp(loss). The lesion figures of a language model plot the loss, the perplexity on the "
    "right-hand axis: the top-1 error of a small or partly trained model sits near its ceiling "
    "and moves little, while the loss shows each deletion's damage on a scale that adds up (and "
    "ranks conditions exactly as the perplexity does, without its overflow when a block that "
    "matters is deleted). The lesion depth's margin applies to the next-token error. Wilson "
    "intervals count tokens as independent, which the tokens of one sequence are not: read them "
    "as lower bounds on the uncertainty.")

# ---- tables ----------------------------------------------------------------------------------

def depth_table(analyses) -> str:
    levels = {d.level for a in analyses for k, d in a.depth.items() if k != "lesion"}
    mass = f"{levels.pop():.0%}" if len(levels) == 1 else "level (see configuration)"
    lm = any(a.tokens for a in analyses)
    intact = "intact error (language models: next-token; loss, perplexity)" if lm else \
        "intact error"
    units = "random blocks" if all(unit_of(a) == "block" for a in analyses) else \
        "random blocks (or layers)"
    head = (f"| model | blocks | {intact} | gradient (exact): mean / mode / {mass} interval "
            f"(% of paths) | gradient (sampled): mean / {mass} interval | gradient energy "
            f"(exact): mean | variance model: mean | lesion: {units} deletable within "
            f"margin (95% CI) | {units.replace('random', 'single')} each deletable within margin "
            f"| Block Influence vs single-deletion cost: Spearman rho |")
    rows = [head, "|" + "---|" * 10]
    for a in analyses:
        d = a.depth
        g, s, e, v = (d.get(k) for k in ("gradient (exact)", "gradient (sampled)",
                                          "gradient energy (exact)", "variance"))
        cells = [a.name, str(a.num_blocks), _intact_cell(a)]
        if a.residual:
            cells += [f"{g.mean:.2f} / {g.mode} / {g.interval[0]}-{g.interval[1]} "
                      f"({100 * g.path_fraction:.3g}%)",
                      "not run" if s is None else f"{s.mean:.2f} / {s.interval[0]}-{s.interval[1]}",
                      f"{e.mean:.2f}", f"{v.mean:.2f}"]
        else:
            cells += [NOT_PLAIN] * 2 + ["n/a"] * 2
        cells += _lesion_cells(a)
        c = a.influence_vs_deletion
        cells.append(c.rho_text() if c is not None else "n/a (plain network)" if not a.residual
                     else "not run")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _intact_cell(a) -> str:
    if a.tokens:
        return (f"{a.intact_error:.2%} (loss {a.intact_loss:.3f}, perplexity "
                f"{perplexity(a.intact_loss):.4g})")
    if not np.isfinite(a.intact_error):  # a custom loss: no error rate
        return f"n/a (loss {a.intact_loss:.4g})"
    return f"{a.intact_error:.2%}"


def _lesion_cells(a) -> list:
    """The lesion depth with its interval and margin, and the single-block count."""
    l = a.depth.get("lesion")
    if l is None:
        why = "a custom loss: no error rate" if a.delete_random is not None else \
            "no block can be drawn"
        return [f"n/a ({why})", _single_count(a)]
    lo, hi = l.interval
    units = " layers" if unit_of(a) == "layer" else ""
    return [f"{int(l.depth)}{units} (CI {lo}-{hi}; margin {100 * l.details['margin']:.3g} "
            f"points)", _single_count(a)]


def _single_count(a) -> str:
    l = a.depth.get("lesion")
    if l is not None and l.details.get("single_tested") is not None:
        return f"{l.details['single_within']} of {l.details['single_tested']}"
    rows = [r for r in a.delete_each.rows if r["kind"] == "delete"]
    return f"{len(rows)} deletable, none tested against a margin" if rows else "none deletable"


def section(a, slug: str, figs: dict, extras: dict) -> str:
    """The network's section; `extras`: result name -> its figure's file (or None), for the
    registered measurements' results (their summary lines and subsections)."""
    each = a.delete_each
    non_down = [r["error"] for r in each.rows if r["kind"] == "delete" and not r["downsampling"]]
    down = [r["error"] for r in each.rows if r["kind"] == "delete" and r["downsampling"]]
    lines = [f"## {a.name}", "",
             f"Model: `{json.dumps(a.model, default=str)}`  ",
             f"Data: `{json.dumps(a.data, default=str)}`  ", _intact_text(a), ""]
    if a.residual:
        ex = a.exact
        lines.append(f"- Exact decomposition: sum of the G_k matches autograd to "
                     f"{ex.residual:.1e} (relative); most gradient at length "
                     f"{int(ex.lengths[np.argmax(ex.total)])}.")
        if a.sampled is not None:
            lines.append(f"- Sampled protocol ({int(a.sampled.samples.max())} paths per length): "
                         f"mean length {a.depth['gradient (sampled)'].mean:.2f} against the "
                         f"exact {a.depth['gradient (exact)'].mean:.2f} (sum of norms vs norm "
                         f"of the sum: see under the effective-depth table).")
        if _classic(a):
            lines.append(f"- Deleting one non-downsampling block: error {_range(non_down)}; a "
                         f"downsampling block: {_range(down)}.")
        else:
            lines += _deletion_lines(a)
    else:
        lines += ["- Path gradients, branch variance: not applicable: a plain network has a "
                  "single path (no shortcuts), so there is nothing to split by length.",
                  f"- Deleting one layer that keeps the shape (replaced by the identity): error "
                  f"{_range(non_down)}; layers that change the shape cannot be deleted "
                  f"({len(each.downsampling_blocks)} of {a.num_blocks})."]
    l = a.depth.get("lesion")
    if l is not None:
        lines.append(_lesion_depth_line(a, l))
    elif a.delete_random is not None:
        lines.append("- Lesion depth: n/a (a custom loss has no error rate to hold within a "
                     "margin).")
    else:
        lines.append("- Random deletions: none (no block can be drawn: each one changes the "
                     "shape or is a downsampling block).")
    tables = [f"`{slug}_{k}.csv`" for k in ("delete_random", "reorder") if getattr(a, k)]
    if a.reorder is None:
        lines.append("- Reordering: none (no two blocks have the same shape).")
    if tables:
        lines.append(f"- Random deletions and reorderings: see the figures and "
                     f"{', '.join(tables)}.")
    for key in extras:
        lines += a.results[key].summary_lines()
    lines.append("")
    for caption, name in figs.items():
        lines += [f"![{caption}]({name})", ""]
    lines += ["| effective depth | value | distribution mean | mode | interval | mass | % of paths |",
              "|---|---|---|---|---|---|---|"]
    for key, d in a.depth.items():
        lo, hi = d.interval
        if d.source == "lesion":  # not a distribution over lengths: its interval is a CI
            lines.append(f"| {key} | {int(d.depth)} {unit_of(a)}s | - | - | {lo}-{hi} "
                         f"({d.level:.0%} CI) | - | - |")
            continue
        percent = None if d.path_fraction is None else 100 * d.path_fraction
        lines.append(f"| {key} | {fmt(d.depth)} | {fmt(d.mean)} | {fmt(d.mode)} | "
                     f"{lo}-{hi} | {fmt(d.mass)} | {fmt(percent)} |")
    if not a.residual:
        lines.append(f"| gradient, variance | {NOT_PLAIN} | | | | | |")
    for key, figure in extras.items():
        lines += a.results[key].markdown(name=a.name, slug=slug, figure=figure)
    return "\n".join(lines) + "\n"


def _lesion_depth_line(a, depth) -> str:
    text = depth.describe().removeprefix("lesion: ")
    how = [w for w, on in (("on the top-1 next-token error", a.tokens),
                           ("whole layers deleted", unit_of(a) == "layer")) if on]
    d = depth.details
    mean = d.get("single_pool_mean_error")
    if int(depth.depth) == 0 and d.get("single_within") and mean is not None and \
            np.isfinite(mean):  # the two numbers side by side look contradictory: say why
        unit = d.get("unit", "block")
        text += (f"; depth 0 although {d['single_within']} {unit}s are each within the margin "
                 f"alone: one of the {d['single_pool']} {unit}s of the pool deleted at random "
                 f"costs {mean:.2%} error on average, beyond the {d['threshold']:.2%} the "
                 f"margin allows")
    return f"- Lesion depth{' (' + '; '.join(how) + ')' if how else ''}: {text}."


def _classic(a) -> bool:
    """A classifier whose modules hold one block each, deleted block by block: the section
    says what it always said."""
    return not a.tokens and not a.delete_each.sublayers and unit_of(a) == "block" and \
        np.isfinite(a.intact_error)


def _intact_text(a) -> str:
    each = a.delete_each
    if a.tokens:
        seqs = a.config.get("examples")
        seqs = f" ({seqs} sequences)" if seqs is not None else ""
        return (f"Intact next-token error {each.intact_error:.2%} on {each.num_examples:,} "
                f"tokens{seqs}: mean next-token loss {each.intact_loss:.4f}, perplexity "
                f"{perplexity(each.intact_loss):.4g}.")
    if not np.isfinite(each.intact_error):
        return (f"Intact loss {each.intact_loss:.4f} on {each.num_examples} examples (a custom "
                f"loss: no error rate).")
    return (f"Intact error {each.intact_error:.2%} on {each.num_examples} examples "
            f"(loss {each.intact_loss:.4f}).")


def _deletion_lines(a) -> list:
    """Single deletions grouped by what was deleted (attention / MLP sublayers, whole layers,
    downsampling blocks), in the metric that suits the model."""
    each = a.delete_each
    rows = [r for r in each.rows if r["kind"] == "delete"]
    subs = each.sublayers
    groups: dict = {}
    for r in rows:
        if r["downsampling"]:
            key = "a downsampling block"
        elif unit_of(a) == "layer":
            key = "one layer (all its sublayers)" if subs else "one layer"
        else:
            key = f"one {plots_common.sublayer_label(subs[r['deleted'][0]]) if subs else 'block'}"
        groups.setdefault(key, []).append(r)
    out = []
    for key, rs in groups.items():
        if a.tokens:
            loss = [r["loss"] for r in rs]
            ppl = [perplexity(v) for v in loss if np.isfinite(v)]
            text = (f"next-token loss {_range(loss, '.4g')}; perplexity "
                    + (f"{min(ppl):.4g} to {max(ppl):.4g}" if ppl else "n/a")
                    + f"; next-token error {_range([r['error'] for r in rs])}")
        elif np.isfinite(a.intact_error):
            text = f"error {_range([r['error'] for r in rs])}"
        else:
            text = f"loss {_range([r['loss'] for r in rs], '.4g')}"
        out.append(f"- Deleting {key}: {text}.")
    return out


def listed(v) -> str:
    return ", ".join(map(str, v))


def _range(v, spec: str = ".2%") -> str:
    v = [e for e in v if np.isfinite(e)]
    if not v:
        return "n/a"
    return f"{min(v):{spec}} to {max(v):{spec}} (median {float(np.median(v)):{spec}})"


def num_layers(a) -> int:
    """How many modules (transformer layers) the blocks come from."""
    return len(a.delete_each.units("layer"))
