"""Inputs that ended in a traceback, a 30-minute wait or a wrong exit message: each is now one
line (exit 2), at once."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pathens
from cli_helpers import checkpoint, refused, run
from pathens import imagefolder

MODEL = """\
import torch, pathens
def make():
    torch.manual_seed(0)
    return pathens.cifar_resnet(8, width=4, num_classes=2)
"""


def test_an_image_size_pil_would_refuse_is_one_line(capsys, tmp_path):
    """--image-size 30000 crashed in the first batch with PIL's DecompressionBombError."""
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "a" / "x.png")
    (tmp_path / "m.py").write_text(MODEL)
    err = refused(capsys, "gradients", "--model", f"{tmp_path / 'm.py'}:make", "--data",
                  "imagefolder", "--root", tmp_path / "val", "--image-size", "30000",
                  "--workers", "0", "--out", tmp_path / "o",
                  match="image size 30000 (--image-size; crop_pct 0.875) resizes every image to "
                        "at least 34285 x 34285 pixels, more than PIL's limit")
    largest = int(err.rsplit("at most ", 1)[1])
    imagefolder.eval_transform(image_size=largest)  # the largest it names is allowed ...
    with pytest.raises(pathens.PathensError, match=f"at most {largest}$"):  # ... one more is not
        imagefolder.eval_transform(image_size=largest + 1)
    side = int(np.floor(largest / 0.875))  # and PIL takes its resized images
    assert side * side <= Image.MAX_IMAGE_PIXELS < (side + 2) ** 2


def test_a_model_on_the_meta_device_is_one_line(capsys, tmp_path):
    """It failed with "Cannot copy out of meta tensor" (a traceback)."""
    (tmp_path / "meta.py").write_text("import torch, pathens\ndef make():\n    with torch.device("
                                      "'meta'):\n        return pathens.cifar_resnet(8, width=4, "
                                      "in_channels=1)\n")
    refused(capsys, "gradients", "--model", f"{tmp_path / 'meta.py'}:make", "--data", "digits",
            "--out", tmp_path / "o", match="make() returned a model on the meta device (shapes, "
                                           "no values: conv1.weight first)")


def test_inputs_of_the_wrong_kind_are_one_line():
    torch.manual_seed(0)
    view = pathens.wrap(pathens.cifar_resnet(8, width=4).eval())
    y = torch.randint(0, 10, (4,))
    images = torch.randint(-3, 255, (4, 3, 32, 32))  # int64 (negative too: a TypeError before)
    with pytest.raises(pathens.PathensError, match="inputs are int64 but the model takes "
                                                   "floating-point inputs .*x.float()"):
        pathens.lesion.evaluate(view, (images, y))
    with pytest.raises(pathens.PathensError, match=r"inputs are uint8 .*x.float\(\) / 255\) and "
                                                   r"normalise them"):
        pathens.path_gradients(view, images.clamp(0, 255).to(torch.uint8), y, progress=False)


def test_float_token_ids_to_gpt2_are_one_line():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50, n_positions=8)
    view = pathens.wrap(transformers.GPT2LMHeadModel(config).eval())
    ids = torch.randint(0, 50, (2, 8))
    pathens.lesion.evaluate(view, (ids, ids))
    with pytest.raises(pathens.PathensError, match=r"inputs are float32 but the model takes token "
                                                   r"ids .*ids.long\(\)"):
        pathens.lesion.evaluate(view, (ids.float(), ids))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_lone_rank_stops_after_the_rendezvous_timeout(tmp_path, rank):
    """WORLD_SIZE=2 with one process started: it waited 30 minutes, silently. (A process of its
    own, killed after 2 minutes: the old behaviour fails the test instead of hanging it.)"""
    ckpt = checkpoint(tmp_path / "net.pt")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_USE_AGENT_STORE"}
    env.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), PATHENS_RENDEZVOUS_TIMEOUT="2", OMP_NUM_THREADS="1",
               TORCH_CPP_LOG_LEVEL="FATAL",  # c10d's own retry logs: not pathens's to word
               PYTHONPATH=str(Path(pathens.__file__).parent.parent))
    done = subprocess.run([sys.executable, "-m", "pathens", "gradients", str(ckpt), "--out",
                           str(tmp_path / "o")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"pathens: rank {rank} of 2: waiting up to 2 s for the other 1 process " \
                       f"to join at 127.0.0.1:{port} (PATHENS_RENDEZVOUS_TIMEOUT)"
    assert lines[1].startswith(f"pathens: error: rank {rank} of 2: the other processes did not "
                               f"join within 2 s at 127.0.0.1:{port}"), done.stderr
    assert "PATHENS_RENDEZVOUS_TIMEOUT sets the wait in seconds" in lines[1]
    assert len(lines) == 2, done.stderr
    assert not (tmp_path / "o").exists()


def test_world_size_without_a_launcher_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    refused(capsys, "gradients", checkpoint(tmp_path / "net.pt"), "--out", tmp_path / "o",
            match="WORLD_SIZE=2 asks for 2 processes, but RANK and MASTER_ADDR and MASTER_PORT "
                  "are not set: start them with torchrun")


def test_an_interrupt_while_loading_says_nothing_ran(capsys, tmp_path):
    """A --model file interrupted on import exited 130 with "re-run with --resume"."""
    (tmp_path / "slow.py").write_text("raise KeyboardInterrupt\ndef make():\n    pass\n")
    code, _, err = run(capsys, "lesion", "--model", f"{tmp_path / 'slow.py'}:make", "--data",
                       "digits", "--out", tmp_path / "o")
    assert code == 130
    assert err == "pathens: interrupted while loading the model and data, before the run " \
                  "began: nothing was written\n"
    assert not (tmp_path / "o").exists()
