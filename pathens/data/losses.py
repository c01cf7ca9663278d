"""The losses (and lesion metrics) pathens measures: every one is a sum over items (examples,
or tokens for a language model), so that batches, chunks and ranks add up exactly.

    "classification": logits (N, C), targets (N,) class indices; items = examples.
    "next_token":     logits (N, T, V) of a language model, targets (N, T) token ids (the
                      inputs themselves); position t predicts token t+1, targets of -100 (and
                      positions an attention mask marks as padding) are ignored; items = tokens.
    "next_token_aligned": the same loss with targets already shifted, as nanoGPT-style code
                      makes them (y[:, t] = x[:, t+1]): position t predicts targets[:, t].
                      Each loss refuses the other's targets (next_token: targets equal to the
                      inputs shifted by one; aligned: targets equal to the inputs), which would
                      score every position against the token two ahead, or against itself.
    a callable:       fn(logits, targets) -> the mean loss over the batch's examples; items =
                      examples; no error rate.

Gradients are of the mean over all items; lesion rows report errors (top-1 misses), the summed
loss and the number of items, from which error, mean loss and perplexity follow; and for a
classifier of at least 5 classes the top-5 misses (as timm's validate.py).
"""
from __future__ import annotations

import math
from typing import Callable, Union

import torch
import torch.nn.functional as F

from ..errors import PathensError

IGNORE = -100  # the target that counts for nothing (PyTorch's and Hugging Face's convention)


class Loss:
    name: str = ""
    unit: str = "examples"

    def check(self, targets, inputs, num_outputs: int) -> torch.Tensor:
        """targets as a tensor fit for this loss, or a one-line PathensError."""
        raise NotImplementedError

    def count(self, targets: torch.Tensor) -> int:
        """The number of items the loss is averaged over."""
        return len(targets)

    def sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss summed over the items (a 0-d tensor, differentiable)."""
        raise NotImplementedError

    def stats(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple:
        """(misclassified items, summed loss, items, items with non-finite logits)."""
        raise NotImplementedError

    def top5_errors(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """Items whose target is not among the 5 largest logits (timm's top-5); NaN where that
        does not apply (a language model, a custom loss, fewer than 5 classes)."""
        return math.nan

    def __repr__(self) -> str:
        return self.name


def _integer_targets(targets, shape: tuple, what: str) -> torch.Tensor:
    if not torch.is_tensor(targets):
        try:
            targets = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            raise PathensError(f"targets must be a tensor of {what}, got "
                               f"{type(targets).__name__}") from None
    if tuple(targets.shape) != shape:
        raise PathensError(f"targets must have shape {shape} to match the inputs, "
                           f"got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise PathensError(f"targets must be {what}, got dtype {targets.dtype}")
    return targets.long()


class Classification(Loss):
    name, unit = "classification", "examples"

    def check(self, targets, inputs, num_outputs):
        from .inputs import batch_len, is_tokens, main_tensor
        ids = main_tensor(inputs)
        if (torch.is_tensor(targets) and targets.ndim == 2 and is_tokens(inputs)
                and targets.shape == ids.shape and not targets.is_floating_point()):
            raise PathensError(
                f"targets of shape {tuple(targets.shape)}, the token inputs' own, are next-token "
                f"targets, but the loss is 'classification' ((N,) class indices: the default of "
                f"a model wrapped without a model adapter naming its loss): pass "
                f"loss='next_token' (targets = the inputs, (ids, ids)) or "
                f"loss='next_token_aligned' (targets already shifted), or have the model's "
                f"adapter (pathens.register_model) return ModelParts(..., loss='next_token'); "
                f"per-token classes need loss=fn(logits, targets)")
        targets = _integer_targets(targets, (batch_len(inputs),), "integer class indices")
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_outputs:
            raise PathensError(f"targets range over {lo}..{hi} but the model has {num_outputs} "
                               f"classes (0..{num_outputs - 1})")
        return targets

    def sum(self, logits, targets):
        _expect(logits, 2, "(N, classes) logits", self.name)
        return F.cross_entropy(logits, targets, reduction="sum")

    def stats(self, logits, targets):
        finite = torch.isfinite(logits).all(dim=1)
        errors = int((logits.argmax(dim=1) != targets).sum())
        return errors, float(self.sum(logits, targets)), len(targets), int((~finite).sum())

    def top5_errors(self, logits, targets):
        if logits.ndim != 2 or logits.shape[1] < 5:
            return math.nan
        top = logits.topk(5, dim=1).indices  # (N, 5)
        return int((top != targets[:, None]).all(dim=1).sum())


def perplexity(loss: float) -> float:
    """The perplexity exp(loss) of a mean next-token loss (inf past float range, and for NaN)."""
    return math.exp(loss) if loss < 700 else math.inf


class NextToken(Loss):
    name, unit = "next_token", "tokens"

    def check(self, targets, inputs, num_outputs):
        from .inputs import main_tensor
        ids = main_tensor(inputs)
        if ids.ndim != 2:
            raise PathensError(f"loss='next_token' needs token ids of shape (N, T), got inputs of "
                               f"shape {tuple(ids.shape)}")
        targets = _integer_targets(targets, tuple(ids.shape), "token ids")
        if ids.shape[1] < 2:
            raise PathensError("loss='next_token' needs sequences of at least 2 tokens")
        if _shifted_once(ids, targets):
            raise PathensError(
                "the targets are the inputs shifted by one token (targets[:, t] == inputs[:, "
                "t+1], as nanoGPT's (x, y)), but loss='next_token' shifts the targets itself "
                "(pass the inputs as targets: (ids, ids)); for targets already aligned with the "
                "positions, pass loss='next_token_aligned'")
        valid = targets[targets != IGNORE]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_outputs):
            raise PathensError(f"targets hold token ids {int(valid.min())}..{int(valid.max())} "
                               f"but the model's vocabulary has {num_outputs} (0..{num_outputs - 1})")
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        if mask is not None:  # padding predicts nothing and is never predicted: a target
            pad = mask == 0   # counts only where it and the position before it are tokens
            targets = targets.masked_fill(pad, IGNORE)
            targets[:, 1:] = targets[:, 1:].masked_fill(pad[:, :-1], IGNORE)
        if not (targets[:, 1:] != IGNORE).any():
            raise PathensError("loss='next_token': no token has a target to predict")
        return targets

    def count(self, targets):
        return int((targets[:, 1:] != IGNORE).sum())

    @staticmethod
    def _shift(logits, targets):
        _expect(logits, 3, "(N, T, vocabulary) logits", "next_token")
        return logits[:, :-1], targets[:, 1:]

    def sum(self, logits, targets):
        lg, tg = self._shift(logits, targets)
        return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")

    def stats(self, logits, targets):
        lg, tg = self._shift(logits, targets)
        valid = tg != IGNORE
        errors = int(((lg.argmax(dim=-1) != tg) & valid).sum())
        nonfinite = int((~torch.isfinite(lg).all(dim=-1) & valid).sum())
        return errors, float(self.sum(logits, targets)), int(valid.sum()), nonfinite


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a == b wherever a is not IGNORE, and a holds some target."""
    valid = a != IGNORE
    return bool(valid.any()) and bool(((a == b.to(a.device)) | ~valid).all())


def _shifted_once(ids: torch.Tensor, targets: torch.Tensor) -> bool:
    """True when every row of targets is its row of ids shifted left by one token
    (targets[:, t] == ids[:, t+1]) and targets are not ids themselves (a row of one repeated
    token is both: ambiguous, and not refused)."""
    return _agree(targets[:, :-1], ids[:, 1:]) and not _agree(targets, ids)


class NextTokenAligned(NextToken):
    """loss="next_token_aligned": the next-token loss with targets already aligned with the
    logits, as nanoGPT-style code makes (x, y) with y = x shifted by one: position t predicts
    targets[:, t], nothing is shifted. Items are the targets that are not IGNORE (with an
    attention mask: at positions that are tokens and whose next position is one too); the last
    position's target lies beyond the window, so every position counts (T items per row where
    loss="next_token" on (x, x) counts T - 1)."""

    name, unit = "next_token_aligned", "tokens"

    def check(self, targets, inputs, num_outputs):
        from .inputs import main_tensor
        ids = main_tensor(inputs)
        if ids.ndim != 2:
            raise PathensError(f"loss='next_token_aligned' needs token ids of shape (N, T), got "
                               f"inputs of shape {tuple(ids.shape)}")
        targets = _integer_targets(targets, tuple(ids.shape), "token ids")
        if _agree(targets, ids) and not _agree(targets[:, :-1], ids[:, 1:]):
            raise PathensError(
                "the targets are the inputs themselves, but loss='next_token_aligned' takes "
                "targets already shifted (targets[:, t] == inputs[:, t+1]): each position would "
                "predict its own token; for (ids, ids) pass loss='next_token', which shifts them")
        valid = targets[targets != IGNORE]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_outputs):
            raise PathensError(f"targets hold token ids {int(valid.min())}..{int(valid.max())} "
                               f"but the model's vocabulary has {num_outputs} (0..{num_outputs - 1})")
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        if mask is not None:  # padding predicts nothing, and a token followed by padding has
            pad = mask == 0   # no next token
            targets = targets.masked_fill(pad, IGNORE)
            targets[:, :-1] = targets[:, :-1].masked_fill(pad[:, 1:], IGNORE)
        if not (targets != IGNORE).any():
            raise PathensError("loss='next_token_aligned': no token has a target to predict")
        return targets

    def count(self, targets):
        return int((targets != IGNORE).sum())

    @staticmethod
    def _shift(logits, targets):
        _expect(logits, 3, "(N, T, vocabulary) logits", "next_token_aligned")
        return logits, targets


class CallableLoss(Loss):
    unit = "examples"

    def __init__(self, fn: Callable):
        self.fn, self.name = fn, getattr(fn, "__name__", "custom loss")

    def check(self, targets, inputs, num_outputs):
        from .inputs import batch_len
        if torch.is_tensor(targets) and len(targets) != batch_len(inputs):
            raise PathensError(f"targets hold {len(targets)} examples, the inputs "
                               f"{batch_len(inputs)}")
        return targets

    def sum(self, logits, targets):
        value = self.fn(logits, targets)
        if not torch.is_tensor(value) or value.numel() != 1:
            raise PathensError(f"the loss {self.name} must return a scalar tensor (the mean over "
                               f"the batch), got {type(value).__name__}")
        return value.reshape(()) * len(logits)

    def stats(self, logits, targets):
        finite = torch.isfinite(logits.reshape(len(logits), -1)).all(dim=1)
        return math.nan, float(self.sum(logits, targets)), len(logits), int((~finite).sum())


def _expect(logits, ndim, what, name):
    if logits.ndim != ndim:
        raise PathensError(f"loss={name!r} needs {what}, but the model gives logits of shape "
                           f"{tuple(logits.shape)}" + ("; for a language model use "
                                                       "loss='next_token'" if logits.ndim == 3
                                                       else ""))


LOSSES = {"classification": Classification, "next_token": NextToken,
          "next_token_aligned": NextTokenAligned}


def get_loss(spec: Union[str, Callable, Loss, None], default: str = "classification") -> Loss:
    """A Loss from its name, a callable, or None (the view's default)."""
    if spec is None:
        spec = default
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str):
        if spec not in LOSSES:
            raise PathensError(f"unknown loss {spec!r}: choose {', '.join(map(repr, LOSSES))} "
                               f"or pass a function fn(logits, targets) -> mean loss")
        return LOSSES[spec]()
    if callable(spec):
        return CallableLoss(spec)
    raise PathensError(f"loss must be a name ({', '.join(LOSSES)}) or a function, got "
                       f"{type(spec).__name__}")
