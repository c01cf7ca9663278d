"""The embedded data in data/: every file as its manifest and README say (size, sha256, the
command recorded inside it), and shipped by the build so that an installed pathens finds it."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from pathens import demo
from pathens.errors import PathensError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "bundled"


def digest(path) -> str:  # the test's own hash, not demo.sha256
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def manifest():
    return json.loads((DATA / "MANIFEST.json").read_text())["files"]


def test_files_match_the_manifest(manifest):
    assert sorted(e["name"] for e in manifest) == sorted(p.name for p in DATA.glob("*.pt"))
    assert {e["name"] for e in manifest} == {demo.checkpoint_name(n) for n in demo.RECIPE}
    for e in manifest:
        path = DATA / e["name"]
        assert path.stat().st_size == e["bytes"], e["name"]
        assert digest(path) == e["sha256"], e["name"]
        meta = torch.load(path, weights_only=True)["pathens"]  # the provenance inside the file
        assert e["command"] == meta["extra"]["command"]
        assert e["recipe"] == meta["extra"]["recipe"] and e["seed"] == meta["seed"]
        assert f"{meta['accuracy']:.2%}" in e["what"] and meta["dataset"] in e["what"]


def test_readme_table_matches_the_manifest(manifest):
    text = (ROOT / "data" / "README.md").read_text()
    for e in manifest:
        (row,) = [ln for ln in text.splitlines() if ln.startswith(f"| `bundled/{e['name']}` |")]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == f"`{e['command']}`" and cells[3] == str(e["bytes"])
        assert cells[4] == f"`{e['sha256']}`"
        assert re.search(r"test accuracy (\S+)%", cells[1]).group(1) + "%" in e["what"]


def test_the_checkout_finds_the_data_and_checks_it(tmp_path, manifest):
    assert demo.bundled_dir() == DATA  # run from a checkout: data/bundled itself
    assert demo.check_bundled() == DATA
    # a stale copy (one byte changed) and an incomplete manifest are refused by name
    copy = tmp_path / "bundled"
    shutil.copytree(DATA, copy)
    first = copy / manifest[0]["name"]
    raw = bytearray(first.read_bytes())
    raw[-1] ^= 1
    first.write_bytes(bytes(raw))
    with pytest.raises(PathensError, match=f"{first.name}.*is not the one MANIFEST.json lists"):
        demo.check_bundled(copy)
    shutil.copy(DATA / first.name, first)
    demo.check_bundled(copy)
    doc = json.loads((copy / "MANIFEST.json").read_text())
    doc["files"] = doc["files"][1:]
    (copy / "MANIFEST.json").write_text(json.dumps(doc))
    with pytest.raises(PathensError, match=f"does not list {first.name}"):
        demo.check_bundled(copy)


def test_write_manifest_reproduces_the_committed_one(tmp_path):
    copy = tmp_path / "bundled"
    shutil.copytree(DATA, copy)
    (copy / "MANIFEST.json").unlink()
    demo.write_manifest(copy)
    assert (copy / "MANIFEST.json").read_text() == (DATA / "MANIFEST.json").read_text()


def test_the_wheel_ships_the_data_and_the_installed_package_finds_it(tmp_path, manifest):
    """Build the wheel as `pip install .` does (setuptools' PEP 517 backend), from a copy of
    the sources, then import pathens from the unpacked wheel: the checkpoints must be inside
    the package, byte for byte, and found there rather than in this checkout."""
    setuptools = pytest.importorskip("setuptools")
    major, minor = (int(v) for v in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.skip(f"setuptools {setuptools.__version__} builds wheels only with the wheel "
                    f"package, which is not installed (pip install wheel, or setuptools>=70.1)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for name in ("pathens", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_wheel(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    # every module of the package is in the wheel (the package list in pyproject is explicit)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pathens").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    for e in manifest:
        assert f"pathens/bundled/{e['name']}" in names
        assert digest(site / "pathens" / "bundled" / e["name"]) == e["sha256"]
    assert "pathens/bundled/MANIFEST.json" in names
    probe = ("import pathens, pathens.demo as d; print(pathens.__file__); "
             "print(d.check_bundled())")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    module, folder = out.stdout.split()
    assert Path(module).parent == site / "pathens"
    assert Path(folder) == site / "pathens" / "bundled"
