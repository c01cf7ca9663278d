import os
from collections import OrderedDict

import pytest
import torch

from pathens.models.checkpoints import _clean, load_state_dict, load_weights
from pathens.errors import CheckpointError
from pathens.models.cifar import cifar_resnet

try:
    from realdata import AKAMASTER_ERROR, akamaster_checkpoint, load_cifar_npz, requires_realdata
except ImportError:  # tests/ imported as a package
    from tests.realdata import AKAMASTER_ERROR, akamaster_checkpoint, load_cifar_npz, requires_realdata


class NotATensor:
    """A custom class: torch.load(weights_only=True) must refuse to build it."""

    def __init__(self):
        self.value = 3


def one_line_error(path_or_sd, fn=load_state_dict, **kwargs):
    with pytest.raises(CheckpointError) as info:
        fn(path_or_sd, **kwargs) if fn is load_state_dict else fn(kwargs.pop("model"), path_or_sd, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


def outputs_equal(a, b):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --- the real checkpoints ------------------------------------------------------------------

@pytest.fixture(scope="module")
def test_images():
    return load_cifar_npz("cifar10_test_first1000")


@requires_realdata
@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_akamaster_checkpoints_reach_their_reported_error(depth, test_images):
    x, y = test_images
    assert x.shape == (1000, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (1000,)
    model = cifar_resnet(depth)
    assert load_weights(model, akamaster_checkpoint(depth)) is model
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 250]).argmax(1) for i in range(0, 1000, 250)])
    error = 100 * (pred != y).double().mean().item()
    # reported on the full 10k test set; standard error on 1000 images is about 0.85 points
    assert abs(error - AKAMASTER_ERROR[depth]) <= 2.0, f"ResNet-{depth}: {error:.1f}% error"


@requires_realdata
def test_akamaster_state_dict_is_unwrapped_and_stripped():
    sd = load_state_dict(str(akamaster_checkpoint(20)))  # str paths work too
    assert isinstance(sd, OrderedDict)
    assert "conv1.weight" in sd and "linear.bias" in sd and "best_prec1" not in sd
    assert not any(k.startswith("module.") for k in sd)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in sd.values())


@requires_realdata
def test_loading_resnet20_into_resnet32_lists_missing_keys():
    msg = one_line_error(akamaster_checkpoint(20), load_weights, model=cifar_resnet(32))
    # 6 more blocks x (conv1, bn1 x 4, conv2, bn2 x 4); num_batches_tracked not counted
    assert "missing keys 60 (layer1.3.conv1.weight," in msg
    assert "unexpected keys 0" in msg and "shape mismatches 0" in msg


@requires_realdata
@pytest.mark.parametrize("strict", [True, False])
def test_shape_mismatch_is_reported(strict):
    msg = one_line_error(akamaster_checkpoint(20), load_weights, model=cifar_resnet(20, width=32), strict=strict)
    assert "conv1.weight: checkpoint (16, 3, 3, 3) vs model (32, 3, 3, 3)" in msg
    assert "missing keys 0" in msg and "unexpected keys 0" in msg
    n_shaped = sum(1 for k in cifar_resnet(20).state_dict()
                   if not k.endswith("num_batches_tracked")) - 1  # linear.bias fits
    assert f"shape mismatches {n_shaped} (" in msg


# --- file-level errors ---------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    msg = one_line_error(path)
    assert "does not exist" in msg and "nope.pt" in msg


def test_directory(tmp_path):
    msg = one_line_error(tmp_path)
    assert "directory" in msg


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_of_arbitrary_objects_is_refused_as_unsafe(tmp_path, legacy):
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": NotATensor()}, path,
               _use_new_zipfile_serialization=not legacy)
    msg = one_line_error(path)
    assert "unsafe" in msg and "NotATensor" in msg
    assert "never falls back" in msg and "state_dict()" in msg
    msg = one_line_error(path, load_weights, model=cifar_resnet(20))
    assert "unsafe" in msg


@pytest.mark.parametrize("content", [b"hello, this is not a checkpoint\n", b"", bytes(range(256)) * 4],
                         ids=["text", "empty", "binary"])
def test_garbage_file_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    msg = one_line_error(path)
    assert "garbage.pt" in msg and "torch.save" in msg
    assert "not a PyTorch checkpoint" in msg or "could not be read" in msg


def test_a_list_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2), torch.ones(3)], path)
    msg = one_line_error(path)
    assert "a list" in msg and "state dict" in msg


def test_non_tensor_values_are_named(tmp_path):
    path = tmp_path / "mixed.pt"
    torch.save({"conv1.weight": torch.zeros(2), "epoch": 7}, path)
    msg = one_line_error(path)
    assert "'epoch'" in msg and "an int" in msg


def test_a_wrapper_around_a_list_is_reported(tmp_path):
    path = tmp_path / "wrapped_list.pt"
    torch.save({"state_dict": [torch.zeros(2)]}, path)  # "state_dict" is not a mapping: no unwrapping
    msg = one_line_error(path)
    assert "'state_dict'" in msg and "a list" in msg


def test_empty_state_dict(tmp_path):
    path = tmp_path / "empty_dict.pt"
    torch.save({}, path)
    assert "empty" in one_line_error(path)


# --- unwrapping, stripping, loading ---------------------------------------------------------

@pytest.mark.parametrize("wrap", ["plain", "module", "model", "state_dict", "model+module"])
def test_wrappers_and_prefixes_are_removed(tmp_path, wrap):
    torch.manual_seed(0)
    source = cifar_resnet(20, norm="skipinit", alpha_init=0.3)
    sd = source.state_dict()
    if "module" in wrap:
        sd = OrderedDict(("module." + k, v) for k, v in sd.items())
    if wrap.startswith("model"):
        sd = {"model": sd, "epoch": 3}
    elif wrap == "state_dict":
        sd = {"state_dict": sd, "best_prec1": 91.0}
    path = tmp_path / "ckpt.pt"
    torch.save(sd, path)
    loaded = load_state_dict(path)
    assert list(loaded) == list(source.state_dict())
    torch.manual_seed(1)
    target = cifar_resnet(20, norm="skipinit")
    assert not outputs_equal(source, target)
    for arg in (path, str(path), loaded, sd):
        target = cifar_resnet(20, norm="skipinit")
        load_weights(target, arg)
        assert outputs_equal(source, target)


def test_only_a_leading_module_prefix_is_stripped():
    sd = _clean({"module.a.module.b": torch.zeros(1), "c": torch.ones(1)}, "sd")
    assert list(sd) == ["a.module.b", "c"]


def test_duplicate_keys_after_stripping_are_reported():
    msg = one_line_error({"module.linear.bias": torch.zeros(10), "linear.bias": torch.zeros(10)},
                         load_weights, model=cifar_resnet(20))
    assert "'linear.bias'" in msg


def test_missing_num_batches_tracked_is_tolerated_and_other_missing_keys_are_not():
    source = cifar_resnet(20)
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_weights(cifar_resnet(20), sd)  # strict, fine
    del sd["layer2.1.bn1.running_var"]
    msg = one_line_error(sd, load_weights, model=cifar_resnet(20))
    assert "missing keys 1 (layer2.1.bn1.running_var)" in msg
    load_weights(cifar_resnet(20), sd, strict=False)


def test_unexpected_keys_are_listed_and_allowed_when_not_strict():
    sd = dict(cifar_resnet(20).state_dict())
    sd["fc.weight"] = torch.zeros(10, 64)
    msg = one_line_error(sd, load_weights, model=cifar_resnet(20))
    assert "unexpected keys 1 (fc.weight)" in msg and "missing keys 0" in msg
    load_weights(cifar_resnet(20), sd, strict=False)


def test_many_missing_keys_are_elided_with_a_count():
    sd = {k: v for k, v in cifar_resnet(20).state_dict().items() if k.startswith("linear")}
    msg = one_line_error(sd, load_weights, model=cifar_resnet(20))
    n = sum(1 for k in cifar_resnet(20).state_dict() if not k.endswith("num_batches_tracked")) - 2
    assert f"missing keys {n} (conv1.weight, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, ...)" in msg


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.float64])
def test_tensors_are_cast_to_the_model_dtype(model_dtype):
    torch.manual_seed(0)
    source = cifar_resnet(20).double() if model_dtype == torch.float32 else cifar_resnet(20)
    target = cifar_resnet(20).to(model_dtype)
    load_weights(target, source.state_dict())
    assert all(p.dtype == model_dtype for p in target.parameters())
    assert target.layer1[0].bn1.num_batches_tracked.dtype == torch.long
    assert torch.allclose(target.conv1.weight.double(), source.conv1.weight.double(), atol=1e-7)


def test_checkpoint_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_state_dict(tmp_path / "missing.pt")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.pt"
    torch.save(cifar_resnet(20).state_dict(), path)
    path.chmod(0)
    try:
        assert "permission" in one_line_error(path).lower()
    finally:
        path.chmod(0o600)


# --- checkpoints with metadata: writing never loses a file, loading names what is missing ----

def _tiny_saved(path):
    from pathens.models.checkpoints import save_checkpoint
    model = cifar_resnet(8, width=4, in_channels=1)
    return save_checkpoint(path, model, dataset="digits", seed=0, epochs=0, accuracy=None), model


def test_save_checkpoint_into_a_missing_folder_is_one_line(tmp_path):
    from pathens.models.checkpoints import save_checkpoint
    with pytest.raises(CheckpointError, match="folder .*absent does not exist") as info:
        save_checkpoint(tmp_path / "absent" / "m.pt", cifar_resnet(8, width=4), dataset="digits",
                        seed=0, epochs=0, accuracy=None)
    assert "\n" not in str(info.value) and not (tmp_path / "absent").exists()


def test_a_failing_torch_save_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    from pathens.models.checkpoints import save_checkpoint
    path, _ = _tiny_saved(tmp_path / "m.pt")
    before = path.read_bytes()

    def broken(obj, f, *a, **k):
        raise RuntimeError("Parent directory vanished.\nsecond line")
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*Parent directory vanished") as info:
        save_checkpoint(path, cifar_resnet(8, width=4, in_channels=1), dataset="digits", seed=0,
                        epochs=1, accuracy=0.5)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_metadata_records_the_installed_version(tmp_path):
    from importlib.metadata import version
    path, _ = _tiny_saved(tmp_path / "m.pt")
    meta = torch.load(path, weights_only=True)["pathens"]
    assert meta["pathens_version"] == version("pathens")


def test_missing_architecture_arguments_are_named(tmp_path, capsys):
    from pathens.models.checkpoints import load
    from pathens.cli import main
    path, model = _tiny_saved(tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    for name in ("skip", "norm"):  # skip=False keeps the keys: a default would load silently
        del raw["pathens"]["arch"][name]
    torch.save(raw, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="lacks the arguments 'norm', 'skip'"):
        load(path)
    assert main(["analyze", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'norm', 'skip'" in err and "--arch" in err
    assert path.read_bytes() == before and not (tmp_path / "o").exists()
    del raw["pathens"]["arch"]["alpha_init"]  # only SkipInit's initial value: not needed
    raw["pathens"]["arch"].update(norm="bn", skip=True)
    torch.save(raw, path)
    rebuilt, _ = load(path)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))
