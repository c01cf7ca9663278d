"""Veit et al. (2016)'s lesion findings, checked on real data: the public pretrained CIFAR-10
ResNet-56 (akamaster) on the first 1000 CIFAR-10 test images, and a residual / plain pair of
small networks trained here on 4000 real training images.

Oracles (Veit et al., section 4 and Figs. 3, 5a): deleting a single non-downsampling block of a
residual network barely changes its error, deleting a downsampling block costs more, error
grows smoothly with the number of deleted blocks, and deleting any layer of a plain network
drops it to chance. Skipped when ../shared/realdata is absent. Measured figures are in the
assertion messages and in the comments next to each bound.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pathens
from pathens import lesion

try:
    from realdata import akamaster_checkpoint, load_cifar_npz, requires_realdata
except ImportError:  # tests/ imported as a package
    from tests.realdata import akamaster_checkpoint, load_cifar_npz, requires_realdata

pytestmark = requires_realdata

BATCH = 250


# ---- the pretrained ResNet-56 ---------------------------------------------------------------

@pytest.fixture(scope="module")
def test_images():
    return load_cifar_npz("cifar10_test_first1000")  # x (1000, 3, 32, 32) normalised, y (1000,)


@pytest.fixture(scope="module")
def resnet56():
    model = pathens.load_weights(pathens.cifar_resnet(56), akamaster_checkpoint(56)).eval()
    return pathens.wrap(model)


@pytest.fixture(scope="module")
def each56(resnet56, test_images):
    return lesion.delete_each(resnet56, test_images, batch_size=BATCH, progress=False)


def _pct(e):
    return f"{100 * e:.1f}%"


def test_resnet56_single_deletions_follow_veit(each56):
    r = each56
    assert r.num_examples == 1000 and r.downsampling_blocks == (9, 18)
    rows = r.rows[1:]
    assert [list(row["deleted"]) for row in rows] == [[i] for i in range(27)]
    down = np.array([row["error"] for row in rows if row["downsampling"]])
    keep = np.array([row["error"] for row in rows if not row["downsampling"]])
    assert len(down) == 2 and len(keep) == 25
    table = ", ".join(f"{row['deleted'][0]}{'*' * row['downsampling']}:{_pct(row['error'])}"
                      for row in rows)
    msg = (f"intact {_pct(r.intact_error)}; non-downsampling median {_pct(np.median(keep))}, "
           f"mean {_pct(keep.mean())}, max {_pct(keep.max())}; downsampling (*) mean "
           f"{_pct(down.mean())}; per block {table}")

    # reported 6.61% on the full test set; an independent re-implementation measured 7.4% on
    # these 1000 images (standard error ~0.85 points); measured here: 7.4%
    assert abs(r.intact_error - 0.074) <= 0.02, msg
    # Veit: deleting one non-downsampling block barely changes the error. Measured: median
    # 8.6% (+1.2 points), 23 of 25 within 3 points of intact, worst 15.7% (block 7)
    assert np.median(keep) <= r.intact_error + 0.02, msg
    assert np.mean(keep <= r.intact_error + 0.03) >= 0.8, msg
    assert keep.max() < 0.20, msg
    # ... and deleting a downsampling block costs more. Measured: 23.4% and 14.3% (mean 18.9%)
    # against a non-downsampling mean of 8.9%
    assert down.mean() > keep.mean() + 0.03, msg
    # every condition saw all 1000 images, none gave NaN/inf logits
    assert all(row["nonfinite"] == 0 and row["n"] == 1000 for row in r.rows), msg


def test_resnet56_rows_equal_an_independent_computation(resnet56, test_images, each56):
    """Recompute without the lesion engine the intact error and the error with block i
    deleted, for the costliest non-downsampling block (7), the first downsampling block (9)
    and the last block (26): the intact activations are carried block by block with the
    view's own blocks, and at block i the rest of the network runs from there with i deleted
    (view.run_from). Same batches, same operations: the counts must agree exactly."""
    x, y = test_images
    check = (7, 9, 26)
    wrong = dict.fromkeys(check, 0)
    intact_wrong = 0
    with torch.no_grad():
        for lo in range(0, len(x), BATCH):
            xb, yb = x[lo:lo + BATCH], y[lo:lo + BATCH]
            h = resnet56.stem(xb)
            for block in resnet56.blocks:
                if block.index in check:
                    pred = resnet56.run_from(h, block.index, deleted=[block.index]).argmax(1)
                    wrong[block.index] += int((pred != yb).sum())
                h = block(h)
            intact_wrong += int((resnet56.head(h).argmax(1) != yb).sum())
    rows = {row["deleted"][0]: row for row in each56.rows[1:]}
    assert each56.rows[0]["errors"] == intact_wrong
    for i in check:
        assert rows[i]["errors"] == wrong[i], (i, rows[i]["errors"], wrong[i])
        assert rows[i]["error"] == pytest.approx(wrong[i] / len(x), abs=1e-12)


def test_resnet56_error_grows_with_the_number_of_deleted_blocks(resnet56, test_images):
    r = lesion.delete_random(resnet56, test_images, ks=[1, 5, 10], trials=3, seed=0,
                             batch_size=BATCH, progress=False)
    assert all(not row["downsampling"] for row in r.rows[1:])  # excluded by default, as in Veit
    means = {s["k"]: s["error_mean"] for s in r.summary()}
    msg = (f"intact {_pct(r.intact_error)}; mean error by k: "
           + ", ".join(f"k={k}: {_pct(m)}" for k, m in means.items()))
    # Veit Fig. 5a: smooth growth. Measured: k=1 7.2%, k=5 22.7%, k=10 70.7% (intact 7.4%)
    assert list(means) == [1, 5, 10], msg
    assert means[1] < means[5] < means[10], msg
    assert means[1] <= r.intact_error + 0.03, msg


# ---- residual vs plain, trained here ---------------------------------------------------------

def _train(model, x, y, *, epochs, lr=0.1, batch=128, seed=0):
    """SGD (momentum 0.9, Nesterov, weight decay 5e-4), cosine schedule per step, random
    horizontal flips from a generator seeded with `seed`. Single-threaded, so that the trained
    weights do not depend on the machine's thread count (the bounds below were measured on
    these weights); the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4,
                              nesterov=True)
        steps = epochs * math.ceil(len(x) / batch)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for lo in range(0, len(x), batch):
                idx = perm[lo:lo + batch]
                flip = (torch.rand(len(idx), generator=gen) < 0.5).view(-1, 1, 1, 1)
                xb = torch.where(flip, x[idx].flip(3), x[idx])  # (B, 3, 16, 16)
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_plain_network_does_not_survive_deletion_but_residual_does(test_images):
    """Veit Fig. 3 (plain vs residual), on two networks of the same depth and width trained
    here: cifar_resnet(14, width=8) with and without shortcuts (BN, post-activation).

    To fit the time budget, the images are 2x2 average-pooled to 16x16 (the architecture is
    resolution-agnostic: global average pooling at the end): a training step then costs a
    quarter of one at 32x32, and 6 epochs on the 4000 real training images take ~10-20 s per
    network on one core."""
    x_train, y_train = load_cifar_npz("cifar10_train_first4000")
    x_train = F.avg_pool2d(x_train, 2)
    x_test, y_test = F.avg_pool2d(test_images[0], 2), test_images[1]

    results = {}
    for name, skip in (("residual", True), ("plain", False)):
        torch.manual_seed(0)
        model = _train(pathens.cifar_resnet(14, width=8, skip=skip), x_train, y_train, epochs=6)
        view = pathens.wrap(model, allow_plain=not skip, example_input=x_test[:2])
        results[name] = lesion.delete_each(view, (x_test, y_test), batch_size=BATCH,
                                           progress=False)
    res, plain = results["residual"], results["plain"]
    # the same layers are deleted in both: the 4 blocks that keep the shape
    deleted = [list(row["deleted"]) for row in plain.rows[1:]]
    assert deleted == [[0], [1], [3], [5]]
    res_keep = [row for row in res.rows[1:] if not row["downsampling"]]
    assert [list(row["deleted"]) for row in res_keep] == deleted

    res_med = float(np.median([row["error"] for row in res_keep]))
    plain_med = float(np.median([row["error"] for row in plain.rows[1:]]))
    msg = (f"residual: intact {_pct(res.intact_error)}, single deletions "
           f"{[_pct(row['error']) for row in res_keep]} (median {_pct(res_med)}); "
           f"plain: intact {_pct(plain.intact_error)}, single deletions "
           f"{[_pct(row['error']) for row in plain.rows[1:]]} (median {_pct(plain_med)})")
    # Measured with seed 0 (seeds 1-4 in brackets, to show the margins). Both learnt
    # something: accuracy 46.4% residual [45.3-47.1%], 42.1% plain [39.5-43.4%]; chance 10%
    assert res.intact_error <= 0.65 and plain.intact_error <= 0.65, msg
    # plain: deleting a layer drops it to chance: median 89.0% [84.7-88.7%]
    assert plain_med >= 0.80, msg
    # residual: a deletion costs some points, not everything: median 65.1%, +11.5 points over
    # intact [+9.8 to +12.4]. With 2 blocks per stage each block is a sixth of the network, so
    # the bound is wider than for the 27-block ResNet-56 above
    assert res_med <= res.intact_error + 0.20, msg
    # ... and stays far from the plain network's collapse: 24.0 points apart [18.1-24.2]
    assert res_med < plain_med - 0.10, msg
