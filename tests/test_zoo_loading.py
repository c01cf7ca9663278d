"""Loading the checkpoints researchers hold, with nothing downloaded: pathens.zoo.build for
pathens CIFAR ResNets, torchvision, timm and Hugging Face folders, and pathens.user_model.load
for the user's own code.

The oracle of every round trip: a small random model (BN statistics randomised, so that they
must load too) is saved (.pt and .safetensors), rebuilt from its architecture name and the
file, and must compute exactly what the original computes, while a fresh random build of the
same name computes something else (the weights really were loaded); pathens.wrap must accept
the rebuilt model. Every bad input must be a one-line PathensError. A guard fails any test that
opens a network connection (nothing may touch a model hub)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import tomllib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub import

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import pathens  # noqa: E402
from pathens import user_model, zoo  # noqa: E402
from pathens.models.checkpoints import load_state_dict  # noqa: E402
from pathens.errors import CheckpointError, PathensError  # noqa: E402
from nets import randomize_bn  # noqa: E402

timm = pytest.importorskip("timm")
tv = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every connection attempt is refused and recorded; a test that made one fails, even where
    the attempt's failure was turned into a (passing) one-line error."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test_zoo_loading: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    assert not attempts, f"a network connection was attempted: {attempts}"


# ---- helpers ---------------------------------------------------------------------------------

randomize = randomize_bn  # random BN statistics: a loader that skipped buffers would show


def save(model: nn.Module, path: Path) -> Path:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        safetensors_torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def check_round_trip(original, rebuilt, random_build, x):
    """rebuilt computes exactly what original does; a random build of the name does not."""
    assert not rebuilt.training
    assert torch.equal(logits(original, x), logits(rebuilt, x))
    assert not torch.allclose(logits(original, x), logits(random_build, x))


def one_line(fn, *args, error=PathensError, **kwargs) -> str:
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    return msg


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- pathens CIFAR ResNets -------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_cifar_resnet_sizes_come_from_the_weights(tmp_path, suffix):
    torch.manual_seed(0)
    source = randomize(pathens.cifar_resnet(8, width=4, num_classes=5, in_channels=1, shortcut="B"))
    path = save(source, tmp_path / f"c{suffix}")
    model, meta = zoo.build("resnet8", path, flags=dict(shortcut="B", preact=False, width=None))
    random_model, random_meta = zoo.build("cifar_resnet8", flags=dict(shortcut="B", width=4,
                                                                      num_classes=5, in_channels=1))
    check_round_trip(source, model, random_model, torch.randn(2, 1, 32, 32))
    assert (meta["width"], meta["num_classes"], meta["in_channels"], meta["shortcut"]) == (4, 5, 1, "B")
    assert meta["source"] == "cifar" and meta["weights"] == str(path.absolute())
    assert meta["weights_sha256"] == sha256(path) and meta["random_init"] is False
    assert random_meta["random_init"] is True and random_meta["weights"] is None
    assert random_meta["weights_from"] == "random init"
    assert pathens.wrap(model).num_blocks == 3
    json.dumps(meta)  # results record it as JSON


def test_cifar_flags_and_imagenet_weights(tmp_path):
    msg = one_line(zoo.build, "resnet9")  # not 6n+2
    assert "depth must be 6n+2" in msg
    msg = one_line(zoo.build, "resnet18")  # an ImageNet depth: point to the zoos
    assert "torchvision.resnet18" in msg and "timm:resnet18" in msg
    path = save(tv.models.resnet18(weights=None, num_classes=3), tmp_path / "tv.pt")
    msg = one_line(zoo.build, "resnet20", path, error=CheckpointError)
    assert "missing keys" in msg and "fc.weight" in msg and "torchvision.resnetD" in msg


# ---- torchvision -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_torchvision_resnet_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    source = randomize(tv.models.resnet18(weights=None, num_classes=7))
    path = save(source, tmp_path / f"r18{suffix}")
    model, meta = zoo.build("torchvision.resnet18", path)
    check_round_trip(source, model, zoo.build("torchvision.resnet18", flags={"num_classes": 7})[0],
                     torch.randn(2, 3, 64, 64))
    assert meta["num_classes"] == 7 and meta["torchvision_name"] == "resnet18"
    assert meta["versions"]["torchvision"] == tv.__version__
    assert pathens.wrap(model).num_blocks == 8


def test_torchvision_resnext_from_a_state_dict():
    torch.manual_seed(0)
    source = randomize(tv.models.resnext50_32x4d(weights=None, num_classes=4))
    model, meta = zoo.build("tv.resnext50_32x4d", source.state_dict())
    assert meta["weights_from"] == "state dict" and meta["num_classes"] == 4
    assert torch.equal(logits(source, x := torch.randn(1, 3, 32, 32)), logits(model, x))


def test_torchvision_vit_image_size_and_classes_come_from_the_weights():
    torch.manual_seed(0)
    source = tv.models.vit_b_32(weights=None, image_size=64, num_classes=3).eval()
    model, meta = zoo.build("torchvision.vit_b_32", source.state_dict())
    assert (meta["image_size"], meta["num_classes"]) == (64, 3) and model.image_size == 64
    assert torch.equal(logits(source, x := torch.randn(2, 3, 64, 64)), logits(model, x))
    assert pathens.wrap(model).num_blocks == 24  # 12 encoder blocks, attention + MLP each


def test_torchvision_names_it_cannot_wrap():
    msg = one_line(zoo.build, "torchvision.densenet121")
    assert "densenet121" in msg and "resnext50_32x4d" in msg and "--model" in msg
    assert "did you mean torchvision.resnet50" in one_line(zoo.build, "torchvision.resnt50")
    msg = one_line(zoo.build, "torchvision.resnet18", flags={"width": 8})
    assert "width" in msg and "num_classes" in msg


# ---- timm ------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_timm_classes_and_channels_come_from_the_weights(tmp_path, suffix):
    torch.manual_seed(0)
    source = randomize(timm.create_model("resnet10t", pretrained=False, num_classes=7, in_chans=1))
    path = save(source, tmp_path / f"t{suffix}")
    model, meta = zoo.build("timm:resnet10t", path)
    x = torch.randn(2, 1, 64, 64)
    check_round_trip(source, model, zoo.build("timm:resnet10t", flags=dict(num_classes=7,
                                                                        in_channels=1))[0], x)
    assert (meta["num_classes"], meta["in_channels"], model.num_classes) == (7, 1, 7)
    assert meta["timm_name"] == "resnet10t" and meta["versions"]["timm"] == timm.__version__
    # the eval transform's settings, as timm resolves them for this model
    cfg = timm.data.resolve_data_config({}, model=model)
    assert meta["data_config"]["input_size"] == list(cfg["input_size"])
    assert meta["data_config"]["mean"] == list(cfg["mean"]) and meta["data_config"]["crop_pct"] == cfg["crop_pct"]
    assert meta["pretrained_cfg"]["interpolation"] == cfg["interpolation"]
    assert pathens.wrap(model, example_input=x).num_blocks == 4
    json.dumps(meta)


def test_timm_vit_head_and_tag(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False,
                               num_classes=4).eval()
    path = save(source, tmp_path / "vit.safetensors")
    model, meta = zoo.build("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", path)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(logits(source, x), logits(model, x))
    assert meta["num_classes"] == 4 and meta["pretrained_tag"] == "augreg_in21k_ft_in1k"
    assert pathens.wrap(model).num_blocks == 24


def test_a_timm_training_checkpoint_loads(tmp_path):
    """timm's train.py writes {"state_dict", "args": argparse.Namespace, ...}: the safe loader
    accepts the Namespace (attributes only) and nothing else new."""
    torch.manual_seed(0)
    source = randomize(timm.create_model("resnet10t", pretrained=False, num_classes=3))
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet10t", "version": 2, "state_dict": source.state_dict(),
                "args": argparse.Namespace(model="resnet10t", lr=0.1, mean=None)}, path)
    model, _ = zoo.build("timm:resnet10t", path)
    assert torch.equal(logits(source, x := torch.randn(1, 3, 64, 64)), logits(model, x))


def test_timm_bad_names_flags_and_weights(tmp_path):
    msg = one_line(zoo.build, "timm:resnet51")
    assert "no model 'resnet51'" in msg and "resnet50" in msg
    msg = one_line(zoo.build, "timm:resnet50.no_such_tag")
    assert "no_such_tag" in msg and "resnet50.a1_in1k" in msg
    assert "shortcut" in one_line(zoo.build, "timm:resnet10t", flags={"shortcut": "B"})
    path = save(timm.create_model("resnet10t", pretrained=False), tmp_path / "r10t.pt")
    msg = one_line(zoo.build, "timm:resnet18", path, error=CheckpointError)
    assert "timm:resnet18" in msg and "missing keys" in msg and "unexpected keys" in msg
    assert "r10t.pt" in msg


# ---- Hugging Face folders --------------------------------------------------------------------

def hf_resnet(num_labels=5, sizes=(8, 16, 16, 32)):
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=list(sizes), depths=[1, 1, 1, 1],
                                       layer_type="basic", num_labels=num_labels)
    return randomize(transformers.ResNetForImageClassification(config))


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_hf_resnet_folder_round_trip(tmp_path):
    source = hf_resnet()
    source.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_pct": 0.875, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
         "size": {"shortest_edge": 224}, "image_processor_type": "ConvNextImageProcessor"}))
    model, meta = zoo.build(f"hf:{tmp_path}")
    x = torch.randn(2, 3, 64, 64)
    # the random build: the same folder's config with other weights (a state dict)
    check_round_trip(source, model, zoo.build(f"hf:{tmp_path}", hf_resnet().apply(
        lambda m: randomize(m, 1) if isinstance(m, nn.BatchNorm2d) else None).state_dict())[0], x)
    assert meta["hf_class"] == "ResNetForImageClassification" and meta["num_classes"] == 5
    assert meta["weights"] == str((tmp_path / "model.safetensors").absolute())
    assert meta["weights_sha256"] == sha256(tmp_path / "model.safetensors")
    assert meta["preprocessor"]["crop_pct"] == 0.875 and meta["tokenizer"] is None
    assert "image_processor_type" not in meta["preprocessor"]
    assert pathens.wrap(model).num_blocks == 4
    json.dumps(meta)


def test_hf_pytorch_model_bin_and_shards(tmp_path):
    source = hf_resnet()
    state = source.state_dict()
    bin_dir, shard_dir = tmp_path / "bin", tmp_path / "shards"
    source.config.architectures = ["ResNetForImageClassification"]  # model.save_pretrained's
    for d in (bin_dir, shard_dir):
        d.mkdir()
        source.config.save_pretrained(d)
    torch.save(dict(state), bin_dir / "pytorch_model.bin")
    keys = list(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        safetensors_torch.save_file({k: state[k].contiguous() for k in part}, str(shard_dir / name))
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, part in halves.items() for k in part}}))
    x = torch.randn(1, 3, 32, 32)
    for d in (bin_dir, shard_dir):
        model, meta = zoo.build(f"hf:{d}")
        assert torch.equal(logits(source, x), logits(model, x))
    assert meta["weights"].endswith("model.safetensors.index.json")
    assert sorted(meta["weights_shards"]) == sorted(halves)


def test_hf_gpt2_tied_head_and_tokenizer(tmp_path):
    source = tiny_gpt2()
    source.save_pretrained(tmp_path)
    assert "lm_head.weight" not in safetensors_torch.load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    model, meta = zoo.build(f"hf:{tmp_path}")
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    check_round_trip(source, model, type(source)(source.config).eval(), ids)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
    assert meta["vocab_size"] == 50 and meta["num_classes"] is None
    assert meta["tokenizer"] == str(tmp_path.absolute())
    assert pathens.wrap(model).num_blocks == 4


def test_hf_gpt2_in_the_hub_layout(tmp_path):
    """The hub's gpt2 file: the base model's keys (no 'transformer.') and the old causal-mask
    buffers attn.bias, which GPT2LMHeadModel declares ignorable."""
    source = tiny_gpt2()
    source.config.architectures = ["GPT2LMHeadModel"]
    source.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in source.state_dict().items()
             if k.startswith("transformer.")}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    torch.save(state, tmp_path / "pytorch_model.bin")
    model, meta = zoo.build(f"hf:{tmp_path}")
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(source, ids), logits(model, ids))
    assert meta["weights_adapted"]["prefix_added"] == "transformer."
    assert sorted(meta["weights_adapted"]["ignored_unexpected"]) == ["h.0.attn.bias", "h.1.attn.bias"]


def write_config(folder: Path, **entries) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(entries))
    return folder


def test_hf_bad_folders(tmp_path):
    msg = one_line(zoo.build, f"hf:{tmp_path / 'absent'}")
    assert "no such folder" in msg and "nothing is downloaded" in msg
    (tmp_path / "file").write_text("x")
    assert "not a folder" in one_line(zoo.build, f"hf:{tmp_path / 'file'}")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in one_line(zoo.build, f"hf:{tmp_path / 'empty'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert "cannot be read as JSON" in one_line(zoo.build, f"hf:{tmp_path / 'broken'}")
    msg = one_line(zoo.build, f"hf:{write_config(tmp_path / 'alien', model_type='no_such_type')}")
    assert "no_such_type" in msg
    msg = one_line(zoo.build, f"hf:{write_config(tmp_path / 'noarch', model_type='resnet')}")
    assert "architectures" in msg
    folder = write_config(tmp_path / 'custom', model_type='resnet', architectures=['MyCustomNet'],
                          auto_map={'AutoModel': 'm.MyCustomNet'})
    msg = one_line(zoo.build, f"hf:{folder}")
    assert "MyCustomNet" in msg and "never runs" in msg and "--model" in msg
    # a folder's own code (auto_map) is never run, nor asked about
    remote = write_config(tmp_path / "remote", model_type="mything", architectures=["MyThing"],
                          auto_map={"AutoConfig": "code.MyConfig"})
    (remote / "code.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    msg = one_line(zoo.build, f"hf:{remote}")
    assert "never runs" in msg and not (tmp_path / "ran").exists()
    msg = one_line(zoo.build, f"hf:{tmp_path / 'empty'}", flags={"num_classes": 3})
    assert "config.json decides" in msg


def test_hf_architecture_pathens_cannot_wrap(tmp_path):
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                                       layer_type="basic")
    transformers.ResNetModel(config).save_pretrained(tmp_path)  # no head: nothing to classify
    msg = one_line(zoo.build, f"hf:{tmp_path}")
    assert "ResNetModel" in msg and "ResNetForImageClassification" in msg
    assert "register_block" in msg and "--model" in msg


def test_hf_weights_that_do_not_fit(tmp_path):
    source = hf_resnet()
    source.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    msg = one_line(zoo.build, f"hf:{tmp_path}", error=CheckpointError)
    assert "no weights" in msg and "model.safetensors" in msg
    state = dict(source.state_dict())
    del state["classifier.1.bias"]
    state["extra.weight"] = torch.zeros(1)
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    msg = one_line(zoo.build, f"hf:{tmp_path}", error=CheckpointError)
    assert "missing keys 1 (classifier.1.bias)" in msg and "unexpected keys 1 (extra.weight)" in msg
    wider = tmp_path / "wider.safetensors"
    save(hf_resnet(sizes=(8, 16, 16, 64)), wider)
    msg = one_line(zoo.build, f"hf:{tmp_path}", wider, error=CheckpointError)
    assert "shape mismatches" in msg and "classifier.1.weight: checkpoint (5, 64) vs model (5, 32)" in msg


# ---- weight files ----------------------------------------------------------------------------

def test_safetensors_files_are_cleaned_like_torch_files(tmp_path):
    state = {"module.a.weight": torch.ones(2), "module.b": torch.zeros(3)}
    safetensors_torch.save_file(state, str(tmp_path / "w.safetensors"))
    assert list(load_state_dict(tmp_path / "w.safetensors")) == ["a.weight", "b"]
    (tmp_path / "w.pt").write_bytes((tmp_path / "w.safetensors").read_bytes())  # misnamed
    assert torch.equal(load_state_dict(tmp_path / "w.pt")["b"], torch.zeros(3))


def test_bad_weight_files(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": trunc")
    msg = one_line(load_state_dict, tmp_path / "bad.safetensors", error=CheckpointError)
    assert "not a valid safetensors file" in msg and "bad.safetensors" in msg
    (tmp_path / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n"
                                              "oid sha256:abc\nsize 123\n")
    assert "git lfs pull" in one_line(zoo.build, "timm:resnet10t", tmp_path / "lfs.safetensors",
                                      error=CheckpointError)
    assert "does not exist" in one_line(zoo.build, "resnet8", tmp_path / "nope.pt", error=CheckpointError)
    assert "a checkpoint path or a state dict" in one_line(zoo.build, "resnet8", 3, error=CheckpointError)


def test_bad_names_and_flags():
    assert "unknown architecture 'vgg16'" in one_line(zoo.build, "vgg16")
    assert "timm:NAME" in one_line(zoo.build, "")
    assert "unknown architecture flag 'depth'" in one_line(zoo.build, "resnet8", flags={"depth": 8})


# ---- optional libraries ----------------------------------------------------------------------

def test_missing_libraries_name_their_extra(tmp_path, monkeypatch):
    """import of a library set to None in sys.modules raises ImportError, as if not installed."""
    (tmp_path / "w.safetensors").write_bytes(b"x")
    write_config(tmp_path / "hf", model_type="resnet", architectures=["ResNetForImageClassification"])
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "timm", None)
        assert "pip install 'pathens[timm]'" in one_line(zoo.build, "timm:resnet50")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "transformers", None)
        assert "pip install 'pathens[hf]'" in one_line(zoo.build, f"hf:{tmp_path / 'hf'}")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "safetensors", None)
        m.setitem(sys.modules, "safetensors.torch", None)
        msg = one_line(load_state_dict, tmp_path / "w.safetensors", error=CheckpointError)
        assert "pip install safetensors" in msg and "pathens[hf]" in msg
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torchvision", None)
        assert "pip install torchvision" in one_line(zoo.build, "torchvision.resnet18")


def test_the_extras_are_declared():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in v} for k, v in extras.items()}
    assert "timm" in names["timm"]
    assert {"transformers", "safetensors"} <= names["hf"]
    assert {"timm", "transformers", "safetensors", "torchvision", "pytest"} <= names["dev"]


# ---- the user's own model code ---------------------------------------------------------------

BLOCKS = '''
import torch
import torch.nn.functional as F
from torch import nn


class Gated(nn.Module):
    """x + gate * conv2(relu(conv1(x))): a block class pathens has never seen."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return x + self.gate * self.conv2(F.relu(self.conv1(x)))
'''

NET = '''
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from blocks import Gated          # a neighbour: the file's folder is on sys.path
{register}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(Gated(4), Gated(4), Gated(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Net()


def broken():
    return helper_that_fails()


def helper_that_fails():
    raise KeyError("no such layer")


def not_a_model():
    return 3


def pair():
    return Net(), "extra"
'''

REGISTER = '''
@pathens.register_block(Gated)
def gated(b):
    return pathens.BlockParts(branch=lambda x: b.conv2(F.relu(b.conv1(x))), scale=b.gate)
'''


def user_files(folder: Path, register: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blocks.py").write_text(BLOCKS)
    (folder / "net.py").write_text(NET.format(register=REGISTER if register else ""))
    return folder / "net.py"


def test_a_user_model_with_its_own_block_class(tmp_path):
    net = user_files(tmp_path / "a")
    before = list(sys.path)
    model, meta = user_model.load(f"{net}:build")
    assert sys.path == before  # the folder was on it only during the import and the call
    x = torch.randn(2, 3, 8, 8)
    view = pathens.wrap(model, example_input=x)
    assert view.num_blocks == 3 and [b.name for b in view.blocks] == ["blocks.0", "blocks.1", "blocks.2"]
    assert pathens.adapters.adapter_class(model.blocks[0]) is type(model.blocks[0])  # its own adapter
    assert meta["source"] == "user" and meta["function"] == "build" and meta["class"] == "Net"
    assert meta["file"] == str(net.resolve()) and meta["file_sha256"] == sha256(net)
    assert meta["weights"] is None and meta["weights_from"] == "function"
    json.dumps(meta)

    # weights given: loaded strictly into the function's (freshly seeded) model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    path = save(model, tmp_path / "net.safetensors")
    loaded, meta = user_model.load(f"{net}:build", weights=path)
    fresh, _ = user_model.load(f"{net}:build")
    check_round_trip(model, loaded, fresh, x)
    assert meta["weights_sha256"] == sha256(path) and meta["weights_from"] == "file"
    assert "Net" in one_line(user_model.load, f"{net}:build", weights=save(
        tv.models.resnet18(weights=None), tmp_path / "other.pt"), error=CheckpointError)


def test_the_file_registers_the_block_or_pathens_cannot_wrap_it(tmp_path):
    model, _ = user_model.load(f"{user_files(tmp_path / 'b', register=False)}:build")
    with pytest.raises(pathens.WrapError):
        pathens.wrap(model, example_input=torch.randn(2, 3, 8, 8))


def test_same_named_files_do_not_collide(tmp_path):
    a, _ = user_model.load(f"{user_files(tmp_path / 'x')}:build")
    b, meta = user_model.load(f"{user_files(tmp_path / 'y')}:build")
    assert type(a).__module__ != type(b).__module__ == meta["module"]
    # their neighbours too: each folder's blocks.py is imported from that folder
    assert type(a.blocks[0]) is not type(b.blocks[0])
    assert Path(type(b.blocks[0]).forward.__code__.co_filename).parent == tmp_path / "y"


def test_a_module_spec(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model, meta = user_model.load("mypkg.models:build")
    assert isinstance(model, nn.Linear) and meta["file"] is None and meta["module"] == "mypkg.models"
    assert "no module named 'nopkg'" in one_line(user_model.load, "nopkg.models:build")


def test_bad_user_models(tmp_path):
    net = user_files(tmp_path)
    assert "does not exist" in one_line(user_model.load, f"{tmp_path / 'absent.py'}:build")
    assert "no ':FUNCTION'" in one_line(user_model.load, str(net))
    assert "not a Python name" in one_line(user_model.load, f"{net}:1x")
    (tmp_path / "model.txt").write_text("x")
    assert "not a Python file" in one_line(user_model.load, f"{tmp_path / 'model.txt'}:build")

    msg = one_line(user_model.load, f"{net}:nothing")
    assert "defines no 'nothing'" in msg and "build" in msg and "Net" in msg
    msg = one_line(user_model.load, f"{net}:broken")
    assert "broken() raised KeyError" in msg and "no such layer" in msg and "net.py line" in msg
    assert "an int, not a torch.nn.Module" in one_line(user_model.load, f"{net}:not_a_model")
    assert "return the model alone" in one_line(user_model.load, f"{net}:pair")

    raising = tmp_path / "raising.py"
    raising.write_text("import torch\n\nraise RuntimeError('cannot build today\\nsecond line')\n")
    msg = one_line(user_model.load, f"{raising}:build")
    assert "raising.py" in msg and "RuntimeError: cannot build today" in msg
    assert "second line" not in msg and "line 3" in msg
    bad_syntax = tmp_path / "syntax.py"
    bad_syntax.write_text("def build(:\n    pass\n")
    msg = one_line(user_model.load, f"{bad_syntax}:build")
    assert "SyntaxError" in msg and "line 1" in msg
    missing_import = tmp_path / "imports.py"
    missing_import.write_text("import no_such_library_xyz\n")
    assert "ModuleNotFoundError" in one_line(user_model.load, f"{missing_import}:build")
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(3)\n")
    assert "SystemExit" in one_line(user_model.load, f"{exits}:build")
