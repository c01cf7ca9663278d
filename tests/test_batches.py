"""Data, the one way pathens walks data, against direct slicing of the tensors it was given:
labelled and inputs-only, pairs, dicts and loaders; first(n) and head(); the sampled protocol's
random subsets against numpy's own draws; under a fake 2-rank shard (each example on exactly one
rank, first(n) alike on both); and one message for empty data from every measurement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pathens
from pathens import distributed
from pathens.data.batches import EMPTY, Data
from pathens.errors import PathensError
from nets import batch, small_resnet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N = 11  # examples: odd, so that two ranks hold 5 and 6


@pytest.fixture(scope="module")
def view(one_thread):
    return pathens.wrap(small_resnet(8))


@pytest.fixture(scope="module")
def xy():
    return batch(N, seed=3)


def same(a, b):
    """Equal tensors (or dicts of them), value for value, in the same dtype."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)


def slices(n, k):
    return [slice(i, min(i + k, n)) for i in range(0, n, k)]


class Unsized:
    """A re-iterable loader with no len()."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


# ---- one process -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 3, 4, N, None])
def test_a_pair_walks_as_slices(view, xy, size):
    x, y = xy
    d = Data(view, (x, y), size)
    cuts = slices(N, size or N)
    got = list(d)
    assert len(got) == len(cuts) == d.num_batches and d.num_examples == N
    for (gx, gy), sl in zip(got, cuts):
        same(gx, x[sl])
        same(gy, y[sl])
    for gx, sl in zip(Data(view, (x, y), size, labelled=False).inputs(), cuts):
        same(gx, x[sl])
    for gx, sl in zip(d.inputs(2), slices(N, 2)):  # another size than batch_size
        same(gx, x[sl])


@pytest.mark.parametrize("make", [
    lambda x, y: x,                                   # a tensor
    lambda x, y: (x, y),                              # a pair: targets ignored
    lambda x, y: (x, "no targets here"),              # ... whatever they are
    lambda x, y: x.numpy(),                           # an array
])
def test_inputs_only_data_is_its_inputs(view, xy, make):
    x, _ = xy
    d = Data(view, make(*xy), 4, labelled=False)
    assert d.num_examples == N and d.pair[1] is None
    for (gx, gy), sl in zip(d, slices(N, 4)):
        same(gx, x[sl])
        assert gy is None
    same(d.first(5), x[:5])
    same(d.first(None), x)
    same(d.first(100), x)


@pytest.mark.parametrize("make", [
    lambda x, y, k: [(x[sl], y[sl]) for sl in slices(len(x), k)],       # (inputs, targets)
    lambda x, y, k: [x[sl] for sl in slices(len(x), k)],                  # inputs
    lambda x, y, k: DataLoader(TensorDataset(x), batch_size=k),           # [inputs]
    lambda x, y, k: DataLoader(TensorDataset(x, y), batch_size=k),
    lambda x, y, k: Unsized([(x[sl], y[sl]) for sl in slices(len(x), k)]),
])
def test_an_unlabelled_loader_gives_its_batches_inputs(view, xy, make):
    x, y = xy
    d = Data(view, make(x, y, 3), labelled=False)
    got = list(d.inputs())
    assert len(got) == 4
    for gx, sl in zip(got, slices(N, 3)):
        same(gx, x[sl])
    assert d.num_examples in (N, None)
    for n in (1, 2, 3, 4, 7, N, 50, None):  # within a batch, at its end, across batches
        same(d.first(n), x[:n])


def test_a_labelled_loader_first_and_head(view, xy):
    x, y = xy
    loader = [(x[sl], y[sl]) for sl in slices(N, 3)]
    d = Data(view, loader)
    for n in (1, 3, 5, N, 20):
        gx, gy = d.first(n)
        same(gx, x[:n])
        same(gy, y[:n])
    # head: reads on, without keeping, until max(n, least) examples; ended: it held fewer
    for n, least, seen, ended in [(1, 2, 3, False), (5, 2, 6, False), (1, 0, 3, False),
                                  (10, 2, N, False), (11, 2, N, False), (12, 2, N, True),
                                  (1, 12, N, True), (None, 0, N, True)]:
        (gx, gy), s, e = d.head(n, least)
        same(gx, x[:n])
        assert (s, e) == (seen, ended), (n, least)
    one = Data(view, [(x[:1], y[:1])])  # a loader of 1 example: ended before 2
    assert one.head(1, 2)[1:] == (1, True)
    pair = Data(view, (x, y))
    assert pair.head(4, 2)[1:] == (4, False) and pair.head(4, 20)[1:] == (N, True)


def test_dict_inputs_are_cut_key_by_key():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32,
                                     n_positions=16)
    torch.manual_seed(0)
    view = pathens.wrap(transformers.GPT2LMHeadModel(config).eval())
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, 32, (7, 6), generator=g),
              "attention_mask": torch.ones(7, 6, dtype=torch.long)}
    d = Data(view, inputs, 3, labelled=False)
    for gx, sl in zip(d.inputs(), slices(7, 3)):
        same(gx, {k: v[sl] for k, v in inputs.items()})
    same(d.first(4), {k: v[:4] for k, v in inputs.items()})
    loader = [{k: v[sl] for k, v in inputs.items()} for sl in slices(7, 2)]
    same(Data(view, loader, labelled=False).first(5), {k: v[:5] for k, v in inputs.items()})
    labelled = Data(view, (inputs, inputs["input_ids"]), 3)  # next-token targets: the ids
    gx, gy = labelled.first(4)
    same(gx, {k: v[:4] for k, v in inputs.items()})
    same(gy, inputs["input_ids"][:4])


def test_batches_are_checked_against_the_view(view, xy):
    x, y = xy
    d = Data(view, x.float(), 4, labelled=False)  # a float64 view: float32 inputs moved to it
    same(d.first(3), x.float()[:3].double())
    with pytest.raises(PathensError, match="do not fit the model"):
        Data(view, x[:, :2], labelled=False)
    with pytest.raises(PathensError, match="do not fit the model"):
        list(Data(view, [x[:4, :2]], labelled=False))
    bad = x.clone()
    bad[5, 0, 0, 0] = float("nan")
    with pytest.raises(PathensError, match="NaN"):
        Data(view, [(x[:4], y[:4]), (bad[4:], y[4:])], labelled=False).first(6)
    with pytest.raises(PathensError, match="targets range"):
        Data(view, (x, y + 10))
    # no view: the inputs as they come, neither checked nor moved (what a view is built from)
    raw = Data(None, [(x[:1, :2].float(), y[:1]), (x[1:3, :2].float(), y[1:3])], None,
               labelled=False)
    same(raw.first(2), x[:2, :2].float())


def test_first_refuses_batches_of_different_shapes(view):
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    ragged = [x[:3], torch.randn(3, 3, 6, 6, dtype=torch.float64), x[3:]]  # ([a, b]: a pair)
    d = Data(view, ragged, labelled=False)
    same(d.first(3), x[:3])  # within the first batch: fine
    with pytest.raises(PathensError, match=r"n=4 spans .* differ in shape \(\(3, 3, 8, 8\) and "
                                           r"\(3, 3, 6, 6\)\).* n <= 3"):
        d.first(4)
    with pytest.raises(PathensError, match="gradient_examples=5 spans"):
        d.first(5, what="gradient_examples")


def test_random_batches_are_numpys_draws(view, xy):
    x, y = xy
    d = Data(view, (x, y), None)
    for size in (1, 4, 10):
        batches, rng = d.random_batches(size, np.random.default_rng([7, 1])), \
            np.random.default_rng([7, 1])
        for _ in range(5):
            idx = torch.as_tensor(np.sort(rng.choice(N, size, replace=False)))
            gx, gy = next(batches)
            same(gx, x[idx])
            same(gy, y[idx])
    for size in (None, N):  # every example every time, no draw
        gx, gy = next(d.random_batches(size, np.random.default_rng(0)))
        assert gx is d.pair[0] and gy is d.pair[1]
    gx, gy = next(Data(view, x, None, labelled=False).random_batches(4, np.random.default_rng(3)))
    same(gx, x[torch.as_tensor(np.sort(np.random.default_rng(3).choice(N, 4, replace=False)))])
    assert gy is None
    loader = [(x[sl], y[sl]) for sl in slices(N, 4)]  # a loader: its batches, round and round
    cycled = Data(view, loader).random_batches(None, np.random.default_rng(0))
    for i in range(7):
        gx, gy = next(cycled)
        same(gx, loader[i % 3][0])
    with pytest.raises(PathensError, match="batch_size applies to tensor inputs"):
        next(Data(view, loader).random_batches(2, np.random.default_rng(0)))
    with pytest.raises(PathensError, match=r"batch_size must be an integer in 1\.\.11"):
        next(d.random_batches(12, np.random.default_rng(0)))


def test_empty_data_one_message(view, xy):
    """Every kind of empty data, labelled or not, and every measurement given it: EMPTY."""
    x, y = xy
    kinds = [(x[:0], y[:0]), [], DataLoader(TensorDataset(x[:0], y[:0]), batch_size=2),
             Unsized([])]
    for data in kinds:
        for labelled in (True, False):
            with pytest.raises(PathensError) as err:
                list(Data(view, data, 4, labelled=labelled))
            assert str(err.value) == EMPTY, (type(data).__name__, labelled)
    for data in (x[:0], {"x": x[:0]}):
        with pytest.raises(PathensError, match=f"^{EMPTY}$"):
            Data(view, data, labelled=False)
    with pytest.raises(PathensError, match=f"^{EMPTY}$"):
        Data(view, Unsized([]), labelled=False).first(2)
    from pathens.measure.lesion import delete_each
    calls = [lambda: pathens.branch_variance(view, x[:0]),
             lambda: pathens.block_influence(view, x[:0]),
             lambda: pathens.singularities(view, x[:0]),
             lambda: pathens.block_jacobian_spectra(view, x[:0]),
             lambda: pathens.path_gradients(view, x[:0], y[:0]),
             lambda: pathens.path_gradients(view, x[:0], y[:0], method="sampled"),
             lambda: pathens.signal_propagation(view, (x[:0], y[:0])),
             lambda: pathens.hessian(view, (x[:0], y[:0])),
             lambda: delete_each(view, (x[:0], y[:0])),
             lambda: pathens.analyze(view, Unsized([]), log=lambda line: None)]
    for i, call in enumerate(calls):
        with pytest.raises(PathensError) as err:
            call()
        assert str(err.value) == EMPTY, i


def test_bad_data_is_refused_in_one_line(view, xy):
    x, y = xy
    for data, labelled, match in [
            (x, True, "pair or a DataLoader"),
            (iter([(x, y)]), True, "one-shot"),
            (iter([x]), False, "re-iterable"),
            (3, False, r"inputs, an \(inputs, targets\) pair or a re-iterable loader"),
            ([(x, y), "batch"], True, "this list holds something else"),
            ([x, x, "batch"], False, "each batch must be inputs or"),
            (Unsized(["batch"]), False, "each batch must be inputs or"),
            (Unsized([x]), True, r"each batch of data must be \(inputs, targets\)")]:
        with pytest.raises(PathensError, match=match) as err:
            list(Data(view, data, labelled=labelled))
        assert "\n" not in str(err.value)
    with pytest.raises(PathensError, match="batch_size must be a positive integer"):
        Data(view, [(x, y)], 0)  # checked for a loader too, though its batches are its own
    with pytest.raises(PathensError, match="n must be a positive integer"):
        Data(view, (x, y)).first(0)


# ---- a fake 2-rank shard -----------------------------------------------------------------------

def as_rank(monkeypatch, r):
    """This process as rank r of 2 (distributed.shard then gives rank r's share)."""
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: r)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)


@pytest.mark.parametrize("labelled", [True, False])
def test_two_ranks_share_a_pair_and_agree_on_first(monkeypatch, view, xy, labelled):
    x, y = xy
    data = (x, y) if labelled else x
    whole = Data(view, data, 4, labelled=labelled)
    first = whole.first(7)
    parts = []
    for r in (0, 1):
        as_rank(monkeypatch, r)
        d = Data(view, data, 4, labelled=labelled)
        share = slice(0, 5) if r == 0 else slice(5, N)  # 11 examples: 5 and 6
        cuts = [slice(share.start + s.start, share.start + s.stop)
                for s in slices(share.stop - share.start, 4)]
        got = list(d)
        assert len(got) == len(cuts)
        for (gx, gy), sl in zip(got, cuts):
            same(gx, x[sl])
            assert (gy is None) if not labelled else torch.equal(gy, y[sl])
        parts += [gx for gx, _ in got]
        mine = d.first(7)  # the first examples of the whole data, on every rank
        for a, b in zip(mine if labelled else [mine], first if labelled else [first]):
            same(a, b)
    same(torch.cat(parts), x)  # every example on exactly one rank, in order


def test_two_ranks_draw_alike_and_keep_their_share(monkeypatch, view, xy):
    x, y = xy
    rng = np.random.default_rng([4, 1])
    draws = [np.sort(rng.choice(N, 6, replace=False)) for _ in range(6)]
    held = []
    for r, share in ((0, range(0, 5)), (1, range(5, N))):
        as_rank(monkeypatch, r)
        batches = Data(view, (x, y), None).random_batches(6, np.random.default_rng([4, 1]))
        mine = []
        for idx in draws:
            gx, gy = next(batches)
            keep = torch.as_tensor([i for i in idx if i in share], dtype=torch.long)
            if len(keep) == 0:
                assert gx is None and gy is None
                mine.append(keep)
                continue
            same(gx, x[keep])
            same(gy, y[keep])
            mine.append(keep)
        held.append(mine)
    for i, idx in enumerate(draws):  # the two ranks' parts make up each draw
        assert sorted(torch.cat([held[0][i], held[1][i]]).tolist()) == idx.tolist()


def test_two_ranks_deal_a_loaders_batches(monkeypatch, view, xy):
    x, y = xy
    listed = [(x[sl], y[sl]) for sl in slices(N, 3)]  # 4 batches: every other one
    loader = DataLoader(TensorDataset(x, y), batch_size=3)  # re-made over the rank's share
    for r in (0, 1):
        as_rank(monkeypatch, r)
        got = list(Data(view, listed, labelled=False).inputs())
        assert len(got) == 2
        for gx, b in zip(got, listed[r::2]):
            same(gx, b[0])
        share = slice(0, 5) if r == 0 else slice(5, N)
        same(torch.cat([gx for gx, _ in Data(view, loader)]), x[share])
        gx, gy = Data(view, listed).first(8)  # all ranks read the whole loader
        same(gx, x[:8])
    # a rank whose share of a loader is empty is no error: the others hold the examples
    as_rank(monkeypatch, 1)
    assert list(Data(view, [(x, y)])) == []
