"""The command line on models pathens did not train: a user's own block class through --model
FILE.py:FUNCTION, a timm model on an image folder, a Hugging Face folder and pathens's own GPT
on text. Each run's numbers are compared with the Python API on the same model and data (an
independent route to the same computation), bad input is one line."""
from __future__ import annotations

import csv
import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import pathens
from cli_helpers import refused, run

USER_MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn

import pathens


class GatedBlock(nn.Module):
    """A third-party block: x + gate * conv2(relu(conv1(x))), then ReLU."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return F.relu(x + self.gate * self.conv2(F.relu(self.conv1(x))))


@pathens.register_block(GatedBlock)
def gated_parts(block):
    return pathens.BlockParts(branch=lambda x: block.conv2(F.relu(block.conv1(x))),
                              post=F.relu, scale=block.gate)


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), GatedBlock(6), GatedBlock(6),
                         GatedBlock(6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
'''


def errors(table) -> list:
    """The errors column of a lesion table the command wrote."""
    return [int(r["errors"]) for r in csv.DictReader(table.read_text().splitlines())]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_a_user_block_class_through_model(capsys, tmp_path):
    file = tmp_path / "mynet.py"
    file.write_text(USER_MODEL)
    out = tmp_path / "lesion"
    code, _, err = run(capsys, "lesion", "--model", f"{file}:make", "--data", "digits",
                       "--limit", "40", "--ks", "1", "--trials", "2", "--quiet", "--out", out)
    assert code == 0, err
    # the API on the same model (built by the same function) and the same digits
    import importlib.util
    spec = importlib.util.spec_from_file_location("mynet_again", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x, y = pathens.data.load_dataset("digits", limit=40)
    each = pathens.lesion.delete_each(pathens.wrap(module.make().eval(), example_input=x[:2]),
                                      (x, y), progress=False)
    assert errors(out / "delete_each.csv") == [r["errors"] for r in each.rows]
    # the same function with weights: a checkpoint of the model's own state dict loads into it
    weights = tmp_path / "w.pt"
    trained = module.make()
    with torch.no_grad():
        trained[1].gate.fill_(0.25)
    torch.save(trained.state_dict(), weights)
    code, _, err = run(capsys, "gradients", weights, "--model", f"{file}:make", "--data",
                       "digits", "--limit", "16", "--quiet", "--out", tmp_path / "g")
    assert code == 0, err
    got = json.loads((tmp_path / "g" / "gradients_exact.json").read_text())
    ref = pathens.path_gradients(pathens.wrap(trained.eval(), example_input=x[:2]), x[:16],
                                 y[:16], progress=False)
    np.testing.assert_allclose(got["total"], ref.total, rtol=1e-5)


def test_model_files_that_cannot_be_used_are_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('no GPU here')\n")
    refused(capsys, "lesion", "--model", f"{bad}:make", "--data", "digits", "--out",
            tmp_path / "o", match="RuntimeError")
    good = tmp_path / "good.py"
    good.write_text("def make():\n    return 3\n")
    refused(capsys, "lesion", "--model", f"{good}:make", "--data", "digits", "--out",
            tmp_path / "o", match="nn.Module")
    noblocks = tmp_path / "plainmlp.py"
    noblocks.write_text("from torch import nn\ndef make():\n    return nn.Sequential("
                        "nn.Flatten(), nn.Linear(64, 10))\n")
    refused(capsys, "lesion", "--model", f"{noblocks}:make", "--data", "digits", "--out",
            tmp_path / "o", match="register_block")
    assert not (tmp_path / "o").exists()


def test_a_timm_model_on_an_image_folder(capsys, tmp_path):
    timm = pytest.importorskip("timm")
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "val" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "val" / f"c{c}" / f"{i}.png")
    # zero_init_last=False: timm's default zeroes every branch's end, all gradient at length 0
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3,
                              zero_init_last=False).eval()
    torch.save(model.state_dict(), tmp_path / "r10.pth")
    out = tmp_path / "grad"
    code, _, err = run(capsys, "gradients", tmp_path / "r10.pth", "--arch", "timm:resnet10t",
                       "--data", "imagefolder", "--root", tmp_path / "val", "--image-size", "32",
                       "--workers", "0", "--quiet", "--out", out)
    assert code == 0, err
    got = json.loads((out / "gradients_exact.json").read_text())
    loader = pathens.imagefolder.loader(tmp_path / "val", model=model, image_size=32, workers=0)
    ref = pathens.path_gradients(pathens.wrap(model, example_input=next(iter(loader))[0][:2]),
                                 loader, progress=False)
    np.testing.assert_allclose(got["total"], ref.total, rtol=1e-5)
    assert np.count_nonzero(ref.total) == len(ref.total)  # every length carries some
    assert got["config"]["data"]["image_size"] == 32


def test_pathens_gpt_trains_on_text_and_is_lesioned_by_layer(capsys, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(textwrap.dedent(pathens.__doc__) * 40)
    ckpt = tmp_path / "gpt.pt"
    code, _, err = run(capsys, "train", "--arch", "gpt", "--data", "text", "--root", text,
                       "--depth", "2", "--width", "16", "--heads", "2", "--context", "16",
                       "--steps", "3", "--warmup-steps", "1", "--quiet", "--out", ckpt)
    assert code == 0, err
    out = tmp_path / "lesion"
    code, _, err = run(capsys, "lesion", ckpt, "--data", "text", "--root", text, "--limit", "6",
                       "--unit", "layer", "--ks", "1", "--trials", "2", "--quiet", "--out", out)
    assert code == 0, err
    model, meta = pathens.load(ckpt)
    ids, _ = pathens.load_corpus(text).windows("test", seq_len=16, limit=6)
    ref = pathens.lesion.delete_each(pathens.wrap(model), (ids, ids), unit="layer",
                                     progress=False)
    got = errors(out / "delete_each.csv")
    assert len(got) == 3 == len(ref.rows)  # intact, then each of the 2 layers
    assert got == [r["errors"] for r in ref.rows]
    assert all(r["n"] == 6 * 15 for r in ref.rows)  # tokens with a next token to predict
    code, _, err = run(capsys, "analyze", ckpt, "--data", "text", "--root", text, "--limit", "4",
                       "--samples", "0", "--trials", "1", "--gradient-examples", "2",
                       "--unit", "layer", "--quiet", "--out", tmp_path / "an")
    assert code == 0, err
    report = (tmp_path / "an" / "report.md").read_text()
    assert "next-token" in report and "perplexity" in report
    results = json.loads((tmp_path / "an" / "results.json").read_text())["models"]["gpt"]
    assert results["config"]["unit"] == "layer" and results["influence"] is not None
    refused(capsys, "train", "--arch", "gpt", "--data", "digits", "--out", tmp_path / "x.pt",
            match="--arch gpt trains on --data text")
    refused(capsys, "train", "--arch", "gpt", "--norm", "bn", "--data", "text", "--out",
            tmp_path / "x.pt", match="--norm bn is not a gpt normalisation")


def test_a_hugging_face_folder(capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=256,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "lesion"
    code, _, err = run(capsys, "lesion", "--arch", f"hf:{tmp_path / 'gpt2'}", "--data", "text",
                       "--root", text, "--seq-len", "16", "--limit", "5", "--ks", "1",
                       "--trials", "2", "--quiet", "--out", out)
    assert code == 0 and err == "", err  # --quiet: not even transformers' loading bars
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    capsys.readouterr()
    ids, _ = pathens.load_corpus(text).windows("test", seq_len=16, limit=5)
    ref = pathens.lesion.delete_each(pathens.wrap(model), (ids, ids), progress=False)
    assert errors(out / "delete_each.csv") == [r["errors"] for r in ref.rows]
    refused(capsys, "lesion", "--arch", f"hf:{tmp_path / 'nothing'}", "--data", "text", "--out",
            tmp_path / "o", match="no such folder")
    (tmp_path / "empty").mkdir()
    refused(capsys, "lesion", "--arch", f"hf:{tmp_path / 'empty'}", "--data", "text", "--out",
            tmp_path / "o", match="config.json")
