"""The demo: effective depth of BatchNorm vs SkipInit ResNets of depths 56 and 110.

Four CIFAR ResNets (width 8) trained on scikit-learn's 8x8 digits, which ship with the
package's dependencies: BatchNorm and SkipInit (De & Smith 2020: no normalisation, a scalar
alpha initialised to 0 at the end of every branch), 27 and 54 residual blocks. Their
checkpoints live in the repository's data/bundled/ (written by
experiments/train_demo_checkpoints.py with the RECIPE below; data/README.md gives each file's
provenance) and are installed as pathens/bundled/; `retrain=True` trains them afresh. Each is
analysed in full on the digits test split and the four are compared in one report.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .models import checkpoints
from . import report
from .analysis import analyze
from .data.datasets import dataset_info, load_dataset
from .errors import PathensError
from .models.cifar import cifar_resnet
from .models.train import train
from .view.residual_view import wrap
from .zoo.record import file_sha256

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


MANIFEST = "MANIFEST.json"  # beside the checkpoints: each file's size, sha256 and provenance
_HERE = Path(__file__).resolve().parent


def bundled_dir() -> Path:
    """The folder holding the bundled checkpoints and their MANIFEST.json.

    An installed pathens (pip install .) has them in pathens/bundled/, where the build maps
    data/bundled/ (pyproject.toml); a source checkout (pip install -e ., or PYTHONPATH) reads
    data/bundled/ beside the package directly. The package's own folder comes first, so an
    installed copy never reads some other checkout's data.
    """
    candidates = (_HERE / "bundled", _HERE.parent / "data" / "bundled")
    for folder in candidates:
        if (folder / MANIFEST).is_file():
            return folder
    raise PathensError(f"the bundled demo checkpoints are missing (no {MANIFEST} in "
                       f"{' or '.join(map(str, candidates))}; a broken install?): reinstall "
                       f"pathens, or run `pathens demo --retrain` to train them here")


def read_manifest(folder: Path | None = None) -> dict:
    """The manifest of the bundled files: {"files": [{"name", "bytes", "sha256", "what",
    "command", ...}, ...]}."""
    return json.loads(((folder or bundled_dir()) / MANIFEST).read_text())


def check_bundled(folder: Path | None = None) -> Path:
    """Check every file the manifest lists against its size and sha256 (a few milliseconds
    for the 5.6 MB); returns the folder, or raises a PathensError naming the first file that
    is missing or differs. The demo checks before loading, so a truncated or stale install is
    reported as such rather than as a failure to unpickle."""
    folder = folder or bundled_dir()
    entries = read_manifest(folder)["files"]
    unlisted = sorted({checkpoint_name(n) for n in RECIPE} - {e["name"] for e in entries})
    if unlisted:
        raise PathensError(f"{folder / MANIFEST} does not list {', '.join(unlisted)}: the demo "
                           f"needs all of {', '.join(map(checkpoint_name, RECIPE))}")
    for entry in entries:
        path = folder / entry["name"]
        if not path.is_file():
            raise PathensError(f"the bundled checkpoint {path} is missing (a broken install?): "
                               f"reinstall pathens, or run `pathens demo --retrain`")
        size, digest = path.stat().st_size, file_sha256(path)
        if (size, digest) != (entry["bytes"], entry["sha256"]):
            raise PathensError(f"the bundled checkpoint {path} ({size} bytes, sha256 "
                               f"{digest[:12]}...) is not the one {MANIFEST} lists "
                               f"({entry['bytes']} bytes, {entry['sha256'][:12]}...): reinstall "
                               f"pathens, or run `pathens demo --retrain`")
    return folder


def write_manifest(folder: Path) -> Path:
    """(Re)write folder/MANIFEST.json from the checkpoints there: per file its size, sha256,
    what it is and the command that trained it, both read from the checkpoint's own metadata
    (after experiments/train_demo_checkpoints.py; data/README.md then needs the same rows).
    Checkpoints of the RECIPE absent from the folder are left out (check_bundled refuses such
    a manifest)."""
    folder = Path(folder)
    files = []
    for name in RECIPE:
        path = folder / checkpoint_name(name)
        if not path.is_file():
            continue
        _, meta = checkpoints.load(path)
        arch = meta["arch"]
        files.append(dict(
            name=path.name, bytes=path.stat().st_size, sha256=file_sha256(path),
            what=(f"{name}: CIFAR ResNet-{arch['depth']} ({(arch['depth'] - 2) // 2} blocks, "
                  f"width {arch['width']}, norm {arch['norm']}) trained on {meta['dataset']}, "
                  f"test accuracy {meta['accuracy']:.2%}"),
            recipe=meta["extra"]["recipe"], command=meta["extra"]["command"],
            seed=meta["seed"], train=meta["extra"]["train"],
            train_seconds=meta["extra"].get("seconds"),
            torch_version=meta["torch_version"], pathens_version=meta["pathens_version"]))
    path = folder / MANIFEST
    path.write_text(json.dumps(dict(
        about="The checkpoints `pathens demo` analyses (data/README.md). Checked by "
              "tests/test_bundled_data.py and before every demo run.", files=files),
        indent=2) + "\n")
    return path


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
    folder = None if retrain else check_bundled()
    try:  # before minutes of analysis, not after: an unwritable out fails here
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathensError(f"cannot create the output folder {out}: "
                           f"{err.strerror or err}") from None
    if retrain:
        folder = Path(out) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        for name in RECIPE:
            train_recipe(name, folder, seed=seed, device=device, progress=progress, log=log)
    x, y = load_dataset(DATASET, split="test")
    analyses = []
    for name in RECIPE:
        path = folder / checkpoint_name(name)
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
