"""Inputs that used to give a wrong number without a word: processes of one torchrun run on
different files, an image replaced between a run and its --resume, 16-bit and float images,
a calibration set taken from the evaluation set, non-float weights, a Hugging Face folder
without its tokenizer, a model changed after it was wrapped. Each is now measured right or
refused in one line."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

import pathens
from cli_helpers import checkpoint, refused, run
from nets import VARIANTS, batch, small_resnet
from pathens import imagefolder


# ---- processes of one run on different files ----------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, base):
    """As torchrun starts a rank (its environment), in a working folder of its own: the same
    relative paths name different files, as on two machines. Writes what each check said."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from pathens import distributed
    from pathens.cli import main
    distributed.init_from_env("cpu")
    said = {}
    view = pathens.wrap(small_resnet(8, **VARIANTS[0][1]))
    x, y = batch(6, seed=rank)  # rank 1's examples are not rank 0's
    try:
        pathens.path_gradients(view, x, y, progress=False)
        said["api"] = "measured"
    except pathens.PathensError as err:
        said["api"] = str(err)
    for differs in ("data", "model"):
        os.chdir(Path(base) / differs / f"node{rank}")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["gradients", "net.pt", "--data", "d.npz", "--quiet", "--out", "out"])
        said[differs] = dict(code=code, err=err.getvalue())
    Path(base, f"rank{rank}.json").write_text(json.dumps(said))
    torch.distributed.destroy_process_group()


def test_ranks_holding_different_files_are_refused_by_every_command(tmp_path):
    """path_gradients, and `pathens gradients` on two ranks whose data files (or checkpoints)
    differ behind the same relative paths: the command used to mix the ranks' results (exit
    0); now every rank refuses (exit 2) and nothing is written."""
    for differs in ("data", "model"):
        for rank in (0, 1):
            node = tmp_path / differs / f"node{rank}"
            node.mkdir(parents=True)
            rng = np.random.default_rng(rank if differs == "data" else 0)
            np.savez(node / "d.npz", x=rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8),
                     y=rng.integers(0, 10, 6))
            checkpoint(node / "net.pt", seed=rank if differs == "model" else 0)
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        said = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert said["api"].startswith("rank 1 (on ") and "holds other data than rank 0" in \
            said["api"]
        for differs, what in (("data", "data"), ("model", "model weights")):
            assert said[differs]["code"] == 2, said
            assert said[differs]["err"].count("\n") == 1, said
            assert f"rank 1 (on {socket.gethostname()}) holds other {what} than rank 0" in \
                said[differs]["err"], said
            assert not (tmp_path / differs / f"node{rank}" / "out").exists()


# ---- --resume after an image was replaced ----------------------------------------------------

def write_images(root, per_class=10, size=8, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / f"c{c}" / f"{i:02d}.png")
    return root


MODEL = """\
import torch, pathens
def make():
    torch.manual_seed(0)
    return pathens.cifar_resnet(8, width=4, num_classes=2)
"""


def test_resume_after_an_image_outside_the_sampled_ones_changed_is_refused(capsys, tmp_path):
    root = write_images(tmp_path / "val")
    (tmp_path / "m.py").write_text(MODEL)
    argv = ["lesion", "--model", f"{tmp_path / 'm.py'}:make", "--data", "imagefolder", "--root",
            root, "--image-size", "8", "--workers", "0", "--ks", "1", "--trials", "1",
            "--quiet", "--out", tmp_path / "out"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    samples = imagefolder.loader(root, image_size=8, workers=0).dataset.samples
    sampled = set(np.linspace(0, len(samples) - 1, 16).astype(int).tolist())
    i = next(i for i in range(len(samples)) if i not in sampled)  # not among the 16 hashed
    rng = np.random.default_rng(99)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(samples[i][0])
    refused(capsys, *argv, "--resume", match="holds a different lesion sweep (data:")


# ---- 16-bit and float images ------------------------------------------------------------------

def decoded(root):
    """The images of a folder as the loader gives them, in [0, 1] (no normalisation, no resize:
    the images are 8 x 8 already)."""
    stream = imagefolder.loader(root, image_size=8, crop_pct=1.0, normalize="none", workers=0)
    x, _ = next(iter(stream))
    return x


@pytest.mark.parametrize("kind", ["png16", "tiff_float"])
def test_high_depth_images_are_scaled_not_clipped(tmp_path, kind):
    rng = np.random.default_rng(0)
    (tmp_path / "val" / "a").mkdir(parents=True)
    if kind == "png16":  # mean 0.5 of 65535: convert("RGB") made it 0.998
        pixels = rng.integers(0, 65536, (8, 8)).astype(np.uint16)
        values = pixels / 65535
        Image.fromarray(pixels).save(tmp_path / "val" / "a" / "x.png")
        assert Image.open(tmp_path / "val" / "a" / "x.png").mode == "I;16"
    else:  # floats in [0, 1]: convert("RGB") made them 0
        values = rng.random((8, 8)).astype(np.float32)
        Image.fromarray(values).save(tmp_path / "val" / "a" / "x.tif")
        assert Image.open(tmp_path / "val" / "a" / "x.tif").mode == "F"
    x = decoded(tmp_path / "val")
    assert x.shape == (1, 3, 8, 8)
    for channel in x[0]:  # grey: the same in R, G and B; 8-bit: within half a level
        np.testing.assert_allclose(channel.numpy(), values, atol=0.5 / 255 + 1e-6)
    assert abs(float(x.mean()) - values.mean()) < 1 / 255


def test_images_whose_scale_is_unknown_are_refused_before_any_batch(tmp_path):
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 3.5, np.float32)).save(tmp_path / "val" / "a" / "f.tif")
    with pytest.raises(pathens.PathensError, match=r"f\.tif cannot be decoded as an image "
                                                   r"\(ImageError: float pixels \(PIL mode F\) "
                                                   r"range over 3\.5 to 3\.5, not \[0, 1\]"):
        imagefolder.loader(tmp_path / "val", workers=0)
    (tmp_path / "val" / "a" / "f.tif").unlink()
    Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 1000).save(
        tmp_path / "val" / "a" / "i.tif")
    with pytest.raises(pathens.PathensError, match=r"i\.tif .*32-bit integer pixels"):
        imagefolder.loader(tmp_path / "val", workers=0)


# ---- the calibration set of --recalibrate -----------------------------------------------------

def digits_npz(path, n, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), y=rng.integers(0, 10, n))
    return path


def test_recalibrate_needs_a_calibration_set_apart_from_the_evaluation_set(capsys, tmp_path):
    ckpt = checkpoint(tmp_path / "bn.pt")
    data, cal = digits_npz(tmp_path / "eval.npz", 12, 0), digits_npz(tmp_path / "cal.npz", 6, 1)
    argv = ["lesion", ckpt, "--data", data, "--normalize", "none", "--ks", "1", "--trials", "1",
            "--recalibrate", "4", "--quiet"]
    refused(capsys, *argv, "--out", tmp_path / "o", match="--recalibrate 4 needs training "
            "examples, but --data " + str(data) + " has no train split (its first 4 examples "
            "would be the evaluation set itself): name them with --calibration-data")
    refused(capsys, *argv, "--calibration-data", tmp_path / "nothing.csv", "--out", tmp_path / "o",
            match="neither an image folder nor an .npz")
    refused(capsys, *argv[:-3], "--calibration-data", cal, "--out", tmp_path / "o",
            match="--calibration-data is for --recalibrate N")
    assert not (tmp_path / "o").exists()
    code, _, err = run(capsys, *argv, "--calibration-data", cal, "--out", tmp_path / "o")
    assert code == 0, err
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["calibration"] == dict(source=".npz", path=str(cal), examples=4)
    assert config["settings"]["calibration_data"] == str(cal)
    # the rows are those of the API recalibrating on the first 4 examples of cal.npz
    model, _ = pathens.load(ckpt)
    x, y = pathens.data.load_npz(data, normalize="none")
    calib = pathens.data.load_npz(cal, normalize="none", limit=4)[0]
    ref = pathens.lesion.delete_each(pathens.wrap(model), (x, y), recalibrate=calib,
                                     progress=False)
    rows = [r.split(",") for r in (tmp_path / "o" / "delete_each.csv").read_text().splitlines()]
    got = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert [int(r["errors"]) for r in got] == [r["errors"] for r in ref.rows]
    np.testing.assert_allclose([float(r["loss"]) for r in got], [r["loss"] for r in ref.rows],
                               rtol=1e-6)
    code, _, err = run(capsys, *argv, "--calibration-data", data, "--out", tmp_path / "o",
                       "--resume")
    assert code == 2 and "--calibration-data" in err  # a resume with another calibration set


def test_split_train_of_an_image_folder_or_npz_is_refused(capsys, tmp_path):
    root = write_images(tmp_path / "val", per_class=2)
    (tmp_path / "m.py").write_text(MODEL)
    refused(capsys, "gradients", "--model", f"{tmp_path / 'm.py'}:make", "--data", "imagefolder",
            "--root", root, "--split", "train", "--out", tmp_path / "o",
            match="--split train: an image folder has no splits (it is one): point --root at")
    refused(capsys, "gradients", checkpoint(tmp_path / "bn.pt"), "--data",
            digits_npz(tmp_path / "d.npz", 4, 0), "--split", "train", "--out", tmp_path / "o",
            match="--split train: an .npz file has no splits")
    root2 = write_images(tmp_path / "cal", per_class=3, seed=1)
    code, _, err = run(capsys, "lesion", "--model", f"{tmp_path / 'm.py'}:make", "--data",
                       "imagefolder", "--root", root, "--image-size", "8", "--workers", "0",
                       "--recalibrate", "5", "--calibration-data", root2, "--ks", "1",
                       "--trials", "1", "--quiet", "--out", tmp_path / "if")
    assert code == 0, err
    config = json.loads((tmp_path / "if" / "config.json").read_text())
    assert config["calibration"] == dict(source="image folder", path=str(root2), examples=5)


# ---- non-float weights for a float model ------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.complex64])
def test_non_float_weights_for_float_parameters_are_refused(capsys, tmp_path, dtype):
    """A cast used to load them: bool weights became 0/1 (loss 1.3e7), int8 ones lost their
    quantisation scales, complex ones their imaginary part."""
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    model = pathens.cifar_resnet(8, width=4, in_channels=1, num_classes=10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = "layer1.0.conv1.weight"
    state[name] = (state[name] * 100).to(dtype) if dtype != torch.bool else state[name] > 0
    safetensors.save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(pathens.PathensError, match=f"the tensor '{name}' is "
                       f"{str(dtype).split('.')[1]} but the model's is float32"):
        pathens.load_weights(model, tmp_path / "w.safetensors")
    (tmp_path / "m.py").write_text("import pathens\ndef make():\n    return pathens.cifar_resnet("
                                   "8, width=4, in_channels=1, num_classes=10)\n")
    refused(capsys, "gradients", tmp_path / "w.safetensors", "--model", f"{tmp_path / 'm.py'}:make",
            "--data", "digits", "--out", tmp_path / "o", match=f"the tensor '{name}' is")


# ---- a Hugging Face text model: its context, its tokenizer ------------------------------------

def test_a_hugging_face_folder_sets_the_window_and_needs_its_tokenizer(capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    for vocab in (256, 300):
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=vocab,
                                         n_positions=16, bos_token_id=0, eos_token_id=0)
        transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / f"gpt{vocab}")
    capsys.readouterr()
    argv = ["gradients", "--data", "text", "--root", text, "--limit", "3", "--quiet"]
    # --seq-len defaults to the model's context (16 positions), not 64 (an index error)
    code, _, err = run(capsys, *argv, "--arch", f"hf:{tmp_path / 'gpt256'}", "--out",
                       tmp_path / "g")
    assert code == 0, err
    data = json.loads((tmp_path / "g" / "gradients_exact.json").read_text())["config"]["data"]
    assert data["seq_len"] == 16 and data["tokenizer"]["kind"] == "bytes"
    # a 300-token vocabulary and no tokenizer files: not bytes unless the user says so
    refused(capsys, *argv, "--arch", f"hf:{tmp_path / 'gpt300'}", "--out", tmp_path / "h",
            match=f"the Hugging Face folder {tmp_path / 'gpt300'} has no tokenizer files")
    code, _, err = run(capsys, *argv, "--arch", f"hf:{tmp_path / 'gpt300'}", "--tokenizer",
                       "bytes", "--out", tmp_path / "h")
    assert code == 0, err


# ---- a model changed after it was wrapped -----------------------------------------------------

def test_a_view_refuses_a_model_changed_after_wrap():
    """The view used to keep running the old modules (loss 3.57 against the model's 118.7,
    10 classes against 5) or fail with a KeyError; now every measurement says which module
    changed."""
    import copy
    model = small_resnet(8, **VARIANTS[0][1])
    view = pathens.wrap(model)
    x, y = batch(6, seed=1)
    torch.testing.assert_close(view(x), model(x))  # unchanged: it runs
    model.linear = torch.nn.Linear(model.linear.in_features, 5).double()
    assert model(x).shape == (6, 5)
    match = r"the model changed after it was wrapped: linear is now a Linear \(a Linear when " \
            r"wrapped\)"
    with pytest.raises(pathens.PathensError, match=match):
        pathens.lesion.evaluate(view, (x, y % 5))
    with pytest.raises(pathens.PathensError, match=match):
        pathens.path_gradients(view, x, y % 5, progress=False)
    with pytest.raises(pathens.PathensError, match=match):
        view(x)
    again = pathens.wrap(model)  # wrapped again: the new head is the view's
    torch.testing.assert_close(again(x), model(x))
    model.layer1[0] = copy.deepcopy(model.layer1[0])
    with pytest.raises(pathens.PathensError, match="layer1.0 is now a BasicBlock"):
        pathens.lesion.delete_each(again, (x, y % 5), progress=False)


def test_a_transformer_view_refuses_a_replaced_block():
    import copy
    torch.manual_seed(0)
    model = pathens.gpt(depth=2, width=16, heads=2, context=8, vocab_size=32).eval()
    view = pathens.wrap(model)
    ids = torch.randint(0, 32, (3, 8))
    pathens.lesion.evaluate(view, (ids, ids))
    model.h[0] = copy.deepcopy(model.h[1])
    with pytest.raises(pathens.PathensError, match=r"h\.0 is now a"):
        pathens.path_gradients(view, ids, ids, progress=False)
    view = pathens.wrap(model)
    del model.h[1]
    with pytest.raises(pathens.PathensError, match=r"h\.1 was removed \(a Layer when wrapped\)"):
        pathens.lesion.evaluate(view, (ids, ids))
