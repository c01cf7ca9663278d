"""Results where researchers read them: report.md with figures, results.json and a CSV per
table (writer.py), the report's text (markdown.py) and the figures (plots/, one module per
measurement family).

    pathens.report.write("out", [analysis])
    pathens.report.write_diagnoses("out", [diagnosis, ...])   # the diagnostics alone
"""
from .diagnoses import write_diagnoses
from .writer import write

__all__ = ["write", "write_diagnoses"]
