"""Folders that name their own code are refused before transformers is asked about them.

A Hugging Face folder may carry Python files and an `auto_map` (in tokenizer_config.json or
config.json) naming classes in them; transformers then asks on a terminal whether to run that
code ("Do you wish to run the custom code? [y/N]", waiting 15 s) and runs it on "y". pathens
never runs a folder's code and never prompts: such a folder is refused in one line here, and
every from_pretrained call passes trust_remote_code=False as well.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import PathensError

FILES = ("tokenizer_config.json", "config.json")


def auto_map(folder: Path) -> tuple:
    """(file name, the classes its auto_map names) for the first file of FILES that has one,
    else (None, ()). A file that is not a JSON object is left to transformers to refuse."""
    for name in FILES:
        try:
            raw = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(raw, dict) and raw.get("auto_map"):
            entries = raw["auto_map"]
            values = entries.values() if isinstance(entries, dict) else [entries]
            named = [v for value in values
                     for v in (value if isinstance(value, (list, tuple)) else [value]) if v]
            return name, tuple(str(v) for v in named)
    return None, ()


def refuse_folder_code(folder: Path, what: str = "tokenizer folder") -> None:
    """A one-line PathensError when `folder` names code of its own (an auto_map)."""
    name, classes = auto_map(Path(folder))
    if name is None:
        return
    code = sorted(p.name for p in Path(folder).glob("*.py"))
    shown = ", ".join(classes[:3]) or "its own classes"
    files = f" ({', '.join(code[:3])})" if code else ""
    raise PathensError(f"{what} {folder} names its own code ({name}'s auto_map: {shown}{files}), "
                       f"which pathens never runs: use a tokenizer transformers itself provides "
                       f"(a folder with tokenizer.json, saved from a built-in tokenizer class), "
                       f"or --tokenizer bytes / chars")
