"""A tokenizer folder's own code is never run and never asked about (issue 18, item 6): a
folder whose tokenizer_config.json (or config.json) has an auto_map naming a tokenization_*.py
is refused in one line before transformers sees it. The oracle is the folder's code itself:
imported, it would write a marker file; the run happens in a fresh process with stdin closed,
so a prompt would show (or hang to the timeout) instead of passing unseen."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pathens
from pathens.text import tokenizer_from

pytest.importorskip("transformers")


def code_folder(tmp_path: Path, config: str = "tokenizer_config.json") -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "tokenization_x.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedTokenizer\n"
        "class XTokenizer(PreTrainedTokenizer):\n    pass\n")
    (folder / config).write_text(json.dumps({
        "tokenizer_class": "XTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}))
    return folder


def test_a_tokenizer_folder_with_its_own_code_is_refused_unrun_and_unasked(tmp_path):
    folder = code_folder(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(Path(pathens.__file__).parent.parent),
               OMP_NUM_THREADS="1")
    script = ("import os, sys; os.close(0)\n"  # stdin closed: a prompt gets no answer
              "from pathens.text import tokenizer_from\n"
              "try:\n    tokenizer_from(sys.argv[1])\n"
              "except Exception as err:\n    print(type(err).__name__, err)\n")
    run = subprocess.run([sys.executable, "-c", script, f"hf:{folder}"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    said = run.stdout.strip()
    assert said.startswith("PathensError tokenizer folder") and "\n" not in said, said
    assert "names its own code (tokenizer_config.json's auto_map: tokenization_x.XTokenizer " \
           "(tokenization_x.py))" in said and "never runs" in said
    assert "custom code" not in run.stdout + run.stderr  # transformers's prompt
    assert not (tmp_path / "ran").exists()


def test_an_auto_map_in_config_json_is_refused_too(tmp_path):
    folder = code_folder(tmp_path, config="config.json")
    with pytest.raises(pathens.PathensError, match="config.json's auto_map"):
        tokenizer_from(f"hf:{folder}")
    assert not (tmp_path / "ran").exists()


def test_every_from_pretrained_in_the_package_refuses_remote_code():
    """Read from the source: every from_pretrained call passes trust_remote_code=False."""
    import ast
    calls = []
    for path in Path(pathens.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                trust = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
                calls.append((path.name, node.lineno))
                assert len(trust) == 1 and isinstance(trust[0], ast.Constant) and \
                    trust[0].value is False, calls[-1]
    assert {name for name, _ in calls} >= {"text.py", "hf.py"}, calls
