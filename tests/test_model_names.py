"""A model's name in a report is always true: the checkpoint's file name (its folder's for a
generic one), the --model function, the folder of --arch hf:DIR with its architecture and
class in the title; never None (a Hugging Face folder was "pathens analysis of None" with
files none_*.csv)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from cli_helpers import checkpoint, run
from pathens.cli.inputs import checkpoint_name, model_title


def args(**kw):
    return argparse.Namespace(**{"checkpoint": None, "model": None, "arch": None, **kw})


def test_names_from_what_the_command_line_gave(tmp_path):
    assert checkpoint_name(args(checkpoint="runs/bn56.pt"), "runs/bn56.pt") == "bn56"
    assert checkpoint_name(args(), tmp_path / "resnet-a" / "model.safetensors") == "resnet-a"
    assert checkpoint_name(args(), tmp_path / "run3" / "best.pt") == "run3"
    assert checkpoint_name(args(model="nets/mine.py:build"), None) == "build"
    hf = args(arch=f"hf:{tmp_path / 'tiny-gpt2'}")
    meta = {"hf_dir": str(tmp_path / "tiny-gpt2"), "hf_class": "GPT2LMHeadModel"}
    assert checkpoint_name(hf, None, meta) == "tiny-gpt2"
    assert model_title(hf, "tiny-gpt2", meta) == \
        f"tiny-gpt2 (hf:{tmp_path / 'tiny-gpt2'}, GPT2LMHeadModel)"
    assert model_title(args(checkpoint="runs/bn56.pt"), "bn56") == "runs/bn56.pt"  # as before
    assert checkpoint_name(args(arch="hf:."), None, {}) not in ("", "None")


def test_a_hugging_face_folder_is_named_by_its_folder(capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=256,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "tiny-gpt2")
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "an"
    code, _, err = run(capsys, "analyze", "--arch", f"hf:{tmp_path / 'tiny-gpt2'}", "--data",
                       "text", "--root", text, "--seq-len", "8", "--limit", "4", "--samples",
                       "0", "--trials", "1", "--gradient-examples", "2", "--quiet",
                       "--out", out)
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert md.startswith(f"# pathens analysis of tiny-gpt2 (hf:{tmp_path / 'tiny-gpt2'}, "
                         f"GPT2LMHeadModel)\n")
    assert "None" not in md.split("\n", 1)[0] and "## tiny-gpt2\n" in md
    assert list(json.loads((out / "results.json").read_text())["models"]) == ["tiny-gpt2"]
    files = sorted(p.name for p in out.glob("*.csv"))
    assert files and all(f.startswith("tiny-gpt2_") for f in files)
    assert not list(out.glob("none*"))


def test_compare_names_generic_weight_files_by_their_folders(capsys, tmp_path):
    for run_dir in ("bn", "skipinit"):
        (tmp_path / run_dir).mkdir()
        checkpoint(tmp_path / run_dir / "model.pt", depth=8, norm=run_dir)
    code, _, err = run(capsys, "compare", tmp_path / "bn" / "model.pt",
                       tmp_path / "skipinit" / "model.pt", "--samples", "0", "--trials", "1",
                       "--gradient-examples", "4", "--limit", "16", "--quiet",
                       "--out", tmp_path / "cmp")
    assert code == 0, err
    models = json.loads((tmp_path / "cmp" / "results.json").read_text())["models"]
    assert list(models) == ["bn", "skipinit"]
