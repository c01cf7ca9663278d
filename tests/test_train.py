"""pathens.train and checkpoints with metadata: a small network learns digits, a seed gives the
same weights bit for bit, a saved checkpoint rebuilds the same model from its metadata alone."""
import pytest
import torch

from pathens.models.checkpoints import load, save_checkpoint
from pathens.data.datasets import load_dataset
from pathens.errors import CheckpointError, PathensError
from pathens.models.cifar import cifar_resnet
from pathens.models.train import TrainResult, param_groups, random_crop, random_flip, train

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _tiny(norm="bn", seed=0):
    torch.manual_seed(seed)
    return cifar_resnet(8, norm=norm, width=4, in_channels=1)


def test_small_network_learns_digits(digits):
    # measured: 96% test accuracy after 6 epochs (bn), about 3 s on one core
    train_set, test_set = digits
    model = _tiny()
    lines = []
    result = train(model, train_set, epochs=6, batch_size=32, augment="shift", eval_data=test_set,
                   progress=False, log=lines.append)
    assert isinstance(result, TrainResult) and result.accuracy > 0.85
    assert len(result.history) == 6 == len(lines) and "epoch 6/6" in lines[-1]
    assert result.history[-1]["lr"] == 0  # the cosine ends at zero
    assert result.history[-1]["eval_accuracy"] == result.accuracy
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]
    assert not model.training
    assert '"accuracy"' in result.to_json()


def test_same_seed_same_weights_bit_for_bit(digits):
    train_set = tuple(t[:200] for t in digits[0])
    runs = []
    for seed in (0, 0, 1):
        model = _tiny("skipinit")
        train(model, train_set, epochs=2, batch_size=32, augment="shift", seed=seed, progress=False)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_warmup_and_cosine_schedule(digits):
    train_set = tuple(t[:64] for t in digits[0])  # 2 steps per epoch at batch 32
    result = train(_tiny(), train_set, epochs=4, lr=0.2, batch_size=32, warmup_epochs=1, progress=False)
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] == pytest.approx(0.2)  # the end of the warm-up reaches the peak
    assert lrs[1] == pytest.approx(0.1 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 6)).item()))
    assert lrs[-1] == 0


def test_clip_grad_norm_bounds_each_step(digits):
    train_set = tuple(t[:64] for t in digits[0])  # 2 steps at batch 32
    model = _tiny("skipinit")
    before = torch.nn.utils.parameters_to_vector(model.parameters()).clone()
    train(model, train_set, epochs=1, lr=0.1, momentum=0.9, weight_decay=0, batch_size=32,
          clip_grad_norm=1e-6, progress=False)
    moved = torch.nn.utils.parameters_to_vector(model.parameters()) - before
    # step 1 moves lr * g1, step 2 lr * (0.9 g1 + g2), every |g| <= 1e-6
    assert 0 < moved.norm() <= 0.1 * 2.9e-6 * 1.0001


def test_weight_decay_skips_alpha_biases_and_batchnorm():
    for norm in ("bn", "skipinit"):
        model = _tiny(norm)
        decay, no_decay = param_groups(model, 5e-4)
        assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0
        names = {id(p): n for n, p in model.named_parameters()}
        assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
        skipped = {names[id(p)] for p in no_decay["params"]}
        if norm == "skipinit":
            assert "layer1.0.alpha" in skipped and "conv1.bias" in skipped
        else:
            assert "bn1.weight" in skipped and "layer1.0.bn2.bias" in skipped


def test_augmentations_are_shifts_and_flips():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    g = torch.Generator().manual_seed(3)
    out = random_crop(x, 2, g)
    g = torch.Generator().manual_seed(3)
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(2):
        assert torch.equal(out[n], padded[n, :, oy[n]:oy[n] + 5, ox[n]:ox[n] + 5])
    assert torch.equal(random_crop(x, 0, g), x)
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    for n in range(2):
        assert torch.equal(flipped[n], x[n]) or torch.equal(flipped[n], x[n].flip(2))


def test_bad_arguments_and_divergence(digits):
    train_set = tuple(t[:64] for t in digits[0])
    with pytest.raises(PathensError, match="epochs"):
        train(_tiny(), train_set, epochs=0)
    with pytest.raises(PathensError, match="unknown augmentation 'rotate'"):
        train(_tiny(), train_set, epochs=1, augment="rotate")
    with pytest.raises(PathensError, match="pair"):
        train(_tiny(), train_set[0], epochs=1)
    with pytest.raises(PathensError, match="unknown device 'gpu0'"):
        train(_tiny(), train_set, epochs=1, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(PathensError, match="'cuda' is not available"):
            train(_tiny(), train_set, epochs=1, device="cuda")
    with pytest.raises(PathensError, match="diverged"):
        torch.manual_seed(0)
        model = cifar_resnet(8, norm="none", width=4, in_channels=1)
        train(model, train_set, epochs=3, lr=1e6, batch_size=32, progress=False)


# --- checkpoints with metadata ------------------------------------------------------------

@pytest.mark.parametrize("norm", ["bn", "skipinit"])
def test_checkpoint_round_trip_rebuilds_the_model(tmp_path, digits, norm):
    train_set, test_set = (tuple(t[:64] for t in d) for d in digits)
    model = _tiny(norm)
    result = train(model, train_set, epochs=1, batch_size=32, eval_data=test_set, progress=False)
    path = save_checkpoint(tmp_path / "m.pt", model, dataset="digits", seed=0, epochs=1,
                           accuracy=result.accuracy, extra={"note": "test", "lrs": [0.1, 0.0]})
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file is gone
    rebuilt, meta = load(path)
    assert meta["arch"] == model.config and meta["dataset"] == "digits" and meta["normalize"] == "digits"
    assert (meta["seed"], meta["epochs"], meta["accuracy"]) == (0, 1, result.accuracy)
    assert meta["pathens_version"] and meta["torch_version"] == torch.__version__
    assert meta["extra"] == {"note": "test", "lrs": [0.1, 0.0]}
    assert not rebuilt.training
    with torch.no_grad():
        assert torch.equal(rebuilt(test_set[0]), model.eval()(test_set[0]))
    raw = torch.load(path, weights_only=True)  # the safe loader reads it as is
    assert set(raw) == {"state_dict", "pathens"}
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in model.state_dict().items())


def test_checkpoint_without_metadata_says_arch_is_needed(tmp_path):
    model = _tiny()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no pathens metadata.*'arch' is missing.*--arch") as err:
        load(tmp_path / "plain.pt")
    assert "\n" not in str(err.value)
    save_checkpoint(tmp_path / "m.pt", model, dataset="digits", seed=0, epochs=0, accuracy=None)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    del raw["pathens"]["arch"]["depth"]
    torch.save(raw, tmp_path / "nodepth.pt")
    with pytest.raises(CheckpointError, match="lacks the argument 'depth'.*--arch"):
        load(tmp_path / "nodepth.pt")
    raw["pathens"]["arch"].update(depth=8, colour="blue")
    torch.save(raw, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="cannot be rebuilt.*colour"):
        load(tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "absent.pt")


def test_save_checkpoint_refuses_what_it_cannot_store(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"previous run")
    with pytest.raises(CheckpointError, match=r"metadata\['extra'\]\['f'\] is a builtin_function"):
        save_checkpoint(path, _tiny(), dataset="digits", seed=0, epochs=1, accuracy=0.5, extra={"f": print})
    assert path.read_bytes() == b"previous run"  # nothing overwritten
    with pytest.raises(CheckpointError, match="needs a pathens model"):
        save_checkpoint(path, torch.nn.Linear(2, 2), dataset="digits", seed=0, epochs=1, accuracy=0.5)
