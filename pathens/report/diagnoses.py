"""The report of the diagnostics alone (pathens.diagnosis, `pathens diagnose`): several
networks side by side, e.g. BatchNorm, SkipInit, Fixup and plain.

    pathens.report.write_diagnoses("out", [d_bn, d_skipinit, d_fixup, d_plain])

report.md: a table of every network's key numbers (each result's headline()), what each
quantity is and what the papers expect (each result's notes, once), the figures comparing the
networks (each registered with @comparison_of), then a section per network (its summary lines,
its subsections and figures: the Result protocol, pathens/results.py); results.json; a CSV per
table. Consumes Diagnosis objects only and names no measurement: a new diagnostic that follows
the protocol appears here by being registered.
"""
from __future__ import annotations

import json
from pathlib import Path


from ..errors import PathensError
from ..io import write_text
from ..results import csv_text
from .writer import (distinct_slugs, file_slug, finish, registered_comparisons, result_figure,
                     versions)

__all__ = ["write_diagnoses"]


def write_diagnoses(out, diagnoses: list, *, title: str = "pathens diagnostics",
                    command: str = "", extra: dict | None = None) -> Path:
    """Write the report of `diagnoses` into the folder `out`; return the path of report.md.

    out:       the folder (created if needed); files of the names below are replaced.
    diagnoses: Diagnosis objects (pathens.diagnose), one section each, in order; their names
               must differ in their slugs (the file-name prefix).
    title, command, extra: the heading, the command line that produced it, further settings
               to record (JSON-serialisable), as report.write takes them.

    Files: report.md and report.html (the same, self-contained); results.json (every number:
    per network its model, data, config and each result's to_dict()); per network
    `<slug>_<table>.csv` for each result's tables and `<slug>_<suffix>.png` for each
    registered figure; with several networks the comparison
    figures (`comparison_signal.png`, `comparison_jacobians.png`,
    `comparison_singularities.png`: those whose results two networks or more hold).
    """
    diagnoses = list(diagnoses)
    _check(diagnoses)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections, models = [], {}
    for d in diagnoses:
        slug = file_slug(d.name)
        figures = {key: result_figure(out, slug, d, key) for key in d.results}
        for key, res in d.results.items():
            for suffix, rows in res.tables().items():
                write_text(out / f"{slug}_{suffix or key}.csv", csv_text(rows))
        models[d.name] = dict(model=d.model, data=d.data, config=d.config, residual=d.residual,
                              blocks=list(d.block_names),
                              **{key: res.to_dict() for key, res in d.results.items()})
        sections.append(_section(d, slug, figures))
    compare = registered_comparisons(out, diagnoses) if len(diagnoses) > 1 else {}
    write_text(out / "results.json", json.dumps(dict(title=title, command=command,
                                                     versions=versions(), extra=extra or {},
                                                     models=models), indent=2, default=str))
    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += ["## Diagnostics side by side", "", _headline_table(diagnoses), ""]
    for note in dict.fromkeys(n for d in diagnoses for r in d.results.values() for n in r.notes()):
        lines += [note, ""]
    for caption, name in compare.items():
        lines += [f"![{caption}]({name})", ""]
    lines += sections
    lines += ["## Configuration and versions", "", "```json",
              json.dumps(dict(versions=versions(), extra=extra or {},
                              diagnoses={d.name: d.config for d in diagnoses}), indent=2,
                         default=str), "```", ""]
    return finish(out, lines)


def _check(diagnoses) -> None:
    if not diagnoses:
        raise PathensError("report.write_diagnoses needs at least one Diagnosis")
    for d in diagnoses:
        if not hasattr(d, "results") or not hasattr(d, "block_names"):
            raise PathensError(f"report.write_diagnoses takes Diagnosis objects "
                               f"(pathens.diagnose), got {type(d).__name__}")
    distinct_slugs(diagnoses, "diagnoses")


def _kind(d) -> str:
    return "residual" if d.residual else "plain"


def _headline_table(diagnoses) -> str:
    cells = [{k: v for r in d.results.values() for k, v in r.headline().items()}
             for d in diagnoses]
    columns = list(dict.fromkeys(k for c in cells for k in c))
    rows = ["| network | kind | blocks | " + " | ".join(columns) + " |",
            "|" + "---|" * (3 + len(columns))]
    for d, c in zip(diagnoses, cells):
        unit = "blocks" if d.residual else "layers"
        rows.append(f"| {d.name} | {_kind(d)} | {d.num_blocks} {unit} | "
                    + " | ".join(c.get(k, "not run") for k in columns) + " |")
    return "\n".join(rows)


def _section(d, slug: str, figures: dict) -> str:
    examples = d.config.get("examples")
    count = f"{examples} examples" if examples is not None else "the loader's examples"
    what = (f"a residual network of {d.num_blocks} blocks" if d.residual else
            f"a plain network of {d.num_blocks} layers (no shortcuts): every diagnostic per "
            f"layer, no branch")
    lines = [f"## {d.name}", "", f"Model: `{json.dumps(d.model, default=str)}`  ",
             f"Data: `{json.dumps(d.data, default=str)}`  ",
             f"{what[0].upper() + what[1:]}; {count}; loss: {d.config.get('loss')}.", ""]
    for res in d.results.values():
        lines += res.summary_lines()
    for key, res in d.results.items():
        lines += res.markdown(name=d.name, slug=slug, figure=figures.get(key))
    return "\n".join(lines) + "\n"
