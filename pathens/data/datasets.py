"""Labelled image datasets by name, with the normalisation their models were trained with.

    x, y = load_dataset("digits", split="test")       # ships with scikit-learn: the default
    x, y = load_dataset("cifar10", root="~/data")     # python-pickle batches or an .npz file
    x, y = load_dataset("fashion-mnist")              # IDX files, e.g. from Debian's package

x is float32 (N, C, H, W): pixels scaled to [0, 1], then (x - mean) / std with a named preset
from NORMALIZATIONS; y is int64 (N,) in [0, num_classes). Nothing is ever downloaded: files
are read from `root` (or, for digits, from scikit-learn's own copy).
"""
from __future__ import annotations

import functools
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import checks
from ..errors import PathensError

# name -> (mean, std) per channel, applied after scaling images to [0, 1]. A 1-channel preset
# on RGB images applies its one value to every channel; an RGB preset on grey images uses the
# average of its three values.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # akamaster CIFAR ResNets, torchvision
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),  # CIFAR-10 training set
    "mnist": ((0.1307,), (0.3081,)),  # MNIST training set (the usual PyTorch example values)
    "fashion-mnist": ((0.2860,), (0.3530,)),  # Fashion-MNIST training set
    "digits": ((0.3053,), (0.3760,)),  # all 1797 scikit-learn digits, pixel values / 16
    "none": ((0.0,), (1.0,)),  # [0, 1] as is
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset name means: where its files come from and how it is normalised.

    files: split -> the file names looked for in the root (for cifar10 an .npz file may be
    given as the root instead). augment: the augmentation pathens.train applies by default."""
    name: str
    description: str
    normalize: str
    files: dict
    in_channels: int
    num_classes: int
    image_size: int
    augment: str | None
    default_roots: tuple = ()


_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# Debian's dataset-fashion-mnist package (dpkg -c) installs the four .gz files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

DATASETS = {
    "digits": DatasetInfo(
        "digits", "scikit-learn's 1797 8x8 grey handwritten digits (values 0..16, scaled to [0, 1]); "
        "fixed stratified split, 1438 train / 359 test (seed 0)",
        "digits", {"train": (), "test": ()}, 1, 10, 8, "shift"),
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR-10, 32x32 RGB, 10 classes: the python-pickle batches (in root or "
        "root/cifar-10-batches-py), or an .npz file with x (N, 32, 32, 3) uint8 and y (N,)",
        # ImageNet statistics by default: the most used public CIFAR ResNets (akamaster) expect them
        "imagenet", _CIFAR_FILES, 3, 10, 32, "crop-flip"),
    "mnist": DatasetInfo(
        "mnist", "MNIST, 28x28 grey handwritten digits: IDX files, plain or .gz, in root",
        "mnist", _IDX_FILES, 1, 10, 28, "shift"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "Fashion-MNIST, 28x28 grey clothing images: IDX files, plain or .gz, in root "
        f"or where Debian's dataset-fashion-mnist package puts them ({DEBIAN_FASHION_MNIST})",
        "fashion-mnist", _IDX_FILES, 1, 10, 28, "shift", (DEBIAN_FASHION_MNIST,)),
}

SPLITS = ("train", "test")


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of a dataset name; PathensError listing the known names otherwise."""
    if name not in DATASETS:
        raise PathensError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, *, root=None, split: str = "test", normalize: str | None = None,
                 limit: int | None = None):
    """(x, y) of one split of a named dataset: x float32 (N, C, H, W) scaled to [0, 1] and
    normalised with `normalize` (a NORMALIZATIONS name; None: the dataset's default), y int64 (N,).

    root: the folder holding the dataset's files (cifar10: also an .npz file, which is used
    whatever the split); not needed for digits; for fashion-mnist it defaults to Debian's
    install folder. limit: keep the first `limit` examples of the split."""
    info = dataset_info(name)
    if split not in SPLITS:
        raise PathensError(f"unknown split {split!r}: choose 'train' or 'test'")
    normalize = info.normalize if normalize is None else normalize
    _check_preset(normalize)
    limit = None if limit is None else checks.limit(limit)

    if name == "digits":
        images, labels = _digits(split)  # float in [0, 1]
    elif name == "cifar10":
        images, labels = _cifar10(root, split)  # uint8
    else:
        images, labels = _idx_dataset(info, root, split)  # uint8
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    _check_labels(labels, info.num_classes, name)
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.require(images, requirements=["C", "W"])).float() / 255.0
    else:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    # grey (N, H, W) -> (N, 1, H, W); colour (N, H, W, C) -> (N, C, H, W)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return normalize_images(x, normalize), torch.from_numpy(labels.astype(np.int64))


def normalize_images(x: torch.Tensor, preset: str) -> torch.Tensor:
    """(x - mean) / std per channel for images x (N, C, H, W) already scaled to [0, 1]."""
    _check_preset(preset)
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in NORMALIZATIONS[preset])
    channels = x.shape[1]
    if len(mean) != channels:
        # 1-value preset on any images: broadcast; RGB preset on grey images: its average
        mean, std = (v.mean().expand(channels) if len(v) > 1 else v.expand(channels) for v in (mean, std))
    return ((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous()


def _check_preset(preset):
    if preset not in NORMALIZATIONS:
        raise PathensError(f"unknown normalisation {preset!r}: choose one of {', '.join(NORMALIZATIONS)}")


def _check_labels(labels, num_classes, source):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise PathensError(f"{source}: labels must lie in [0, {num_classes}), found {len(bad)} outside "
                           f"(e.g. {int(bad[0])}): the file is corrupt or not this dataset")


# --- digits: scikit-learn's copy, one fixed split -----------------------------------------

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def digits_split(seed: int = DIGITS_SEED, test_fraction: float = DIGITS_TEST_FRACTION):
    """(train_indices, test_indices) into load_digits(), both sorted: for each class in
    order, a np.random.RandomState(seed) permutation of its indices puts round(fraction * n_c)
    of them in test. RandomState's stream is frozen by NumPy, so the split is the same on
    every machine and version (the tests pin its checksum)."""
    target = _sklearn_digits()[1]
    rng = np.random.RandomState(seed)
    test = []
    for c in np.unique(target):
        members = np.flatnonzero(target == c)
        test.append(rng.permutation(members)[:int(round(test_fraction * len(members)))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(target)), test)
    return train, test


@functools.lru_cache(maxsize=1)
def _sklearn_digits():
    """(images (1797, 8, 8) float64 in 0..16, target (1797,)) from scikit-learn's own copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PathensError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    return digits.images, digits.target


def _digits(split):
    images, target = _sklearn_digits()
    train, test = digits_split()
    idx = train if split == "train" else test
    return (images[idx] / 16.0).astype(np.float32), target[idx].astype(np.int64)


# --- CIFAR-10: python-pickle batches (read safely) or an .npz file -------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts / lists / bytes / numbers and numpy arrays, nothing else: any other
    global (a class or function the pickle asks for) is refused, so a crafted file cannot run
    code. _codecs.encode is allowed because Python 3 pickles bytes that way at protocol 2."""
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _read_cifar_batch(path):
    """(images uint8 (N, 32, 32, 3), labels (N,)) from one CIFAR-10 python batch file: a pickled
    dict with b"data" uint8 (N, 3072), each row the R, G, B 32x32 planes in row-major order, and
    b"labels" a list of N ints."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        if str(err).startswith("refused global"):
            raise PathensError(f"{path} was refused: it is a pickle that asks for {str(err)[15:]}, and "
                               f"pathens only unpickles plain data and numpy arrays") from None
        raise PathensError(f"{path} is corrupt: not a CIFAR-10 python batch ({err})") from None
    except Exception as err:  # noqa: BLE001 - unpickling arbitrary bytes raises many kinds
        raise PathensError(f"{path} is corrupt: not a CIFAR-10 python batch ({type(err).__name__})") from None
    if not isinstance(batch, dict):
        raise PathensError(f"{path} is not a CIFAR-10 python batch: it holds a {type(batch).__name__}, not a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise PathensError(f"{path} is not a CIFAR-10 python batch: it lacks 'data' or 'labels' "
                           f"(has {', '.join(map(str, batch))})")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise PathensError(f"{path} is corrupt: expected data (N, 3072) uint8 and N labels, got data "
                           f"{data.shape} {data.dtype} and labels {labels.shape}")
    # (N, 3072) -> (N, 3, 32, 32) planes -> (N, 32, 32, 3) like the .npz files
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _read_npz(path):
    """(x uint8 (N, H, W, C), y (N,)) from an .npz file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except KeyError as err:
        raise PathensError(f"{path} lacks the array {err}: it needs x (N, H, W, C) uint8 and y (N,)") from None
    except Exception as err:  # noqa: BLE001 - np.load raises many kinds on a bad file
        raise PathensError(f"{path} is corrupt: not a readable .npz file ({type(err).__name__})") from None
    if x.ndim != 4 or x.dtype != np.uint8 or y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise PathensError(f"{path}: expected x (N, H, W, C) uint8 and y (N,) integers, got x {x.shape} "
                           f"{x.dtype} and y {y.shape} {y.dtype}")
    return x, y.astype(np.int64)


def _cifar10(root, split):
    info = DATASETS["cifar10"]
    if root is None:
        raise PathensError("cifar10 needs a root: the folder holding the python batches "
                           f"({', '.join(_CIFAR_FILES['train'] + _CIFAR_FILES['test'])}), or an .npz file")
    root = Path(root).expanduser()
    if root.is_file():
        x, y = _read_npz(root)
        if x.shape[1:] != (32, 32, 3):
            raise PathensError(f"{root}: cifar10 images are (32, 32, 3), got {x.shape[1:]}")
        return x, y
    names = info.files[split]
    for folder in (root, root / "cifar-10-batches-py"):
        if all((folder / n).is_file() for n in names):
            parts = [_read_cifar_batch(folder / n) for n in names]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    raise PathensError(_missing("cifar10", split, names, [root, root / "cifar-10-batches-py"],
                                extra=" (or pass an .npz file as the root)"))


def _missing(name, split, names, looked, extra=""):
    where = ", ".join(str(p) for p in looked)
    return (f"{name} {split} files not found: expected {', '.join(names)} in one of {where}{extra}")


# --- MNIST / Fashion-MNIST: IDX files ------------------------------------------------------

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049  # 0x00000803 and 0x00000801: ubyte, 3 / 1 dims


def read_idx(path, *, magic: int | None = None) -> np.ndarray:
    """The uint8 array in an IDX file (plain or .gz): a big-endian int32 magic number (two zero
    bytes, type 0x08 = unsigned byte, the number of dimensions), one big-endian int32 per
    dimension, then the data in row-major order. magic: the value required (2051 for images
    (N, rows, cols), 2049 for labels (N,))."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise PathensError(f"{path} is corrupt: cannot be read ({type(err).__name__}: {err})") from None
    if len(raw) < 4:
        raise PathensError(f"{path} is corrupt: {len(raw)} bytes, too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if raw[:2] != b"\0\0" or raw[2] != 0x08 or (magic is not None and found != magic):
        want = f"{magic}" if magic is not None else "0x0000080D (D = number of dimensions)"
        raise PathensError(f"{path} is corrupt or not an IDX file of unsigned bytes: magic number "
                           f"{found}, expected {want}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PathensError(f"{path} is corrupt: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise PathensError(f"{path} is corrupt: its header announces {dims} = {size} bytes of data, "
                           f"the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_dataset(info, root, split):
    looked = [Path(root).expanduser()] if root is not None else []
    if root is not None:  # torchvision's layout too: root/MNIST/raw, root/FashionMNIST/raw
        sub = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[info.name]
        looked += [looked[0] / info.name, looked[0] / sub / "raw"]
    else:
        looked += list(info.default_roots)
    if not looked:
        raise PathensError(f"{info.name} needs a root: the folder holding {', '.join(info.files[split])} "
                           f"(plain or .gz)")
    names = info.files[split]
    for folder in looked:
        found = [_plain_or_gz(folder / n) for n in names]
        if all(found):
            images = read_idx(found[0], magic=IDX_IMAGES_MAGIC)
            labels = read_idx(found[1], magic=IDX_LABELS_MAGIC)
            if len(images) != len(labels):
                raise PathensError(f"{found[0]} holds {len(images)} images but {found[1]} "
                                   f"{len(labels)} labels: the files do not belong together")
            return images, labels.astype(np.int64)
    hint = "" if root is not None or not info.default_roots else \
        " (install Debian's dataset-fashion-mnist package, or pass a root)"
    raise PathensError(_missing(info.name, split, [f"{n}[.gz]" for n in names], looked, extra=hint))


def _plain_or_gz(path):
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return p
    return None


# --- a single .npz file (the CLI's --data FILE) --------------------------------------------

def load_npz(path, *, normalize: str = "imagenet", limit: int | None = None):
    """(x, y) from an .npz holding `x` (N, H, W, C) uint8 images and `y` (N,) labels.

    Returns x float32 (N, C, H, W), scaled to [0, 1] and normalised with the named preset,
    and y int64 (N,). limit: keep the first `limit` examples.
    """
    path = Path(path)
    if not path.is_file():
        raise PathensError(f"data file {path} does not exist: pass an .npz with arrays x (N, H, W, C) "
                           f"uint8 and y (N,)")
    _check_preset(normalize)
    x, y = _read_npz(path)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0
    return normalize_images(images, normalize), torch.from_numpy(y)
