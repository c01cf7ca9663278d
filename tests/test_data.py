"""pathens.data against independent oracles: scikit-learn's raw digits, CIFAR-10 batches and
IDX files written here byte by byte in their documented formats, and the real .npz files."""
import gzip
import hashlib
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch

from pathens.data.datasets import (DATASETS, DEBIAN_FASHION_MNIST, NORMALIZATIONS, dataset_info,
                                   digits_split, load_dataset, load_npz, normalize_images, read_idx)
from pathens.errors import PathensError
from realdata import REALDATA, load_cifar_npz, requires_realdata

load_digits = pytest.importorskip("sklearn.datasets").load_digits


# --- digits ----------------------------------------------------------------------------------

def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = digits_split()
    again_train, again_test = digits_split()
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    # pinned: the same split on every machine and NumPy / scikit-learn version
    assert hashlib.sha256(test.astype("<i8").tobytes()).hexdigest() == \
        "3530be80b9605f4c4adc46d0ee3006a356c16968a8efcc58f24463bc820d5ef9"
    assert len(train) + len(test) == 1797 and len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(1797))
    target = load_digits().target
    for c in range(10):
        n_c = np.sum(target == c)
        assert np.sum(target[test] == c) == round(0.2 * n_c)  # stratified: 20% of each class
    assert not np.array_equal(test, digits_split(seed=1)[1])


def test_digits_pixels_and_normalisation_match_sklearn():
    raw = load_digits()
    train, test = digits_split()
    for split, idx in (("train", train), ("test", test)):
        x, y = load_dataset("digits", split=split, normalize="none")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(idx), 1, 8, 8)
        assert torch.equal(x[:, 0], torch.from_numpy(raw.images[idx] / 16.0).float())
        assert torch.equal(y, torch.from_numpy(raw.target[idx]).long())
        assert x.min() == 0 and x.max() == 1
    x, _ = load_dataset("digits")  # default preset "digits"
    mean, std = NORMALIZATIONS["digits"]
    expect = (torch.from_numpy(raw.images[test] / 16.0).float() - mean[0]) / std[0]
    torch.testing.assert_close(x[:, 0], expect)
    # the preset is the dataset's own statistics: all 1797 images come out at mean 0, std 1
    everything = torch.cat([load_dataset("digits", split=s)[0] for s in ("train", "test")])
    assert abs(everything.mean().item()) < 1e-3 and abs(everything.std().item() - 1) < 1e-3
    x5, y5 = load_dataset("digits", limit=5)
    assert torch.equal(x5, x[:5]) and len(y5) == 5


def test_dataset_info_and_registry():
    assert set(DATASETS) == {"digits", "cifar10", "mnist", "fashion-mnist"}
    info = dataset_info("digits")
    assert (info.in_channels, info.num_classes, info.image_size, info.normalize) == (1, 10, 8, "digits")
    assert dataset_info("cifar10").normalize == "imagenet"  # the akamaster checkpoints' inputs
    for info in DATASETS.values():
        assert info.normalize in NORMALIZATIONS


# --- CIFAR-10 python batches ------------------------------------------------------------------

def _py2_pickle(obj):
    """A protocol-2 pickle as Python 2 wrote the CIFAR-10 batches: str as BINSTRING, numpy
    arrays through numpy.core.multiarray._reconstruct with py2 str dtype state."""
    out = [b"\x80\x02"]

    def w(o):
        if isinstance(o, bytes):
            out.append(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, int):
            out.append(b"J" + struct.pack("<i", o))
        elif isinstance(o, list):
            out.append(b"](")
            for v in o:
                w(v)
            out.append(b"e")
        elif isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.append(b"u")
        elif isinstance(o, np.ndarray):  # uint8, C order
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            w(0), out.append(b"\x85"), w(b"b"), out.append(b"\x87R(")  # _reconstruct(ndarray, (0,), 'b')
            w(1), out.append(b"(")
            for d in o.shape:
                w(d)
            out.append(b"tcnumpy\ndtype\n"), w(b"u1"), out.append(b"\x89\x88\x87R(")  # dtype('u1', False, True)
            w(3), w(b"|"), out.append(b"NNN"), w(-1), w(-1), w(0), out.append(b"tb\x89")
            w(o.tobytes()), out.append(b"tb")
        else:
            raise TypeError(type(o))
    w(obj)
    return b"".join(out) + b"."


def _fake_batch(n, seed, *, py2=True):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch = {b"batch_label": b"fake batch", b"labels": labels, b"data": data,
             b"filenames": [b"img%d.png" % i for i in range(n)]}
    return batch, (_py2_pickle(batch) if py2 else pickle.dumps(batch))


def _write_cifar(folder, *, py2=True):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name], raw = _fake_batch(3 + i, i, py2=py2)
        (folder / name).write_bytes(raw)
    return batches


@pytest.mark.parametrize("py2", [True, False], ids=["python2-pickle", "python3-pickle"])
def test_cifar10_batches_decode_to_the_raw_bytes(tmp_path, py2):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", py2=py2)  # found in root/cifar-10-batches-py
    x, y = load_dataset("cifar10", root=tmp_path, split="test", normalize="none")
    data, labels = batches["test_batch"][b"data"], batches["test_batch"][b"labels"]
    assert x.shape == (len(data), 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == labels
    # row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major
    for n, c, i, j in [(0, 0, 0, 0), (1, 1, 5, 7), (2, 2, 31, 30), (0, 2, 17, 3)]:
        assert round(x[n, c, i, j].item() * 255) == data[n, c * 1024 + i * 32 + j]
    assert torch.equal(torch.round(x * 255).to(torch.uint8).reshape(len(data), -1), torch.from_numpy(data))
    xt, yt = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", split="train", normalize="none")
    expect = np.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    assert torch.equal(torch.round(xt * 255).to(torch.uint8).reshape(len(expect), -1), torch.from_numpy(expect))
    assert yt.tolist() == sum((batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)), [])
    # default normalisation: imagenet
    xn, _ = load_dataset("cifar10", root=tmp_path, split="test")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS["imagenet"])
    torch.testing.assert_close(xn, (x - mean) / std)


def test_cifar10_pickle_with_other_globals_is_refused(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": OrderedDict(), b"labels": []}))
    with pytest.raises(PathensError, match="refused.*collections.OrderedDict"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_bad_batches(tmp_path):
    (tmp_path / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(PathensError, match="corrupt"):
        load_dataset("cifar10", root=tmp_path)
    batch, _ = _fake_batch(4, 0)
    batch[b"labels"][2] = 10
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(PathensError, match=r"labels must lie in \[0, 10\)"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(PathensError, match="expected data_batch_1, .*data_batch_5 in one of"):
        load_dataset("cifar10", root=tmp_path, split="train")
    with pytest.raises(PathensError, match="needs a root"):
        load_dataset("cifar10")


def test_cifar10_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x=x, y=np.array([0, 3, 9, 1]))
    xs, ys = load_dataset("cifar10", root=tmp_path / "c.npz", normalize="none")
    assert torch.equal(torch.round(xs * 255).to(torch.uint8), torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ys.tolist() == [0, 3, 9, 1]
    np.savez(tmp_path / "bad.npz", x=x, y=np.array([0, 3, 19, 1]))
    with pytest.raises(PathensError, match="labels must lie"):
        load_dataset("cifar10", root=tmp_path / "bad.npz")


@requires_realdata
def test_real_npz_first_image_matches_the_file():
    path = REALDATA / "cifar10_test_first1000.npz"
    x, y = load_dataset("cifar10", root=path, normalize="imagenet", limit=3)
    ref_x, ref_y = load_cifar_npz("cifar10_test_first1000")  # tests' own independent reader
    torch.testing.assert_close(x, ref_x[:3])
    assert torch.equal(y, ref_y[:3])
    with np.load(path) as raw:
        first = torch.from_numpy(raw["x"][0]).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATIONS["imagenet"])
    torch.testing.assert_close(x[0], (first - mean) / std)
    xn, yn = load_npz(path, limit=3)  # the CLI's reader agrees
    assert torch.equal(xn, x) and torch.equal(yn, y)


# --- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------

def _idx(array, magic):
    return struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape) + array.tobytes()


def _write_idx(folder, prefix, images, labels, gz):
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(_idx(images, 2051))
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(_idx(labels, 2049))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_read_correctly(tmp_path, gz, name):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([7, 0, 9, 3, 3], dtype=np.uint8)
    _write_idx(tmp_path, "t10k", images, labels, gz)
    _write_idx(tmp_path, "train", images[::-1].copy(), labels[::-1].copy(), gz)
    x, y = load_dataset(name, root=tmp_path, normalize="none")
    assert x.shape == (5, 1, 28, 28) and y.dtype == torch.int64
    assert torch.equal(torch.round(x[:, 0] * 255).to(torch.uint8), torch.from_numpy(images))
    assert y.tolist() == labels.tolist()
    xt, yt = load_dataset(name, root=tmp_path, split="train", limit=2)
    assert yt.tolist() == [3, 3]
    mean, std = NORMALIZATIONS[name]
    torch.testing.assert_close(xt[:, 0], (torch.from_numpy(images[::-1][:2].copy()).float() / 255 - mean[0]) / std[0])


def test_read_idx_header_and_corruption(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(arr, 2051))
    assert np.array_equal(read_idx(tmp_path / "a", magic=2051), arr)
    with pytest.raises(PathensError, match="magic number 2051, expected 2049"):
        read_idx(tmp_path / "a", magic=2049)
    (tmp_path / "b").write_bytes(_idx(arr, 2051)[:-1])  # truncated
    with pytest.raises(PathensError, match="corrupt.*24 bytes of data, the file holds 23"):
        read_idx(tmp_path / "b")
    (tmp_path / "c.gz").write_bytes(b"not gzip at all")
    with pytest.raises(PathensError, match="corrupt"):
        read_idx(tmp_path / "c.gz")
    # through load_dataset: a labels file with an image magic, labels out of range
    images = np.zeros((2, 28, 28), np.uint8)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "t10k-images-idx3-ubyte").write_bytes(_idx(images, 2051))
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros((2, 1, 1), np.uint8), 2051))
    with pytest.raises(PathensError, match="t10k-labels-idx1-ubyte is corrupt.*expected 2049"):
        load_dataset("mnist", root=tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([1, 11], np.uint8), 2049))
    with pytest.raises(PathensError, match=r"mnist: labels must lie in \[0, 10\)"):
        load_dataset("mnist", root=tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([1, 2, 3], np.uint8), 2049))
    with pytest.raises(PathensError, match="2 images but .* 3 labels"):
        load_dataset("mnist", root=tmp_path / "m")


def test_missing_files_say_what_and_where(tmp_path):
    with pytest.raises(PathensError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte[.gz]" in msg and "t10k-labels-idx1-ubyte[.gz]" in msg
    assert str(tmp_path) in msg and "\n" not in msg
    with pytest.raises(PathensError, match="mnist needs a root"):
        load_dataset("mnist")


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_fashion_mnist_from_the_debian_package():
    x, y = load_dataset("fashion-mnist", limit=100)  # no root: the package's folder
    assert x.shape == (100, 1, 28, 28) and 0 <= y.min() and y.max() <= 9


# --- bad input and presets --------------------------------------------------------------------

def test_unknown_names_list_the_known_ones():
    with pytest.raises(PathensError, match="unknown dataset 'svhn': choose one of digits, cifar10, mnist, "
                                           "fashion-mnist"):
        load_dataset("svhn")
    with pytest.raises(PathensError, match="unknown normalisation 'zca'"):
        load_dataset("digits", normalize="zca")
    with pytest.raises(PathensError, match="unknown split"):
        load_dataset("digits", split="val")
    with pytest.raises(PathensError, match="limit"):
        load_dataset("digits", limit=0)


def test_normalize_images_broadcasts_presets_across_channel_counts():
    grey = torch.rand(2, 1, 4, 4)
    mean, std = NORMALIZATIONS["imagenet"]
    torch.testing.assert_close(normalize_images(grey, "imagenet"), (grey - np.mean(mean)) / np.mean(std))
    rgb = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(normalize_images(rgb, "mnist"), (rgb - 0.1307) / 0.3081)
    assert torch.equal(normalize_images(rgb, "none"), rgb)


@pytest.mark.skipif((DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist package is installed")
def test_fashion_mnist_without_root_or_package_says_where_it_looked():
    with pytest.raises(PathensError, match=f"in one of {DEBIAN_FASHION_MNIST} .*dataset-fashion-mnist package"):
        load_dataset("fashion-mnist")
