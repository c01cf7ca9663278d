"""Labelled data as a view sees it: a batch checked against the view and its loss, cut into
chunks, and `Data`, an (inputs, targets) pair or a loader of batches iterated as checked
batches (streamed: a loader's examples are never all in memory)."""
from __future__ import annotations

import hashlib
import itertools
from typing import Iterator, Optional

import numpy as np
import torch

from torch.utils.data import DataLoader, Subset

from .. import checks, distributed
from ..errors import PathensError
from .fingerprint import fingerprint_tensors, hash_item
from .inputs import batch_len, check_finite, is_tokens, main_tensor, take, tensors, to_model
from .losses import get_loss


def check_batch(view, inputs, targets, loss=None) -> tuple:
    """(inputs, targets) moved to the view's device (floating inputs in its dtype) and checked
    against the view and the loss (None: the view's own), or a one-line PathensError.

    inputs: (N, *view.input_shape) up to the spatial size (images), (N, T) token ids, or a dict
    of such tensors; targets: what the loss needs ((N,) class indices; token ids).
    """
    if not (torch.is_tensor(inputs) or (isinstance(inputs, dict) and inputs and
                                        all(torch.is_tensor(v) for v in inputs.values()))):
        raise PathensError(f"inputs must be a tensor (or a dict of tensors), got "
                           f"{type(inputs).__name__}")
    x = main_tensor(inputs)
    expected = view.input_shape
    if x.ndim != len(expected) + 1 or (len(expected) > 1 and x.shape[1] != expected[0]):
        raise PathensError(
            f"inputs of shape {tuple(x.shape)} do not fit the model: expected "
            f"(N, {', '.join(map(str, expected))}) like the probe it was wrapped with")
    n = batch_len(inputs)
    if n == 0:
        raise PathensError("inputs are empty: pass at least one example")
    if any(len(t) != n for t in tensors(inputs)):
        raise PathensError("the tensors of the inputs hold different numbers of examples")
    if is_tokens(inputs):
        _check_tokens(view, x)
    inputs = to_model(inputs, view.param)
    check_finite(inputs)
    targets = get_loss(loss, view.loss).check(targets, inputs, view.num_outputs)
    return inputs, targets.to(device=view.param.device) if torch.is_tensor(targets) else targets


def _check_tokens(view, ids: torch.Tensor) -> None:
    vocab = view.vocab_size or (view.num_outputs if view.loss == "next_token" else None)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or (vocab and hi >= vocab):
        raise PathensError(f"token ids range over {lo}..{hi} but the model's vocabulary has "
                           f"{vocab} tokens (0..{vocab - 1}): tokenise with the model's own "
                           f"tokenizer")
    if view.max_length and ids.shape[1] > view.max_length:
        raise PathensError(f"sequences of {ids.shape[1]} tokens are longer than the model's "
                           f"context of {view.max_length}: cut them (e.g. --seq-len)")


def chunks(n: int, size: Optional[int]) -> Iterator[slice]:
    """Consecutive slices of range(n), each at most `size` long (None: one slice)."""
    size = None if size is None else checks.positive("batch_size", size)
    step = n if size is None else size
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


# ---- datasets ----------------------------------------------------------------------------------

class Data:
    """An (inputs, targets) pair (cut into batches of batch_size) or a re-iterable loader of
    (inputs, targets) batches, e.g. a DataLoader; every batch checked by check_batch against
    the view and the loss (None: the view's own; it gives the metrics of every condition)."""

    def __init__(self, view, data, batch_size: Optional[int] = 256, loss=None):
        self.view, self.batch_size, self._pending = view, batch_size, None
        self.loss = get_loss(loss, view.loss)
        if is_pair(data):
            x = data[0] if torch.is_tensor(data[0]) or isinstance(data[0], dict) else \
                torch.as_tensor(np.asarray(data[0]))
            self.pair = check_batch(view, x, data[1], self.loss)
            self.loader, self.num_examples = None, batch_len(self.pair[0])
            self.num_batches = len(list(chunks(self.num_examples, batch_size)))
            return
        if data is None or isinstance(data, torch.Tensor) or not hasattr(data, "__iter__"):
            raise PathensError(f"data must be an (inputs, targets) pair or a DataLoader of "
                               f"(inputs, targets) batches, got {type(data).__name__}")
        if iter(data) is data:
            raise PathensError("data is a one-shot iterator (e.g. a generator); pass a DataLoader, "
                               "a list of (inputs, targets) batches or an (inputs, targets) pair")
        if isinstance(data, (list, tuple)) and not all(is_pair(b) for b in data):
            raise PathensError("data must be an (inputs, targets) pair or a list of (inputs, "
                               "targets) batches; this list holds something else")
        self.pair, self.loader = None, data
        self.num_batches = _length(data)
        if self.num_batches == 0:
            raise PathensError("data is empty: the loader yields no batches")
        dataset = getattr(data, "dataset", None)
        if dataset is not None:
            self.num_examples = _length(dataset)
        elif isinstance(data, (list, tuple)):
            self.num_examples = sum(batch_len(b[0]) for b in data)
        else:
            self.num_examples = None

    def __iter__(self):
        if self._pending is not None:  # the pass fingerprint() started: its first batch, then on
            first, rest = self._pending
            self._pending = None
            return itertools.chain([first], rest)
        return self._batches()

    def batches(self, size: Optional[int]):
        """One pass in batches of `size` examples (a pair; a loader's are its own)."""
        return self._batches(size)

    def _batches(self, size: Optional[int] = 0):
        """This process's batches: all of them, or under torch.distributed its shard; a pair
        cut into batches of `size` (0: batch_size; a loader's batches are its own)."""
        if self.pair is not None:
            x, y = self.pair
            part = distributed.shard(self.num_examples)
            for sl in chunks(part.stop - part.start, self.batch_size if size == 0 else size):
                sl = slice(part.start + sl.start, part.start + sl.stop)
                yield take(x, sl), y[sl]
            return
        yield from self._checked(local_batches(self.loader))

    def _checked(self, batches):
        for b in batches:
            if not isinstance(b, (tuple, list)) or len(b) < 2:
                raise PathensError(f"each batch of data must be (inputs, targets), got "
                                   f"{type(b).__name__}")
            yield check_batch(self.view, b[0], b[1], self.loss)

    def fingerprint(self) -> str:
        """A short sha256 of the data's contents, so that a resumed sweep never mixes datasets of
        the same size (other examples, another normalisation).

        A pair: shapes, dtypes, all targets and the inputs as the model sees them (all of them
        up to 2^22 values, else 2^22 values spread evenly over the whole tensor). A loader over
        an indexable dataset (e.g. a DataLoader): the dataset's size, the loader's number of
        batches and the items at 16 evenly spread indices (independent of shuffling). Any other
        loader: its number of batches and what it yields in its first batch; that batch is
        kept for the next pass, so the loader is not read once more. Limitation: for loaders,
        a change confined to items (or batches) not sampled goes unnoticed, and a loader whose
        items vary between passes (random augmentation, shuffled plain iterables) is taken for
        different data.
        """
        if self.pair is not None:
            return fingerprint_tensors(self.pair)
        h = hashlib.sha256()
        dataset = getattr(self.loader, "dataset", None)
        size = _length(dataset) if dataset is not None else None
        if size:
            h.update(f"dataset:{size}:{self.num_batches};".encode())
            try:
                for i in sorted(set(np.linspace(0, size - 1, 16).astype(int).tolist())):
                    hash_item(h, dataset[i])
                return h.hexdigest()[:16]
            except (NotImplementedError, TypeError, KeyError, IndexError):
                h = hashlib.sha256()  # not indexable by position: fall back to the first batch
        rest = self._batches() if not distributed.active() else self._checked(self.loader)
        first = next(rest, None)
        if first is None:
            raise PathensError("data is empty: the loader yields no batches")
        if not distributed.active():  # a rank's own first batch is not the loader's first
            self._pending = (first, rest)
        h.update(f"batches:{self.num_batches}:{self.num_examples};".encode())
        hash_item(h, first)
        return h.hexdigest()[:16]


def local_batches(loader):
    """The loader's batches for this process: all of them in one process; under
    torch.distributed, a DataLoader over a sized dataset is re-made over this rank's contiguous
    share of the dataset (same batch size, workers and collate function, no shuffling: lesions
    and gradients are sums), any other iterable gives this rank every world_size-th batch."""
    if not distributed.active():
        return loader
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, DataLoader) and _length(dataset):
        part = distributed.shard(len(dataset))
        return DataLoader(Subset(dataset, range(part.start, part.stop)),
                          batch_size=loader.batch_size, num_workers=loader.num_workers,
                          collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          drop_last=False, timeout=loader.timeout,
                          worker_init_fn=loader.worker_init_fn)
    return itertools.islice(loader, distributed.rank(), None, distributed.world_size())


def is_pair(data) -> bool:
    """An (inputs, targets) pair: two entries, the first a batch (not itself a pair)."""
    return (isinstance(data, (tuple, list)) and len(data) == 2 and
            not isinstance(data[0], (tuple, list)) and
            (torch.is_tensor(data[0]) or isinstance(data[0], (dict, np.ndarray))))


def _length(obj) -> Optional[int]:
    try:
        return len(obj)
    except TypeError:
        return None


def calibration_batches(view, data, batch_size: Optional[int]) -> list:
    """The inputs of a calibration set (a tensor, an (inputs, targets) pair or a loader), in
    batches on the model's device."""
    p = view.param
    if torch.is_tensor(data):
        out = [data[sl] for sl in chunks(len(data), batch_size)]
    elif is_pair(data):
        out = [take(data[0], sl) for sl in chunks(batch_len(data[0]), batch_size)]
    elif hasattr(data, "__iter__"):
        out = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
    else:
        raise PathensError(f"recalibrate= must be calibration inputs (a tensor), an (inputs, "
                           f"targets) pair or a DataLoader, got {type(data).__name__}")
    out = [to_model(x, p) for x in out if batch_len(x)]
    if not out:
        raise PathensError("recalibrate= holds no examples: pass a non-empty calibration set")
    return out
