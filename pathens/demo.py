"""The demo: effective depth of BatchNorm vs SkipInit ResNets of depths 56 and 110.

Four CIFAR ResNets (width 8) trained on scikit-learn's 8x8 digits, which ship with the
package's dependencies: BatchNorm and SkipInit (De & Smith 2020: no normalisation, a scalar
alpha initialised to 0 at the end of every branch), 27 and 54 residual blocks. Their
checkpoints are bundled in pathens/bundled/ (written by experiments/train_demo_checkpoints.py
with the RECIPE below); `retrain=True` trains them afresh. Each is analysed in full on the
digits test split and the four are compared in one report.
"""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from . import checkpoints, report
from .analysis import analyze
from .data import dataset_info, load_dataset
from .errors import PathensError
from .models import cifar_resnet
from .train import train
from .view import wrap

# name -> (cifar_resnet arguments, train arguments). One recipe for all four: at depth 110 a
# warm-up and gradient clipping keep both BN and SkipInit (no normalisation) from diverging.
_TRAIN = dict(epochs=10, batch_size=64, lr=0.1, warmup_epochs=2, clip_grad_norm=1.0)
RECIPE = {
    "BN ResNet-56": (dict(depth=56, norm="bn"), _TRAIN),
    "SkipInit ResNet-56": (dict(depth=56, norm="skipinit"), _TRAIN),
    "BN ResNet-110": (dict(depth=110, norm="bn"), _TRAIN),
    "SkipInit ResNet-110": (dict(depth=110, norm="skipinit"), _TRAIN),
}
WIDTH, DATASET, SEED = 8, "digits", 0


def checkpoint_name(name: str) -> str:
    return name.lower().replace(" ", "_").replace("-", "") + ".pt"


def bundled_dir() -> Path:
    return Path(str(resources.files("pathens") / "bundled"))


def train_recipe(name: str, folder: Path, *, seed: int = SEED, device="cpu", progress=True,
                 log=print, command: str = "pathens demo --retrain") -> Path:
    """Train one network of the RECIPE on digits and save it into folder, with metadata that
    includes the recipe and the command that trained it."""
    arch, kw = RECIPE[name]
    info = dataset_info(DATASET)
    model = cifar_resnet(**arch, width=WIDTH, in_channels=info.in_channels,
                         num_classes=info.num_classes)
    result = train(model, load_dataset(DATASET, split="train"), augment=info.augment, seed=seed,
                   device=device, eval_data=load_dataset(DATASET, split="test"),
                   progress=progress, **kw)
    path = Path(folder) / checkpoint_name(name)
    checkpoints.save_checkpoint(path, model, dataset=DATASET, seed=seed, epochs=kw["epochs"],
                                accuracy=result.accuracy,
                                extra=dict(recipe=name, train=kw, seconds=round(result.seconds, 1),
                                           command=command))
    log(f"[{name}] trained {kw['epochs']} epochs in {result.seconds:.0f} s: test accuracy "
        f"{result.accuracy:.2%}")
    return path


def run_demo(out: Path, *, retrain: bool = False, quick: bool = False, seed: int = SEED,
             device="cpu", progress: bool = True, log=print, command: str = "pathens demo"):
    """Analyse the four networks and write the comparison report into `out`."""
    start = time.perf_counter()
    folder = bundled_dir()
    if retrain:
        folder = Path(out) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        for name in RECIPE:
            train_recipe(name, folder, seed=seed, device=device, progress=progress, log=log)
    x, y = load_dataset(DATASET, split="test")
    analyses = []
    for name in RECIPE:
        path = folder / checkpoint_name(name)
        if not path.is_file():
            raise PathensError(f"the bundled checkpoint {path} is missing (a broken install?): "
                               f"run `pathens demo --retrain` to train it here")
        model, meta = checkpoints.load(path, device=device)
        view = wrap(model)
        analyses.append(analyze(
            view, (x.to(device), y.to(device)), name=name,
            model_info=dict(arch=meta["arch"], accuracy=meta["accuracy"], checkpoint=path.name),
            data_info=dict(dataset=DATASET, split="test", examples=len(y)),
            samples_per_length=5 if quick else 10, trials=2 if quick else 5, seed=seed,
            progress=progress, log=log))
    path = report.write(out, analyses, title="pathens demo: BatchNorm vs SkipInit on digits",
                        command=command, extra=dict(seconds=round(time.perf_counter() - start, 1),
                                                    checkpoints=str(folder)))
    log(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    return analyses
