"""Data as a view sees it: a batch checked against the view and its loss, cut into chunks, and
`Data`, the one way every measurement and the command line walk data: labelled ((inputs,
targets) pairs or loaders of them) or inputs only, iterated as checked batches (streamed: a
loader's examples are never all in memory), its first n examples as one batch, or the
sampled protocol's seeded random subsets."""
from __future__ import annotations

import hashlib
import itertools
import math
from typing import Iterator, Optional

import numpy as np
import torch

from torch.utils.data import DataLoader, Subset

from .. import checks, distributed
from ..errors import PathensError
from .fingerprint import fingerprint_tensors, hash_item
from .inputs import (batch_len, check_finite, concat, is_tokens, main_tensor, take, tensors,
                     to_model)
from .losses import Loss, get_loss


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
    _check_kind(view, x)
    if is_tokens(inputs):
        _check_tokens(view, x)
    inputs = to_model(inputs, view.param)
    check_finite(inputs)
    targets = get_loss(loss, view.loss).check(targets, inputs, view.num_outputs)
    return inputs, targets.to(device=view.param.device) if torch.is_tensor(targets) else targets


def _check_kind(view, x: torch.Tensor) -> None:
    """Integer inputs for a model wrapped on floats (uint8 pixels, int64 images), or float
    inputs for one wrapped on token ids: one line saying how to convert them, instead of the
    raw dtype error deep in the model (or a silent cast)."""
    wrapped = getattr(view, "input_dtype", None)  # the probe's
    if wrapped is None or wrapped.is_floating_point == x.is_floating_point():
        return
    name = lambda d: str(d).replace("torch.", "")
    if wrapped.is_floating_point:
        how = ("pixels in 0..255: convert them to floats in [0, 1] (x.float() / 255) and "
               "normalise them as the model was trained" if x.dtype == torch.uint8 else
               "convert them to floats (x.float()) as the model was trained to take them")
        raise PathensError(f"inputs are {name(x.dtype)} but the model takes floating-point "
                           f"inputs (it was wrapped with {name(wrapped)} ones): {how}")
    raise PathensError(f"inputs are {name(x.dtype)} but the model takes token ids (it was "
                       f"wrapped with {name(wrapped)} ids): pass integer ids (ids.long())")


def _check_tokens(view, ids: torch.Tensor) -> None:
    vocab = view.vocab_size or (view.num_outputs if view.loss == "next_token" else None)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 and not vocab:
        raise PathensError(f"token ids range over {lo}..{hi}: ids are never negative; tokenise "
                           f"with the model's own tokenizer")
    if lo < 0 or (vocab and hi >= vocab):
        raise PathensError(f"token ids range over {lo}..{hi} but the model's vocabulary has "
                           f"{vocab} tokens (0..{vocab - 1}): tokenise with the model's own "
                           f"tokenizer")
    if view.max_length and ids.shape[1] > view.max_length:
        raise PathensError(f"sequences of {ids.shape[1]} tokens are longer than the model's "
                           f"context of {view.max_length}: cut them (e.g. --seq-len)")


def check_size(size: Optional[int]) -> None:
    """A batch size: a positive integer, or None (one batch)."""
    if size is not None:
        checks.positive("batch_size", size)


def chunks(n: int, size: Optional[int]) -> Iterator[slice]:
    """Consecutive slices of range(n), each at most `size` long (None: one slice)."""
    check_size(size)
    step = n if size is None else size
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


# ---- datasets ----------------------------------------------------------------------------------

EMPTY = "data is empty: it holds no examples; pass at least one"


class _InputsOnly(Loss):
    """For check_batch on unlabelled data: the inputs are checked (shape, vocabulary, context,
    finite values); there are no targets to check."""
    name = "none"

    def check(self, targets, inputs, num_outputs):
        return targets


class Data:
    """Data as a measurement walks it, each batch checked by check_batch against the view.

    labelled=True: an (inputs, targets) pair (cut into batches of batch_size) or a re-iterable
    loader of (inputs, targets) batches, e.g. a DataLoader; the targets are checked against the
    loss (None: the view's own; it gives the metrics of every condition).
    labelled=False: inputs only: a tensor, a dict of tensors (e.g. input_ids and
    attention_mask), an (inputs, targets) pair whose targets are ignored, or a re-iterable
    loader of either; there is no loss. view=None (unlabelled only): the inputs as they come,
    neither checked nor moved (what a view is built from).

    Iterating gives this process's (inputs, targets) batches (targets None when unlabelled; a
    pair's examples sharded under torch.distributed, a loader's batches dealt by
    local_batches), inputs() their inputs alone, random_batches() the sampled protocol's
    seeded random subsets, first(n) the first n examples of the whole data as one batch (the
    same on every rank). Empty data is refused with one message (EMPTY) whatever its kind: a
    pair or a sized loader at once, any other loader when a pass finds no batch.
    """

    def __init__(self, view, data, batch_size: Optional[int] = 256, loss=None, *,
                 labelled: bool = True):
        check_size(batch_size)
        self.view, self.batch_size, self.labelled, self._pending = view, batch_size, labelled, None
        if labelled:
            if view is None:
                raise ValueError("labelled data is checked against a view: pass one")
            self.loss = get_loss(loss, view.loss)
        else:
            if loss is not None:
                raise ValueError("unlabelled data has no loss: pass loss=None")
            self.loss = _InputsOnly()
        if is_pair(data) or (not labelled and (torch.is_tensor(data) or
                                               isinstance(data, (dict, np.ndarray)))):
            x, y = (data[0], data[1]) if is_pair(data) else (data, None)
            if not (torch.is_tensor(x) or isinstance(x, dict)):
                x = torch.as_tensor(np.asarray(x))
            if _no_examples(x):
                raise PathensError(EMPTY)
            self.pair = self._check(x, y)
            self.loader, self.num_examples = None, batch_len(self.pair[0])
            self.num_batches = len(list(chunks(self.num_examples, batch_size)))
            return
        kinds = ("an (inputs, targets) pair or a DataLoader of (inputs, targets) batches"
                 if labelled else
                 "inputs, an (inputs, targets) pair or a re-iterable loader of batches")
        if data is None or torch.is_tensor(data) or not hasattr(data, "__iter__") or \
                isinstance(data, (str, bytes)):
            raise PathensError(f"data must be {kinds}, got {type(data).__name__}")
        if iter(data) is data:
            raise PathensError("data is a one-shot iterator (e.g. a generator); pass a "
                               "re-iterable loader (a DataLoader, a list of batches) or an "
                               "(inputs, targets) pair")
        if isinstance(data, (list, tuple)):
            for b in data:
                if labelled and not is_pair(b):
                    raise PathensError("data must be an (inputs, targets) pair or a list of "
                                       "(inputs, targets) batches; this list holds something "
                                       "else")
                if not labelled:
                    _unlabelled_batch(b)
        self.pair, self.loader = None, data
        self.num_batches = _length(data)
        if self.num_batches == 0:
            raise PathensError(EMPTY)
        dataset = getattr(data, "dataset", None)
        if dataset is not None:
            self.num_examples = _length(dataset)
        elif isinstance(data, (list, tuple)):
            self.num_examples = sum(batch_len(b[0] if labelled else _unlabelled_batch(b))
                                    for b in data)
        else:
            self.num_examples = None

    def _check(self, x, y) -> tuple:
        """(inputs, targets) checked against the view (moved to its device), targets None
        when unlabelled; unlabelled with no view: (x, None) as they are."""
        if self.labelled:
            return check_batch(self.view, x, y, self.loss)
        if self.view is None:
            if not _is_inputs(x):
                raise PathensError(f"inputs must be a tensor (or a dict of tensors), got "
                                   f"{type(x).__name__}")
            return x, None
        return check_batch(self.view, x, None, self.loss)[0], None

    def __iter__(self):
        if self._pending is not None:  # the pass fingerprint() started: its first batch, then on
            first, rest = self._pending
            self._pending = None
            return itertools.chain([first], rest)
        return self._batches()

    def batches(self, size: Optional[int]):
        """One pass in batches of `size` examples (a pair; a loader's are its own)."""
        return self._batches(size)

    def inputs(self, size: Optional[int] = 0):
        """One pass over this process's batches, their inputs alone (size as batches(); 0:
        batch_size)."""
        for x, _ in (iter(self) if size == 0 else self._batches(size)):
            yield x

    def _batches(self, size: Optional[int] = 0):
        """This process's batches: all of them, or under torch.distributed its shard; a pair
        cut into batches of `size` (0: batch_size; a loader's batches are its own)."""
        if self.pair is not None:
            x, y = self.pair
            part = distributed.shard(self.num_examples)
            for sl in chunks(part.stop - part.start, self.batch_size if size == 0 else size):
                sl = slice(part.start + sl.start, part.start + sl.stop)
                yield take(x, sl), None if y is None else y[sl]
            return
        yield from self._checked(local_batches(self.loader), every_rank=False)

    def _checked(self, batches, every_rank: bool):
        """The batches checked; EMPTY when there are none (the whole data's batches: on every
        rank; a rank's share may be empty under torch.distributed)."""
        empty = True
        for b in batches:
            empty = False
            if not self.labelled:
                yield self._check(_unlabelled_batch(b), None)
                continue
            if not isinstance(b, (tuple, list)) or len(b) < 2:
                raise PathensError(f"each batch of data must be (inputs, targets), got "
                                   f"{type(b).__name__}")
            yield self._check(b[0], b[1])
        if empty and (every_rank or not distributed.active()):
            raise PathensError(EMPTY)

    def first(self, n: Optional[int], *, what: str = "n"):
        """The first n examples of the whole data (None: all of them; fewer if it holds fewer),
        joined into one batch: (inputs, targets), or the inputs alone when unlabelled. The same
        on every rank (no shard). A loader is read only as far as its first n examples; its
        batches must then share their shape beyond the first dimension (else a PathensError
        naming `what`, the argument that asked for n)."""
        return self.head(n, what=what)[0]

    def head(self, n: Optional[int], least: int = 0, *, what: str = "n") -> tuple:
        """(first(n), seen, ended): also tells how far the data goes. A loader's batches are
        read, beyond the first n examples without being kept, until max(n, least) examples
        are seen; seen: the examples read (a pair: min(its size, max(n, least))); ended: the
        data ended before max(n, least) examples, so that seen is its size."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or
                              n < 1):
            raise PathensError(f"{what} must be a positive integer or None (all), got {n!r}")
        cap = math.inf if n is None else int(n)
        want = max(cap, least)
        if self.pair is not None:
            x, y = self.pair
            seen = min(self.num_examples, want)
            return self._cut(x, y, n), seen, seen < want
        xs, ys, seen, ended = [], [], 0, True
        for x, y in self._checked(self.loader, every_rank=True):  # all of it, on every rank
            if seen < cap:
                xs.append(x)
                ys.append(y)
            seen += batch_len(x)
            if seen >= want:
                ended = False
                break
        try:
            x = xs[0] if len(xs) == 1 else concat(xs)
            y = ys[0] if len(ys) == 1 or not self.labelled else torch.cat(ys)
        except RuntimeError:
            shapes = [tuple(main_tensor(x).shape) for x in xs]
            other = next((s for s in shapes if s[1:] != shapes[0][1:]), shapes[-1])
            raise PathensError(f"{what}={n} spans the first batches of the data, whose inputs "
                               f"differ in shape ({shapes[0]} and {other}): they cannot be "
                               f"joined into one batch; give {what} <= {shapes[0][0]} or "
                               f"batches of one shape") from None
        return self._cut(x, y, n), seen, ended

    def _cut(self, x, y, n: Optional[int]):
        sl = slice(0, n)
        if not self.labelled:
            return take(x, sl)
        return take(x, sl), y[sl]

    def random_batches(self, batch_size: Optional[int], rng: np.random.Generator):
        """Endless batches for the sampled protocol, this rank's part of each: a pair, all
        examples or a random subset of batch_size each time (rng.choice without replacement,
        sorted; drawn alike on every rank, each taking the examples of its shard; (None, None)
        where it holds none); a loader, its batches in turn (again from the start when it
        ends). Targets None when unlabelled. Checks batch_size at the first batch."""
        if self.pair is not None:
            x, y = self.pair
            N = self.num_examples
            if batch_size is not None and (isinstance(batch_size, bool) or
                                           not isinstance(batch_size, (int, np.integer)) or
                                           not 1 <= batch_size <= N):
                raise PathensError(f"batch_size must be an integer in 1..{N} (the number of "
                                   f"examples), got {batch_size!r}")
            part = distributed.shard(N)
            while True:
                idx = np.arange(N) if batch_size in (None, N) else \
                    np.sort(rng.choice(N, batch_size, replace=False))
                idx = idx[(idx >= part.start) & (idx < part.stop)]
                if len(idx) == 0:
                    yield None, None
                elif len(idx) == N:
                    yield x, y
                else:
                    idx = torch.as_tensor(idx, device=main_tensor(x).device)
                    yield take(x, idx), None if y is None else y[idx]
        if batch_size is not None:
            raise PathensError("batch_size applies to tensor inputs; a loader's measurements use "
                               "its own batches (set the DataLoader's batch_size)")
        while True:
            yield from self

    def fingerprint(self) -> str:
        """A short sha256 of the data's contents, so that a resumed sweep never mixes datasets of
        the same size (other examples, another normalisation).

        A pair: shapes, dtypes, all targets and the inputs as the model sees them (all of them
        up to 2^22 values, else 2^22 values spread evenly over the whole tensor). A loader over
        an indexable dataset (e.g. a DataLoader): the dataset's size, the loader's number of
        batches and the items at 16 evenly spread indices (independent of shuffling). Any other
        loader: its number of batches and what it yields in its first batch; that batch is
        kept for the next pass, so the loader is not read once more. A dataset with a
        files_fingerprint() (imagefolder.ImageFolder: every file's path, size and mtime) adds
        it. Limitation: for other loaders, a change confined to items (or batches) not sampled
        goes unnoticed, and a loader whose items vary between passes (random augmentation,
        shuffled plain iterables) is taken for different data.
        """
        if self.pair is not None:
            return fingerprint_tensors([t for t in self.pair if t is not None])
        h = hashlib.sha256()
        dataset = getattr(self.loader, "dataset", None)
        size = _length(dataset) if dataset is not None else None
        if size:
            h.update(f"dataset:{size}:{self.num_batches};".encode())
            files = getattr(dataset, "files_fingerprint", None)
            if callable(files):  # an image folder: every file's name, size and mtime
                h.update(f"files:{files()};".encode())
            try:
                for i in sorted(set(np.linspace(0, size - 1, 16).astype(int).tolist())):
                    hash_item(h, dataset[i])
                return h.hexdigest()[:16]
            except (NotImplementedError, TypeError, KeyError, IndexError):
                h = hashlib.sha256()  # not indexable by position: fall back to the first batch
        rest = self._batches() if not distributed.active() else \
            self._checked(self.loader, every_rank=True)
        first = next(rest)  # EMPTY when there is none
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


def _is_inputs(x) -> bool:
    """A batch of inputs: a tensor or a non-empty dict of tensors."""
    return torch.is_tensor(x) or (isinstance(x, dict) and bool(x) and
                                  all(torch.is_tensor(v) for v in x.values()))


def _unlabelled_batch(b):
    """The inputs of one batch of unlabelled data: the batch itself, or the first entry of an
    (inputs, targets) (or [inputs]) batch."""
    x = b[0] if isinstance(b, (tuple, list)) and b and _is_inputs(b[0]) else b
    if not _is_inputs(x):
        raise PathensError(f"each batch must be inputs or (inputs, targets), got "
                           f"{type(x).__name__}")
    return x


def _no_examples(x) -> bool:
    """Inputs with a batch dimension of length 0."""
    t = main_tensor(x) if _is_inputs(x) else None
    return t is not None and t.ndim > 0 and len(t) == 0


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
