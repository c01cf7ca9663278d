"""The demo's bundled checkpoints: present, rebuilt from their metadata alone, and as accurate
on the digits test split as they say; the demo checks its inputs before any analysis."""
from __future__ import annotations

import shutil

import pytest
import torch

import pathens
from pathens import demo
from pathens.data.datasets import load_dataset
from pathens.demo import RECIPE, WIDTH, bundled_dir, checkpoint_name
from pathens.errors import PathensError


@pytest.mark.parametrize("name", list(RECIPE))
def test_bundled_checkpoint_matches_its_recipe_and_accuracy(name):
    path = bundled_dir() / checkpoint_name(name)
    assert path.is_file(), f"{path} missing: run experiments/train_demo_checkpoints.py"
    model, meta = pathens.load(path)
    arch, train = RECIPE[name]
    assert {k: meta["arch"][k] for k in arch} == arch and meta["arch"]["width"] == WIDTH
    assert meta["dataset"] == "digits" and meta["extra"]["train"] == train
    x, y = load_dataset("digits", split="test")
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    assert accuracy == pytest.approx(meta["accuracy"], abs=1e-9)
    assert accuracy > 0.85, f"{name}: {accuracy:.2%}"
    assert pathens.wrap(model).num_blocks == (arch["depth"] - 2) // 2


def test_bundled_checkpoints_stay_small():
    total = sum(p.stat().st_size for p in bundled_dir().glob("*.pt"))
    assert 0 < total < 10 * 2 ** 20


@pytest.fixture
def no_analysis(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an analysis ran before the inputs were checked")

    monkeypatch.setattr(demo, "analyze", fail)


def test_demo_refuses_an_unwritable_out_before_any_work(no_analysis, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PathensError, match="cannot create the output folder"):
        demo.run_demo(tmp_path / "file" / "out", progress=False, log=lambda line: None)


def test_demo_refuses_a_damaged_bundle_before_any_work(no_analysis, tmp_path, monkeypatch):
    copy = tmp_path / "bundled"
    shutil.copytree(bundled_dir(), copy)
    path = copy / checkpoint_name("BN ResNet-110")
    path.write_bytes(path.read_bytes()[:-10])  # a truncated download or copy
    monkeypatch.setattr(demo, "bundled_dir", lambda: copy)
    with pytest.raises(PathensError, match="bn_resnet110.pt .* is not the one MANIFEST.json"):
        demo.run_demo(tmp_path / "out", progress=False, log=lambda line: None)
