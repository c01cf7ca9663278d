"""Training a language model on a token stream: AdamW with a linear warm-up and a cosine decay,
gradient clipping, one seed for everything, evaluation on held-out windows (mean next-token
loss, perplexity, top-1 accuracy), and checkpoints that carry what produced them.

    corpus = pathens.text.load_corpus()                      # the Python stdlib, bytes
    model = pathens.transformer.gpt(depth=6, width=64, heads=4, context=64, norm="rezero")
    result = train_lm(model, corpus.train, steps=2000, eval_data=corpus.windows("test", seq_len=64))
    save_lm_checkpoint("gpt.pt", model, result, data=corpus.description, command="...")

Each step draws batch_size windows of seq_len tokens at random offsets of the training stream
(nanoGPT's sampling: every offset is a training example). Weight decay applies to weight
matrices and embeddings only: not to biases, LayerNorm parameters or ReZero's alphas (every
parameter with fewer than 2 dimensions, as in pathens.train), since decaying alpha would pull
the branches back to zero.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import checks
from .checkpoints import save_checkpoint
from ..errors import PathensError
from ..data.losses import NextToken
from .modes import eval_mode
from ..results import Result
from .train import param_groups, check_device


@dataclass(frozen=True)
class LMTrainResult(Result):
    """What a language-model training run did.

    curve:   the training loss (mean next-token cross-entropy of the step's batch) at every
             step, with its learning rate: dicts step (1-based), lr, loss.
    history: one dict per evaluation (every eval_every steps and after the last): step, lr,
             train_loss (mean of the steps since the last evaluation), test_loss,
             test_perplexity, test_accuracy (top-1 next token), seconds (since the start).
    loss, perplexity, accuracy: on eval_data after the last step (None without it).
    """

    curve: list
    history: list
    loss: float | None
    perplexity: float | None
    accuracy: float | None
    seconds: float
    config: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        return list(self.history)

    def __repr__(self) -> str:
        test = "n/a" if self.loss is None else f"{self.loss:.4f} (perplexity {self.perplexity:.2f})"
        return f"LMTrainResult({len(self.curve)} steps, test loss {test}, {self.seconds:.1f} s)"


def _ids(data, what):
    ids = data[0] if isinstance(data, (tuple, list)) and data else data
    if not torch.is_tensor(ids) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise PathensError(f"{what} must be token ids (an integer tensor), or an (ids, ids) pair, "
                           f"got {type(ids).__name__}")
    return ids.long()


def random_windows(tokens: torch.Tensor, batch_size: int, seq_len: int,
                   generator: torch.Generator) -> torch.Tensor:
    """(batch_size, seq_len) windows of the 1-d stream `tokens` at uniformly random offsets."""
    start = torch.randint(0, len(tokens) - seq_len + 1, (batch_size,), generator=generator)
    return tokens[start[:, None] + torch.arange(seq_len)]


@torch.no_grad()
def evaluate_lm(model: nn.Module, data, *, batch_size: int = 64, device="cpu") -> dict:
    """Mean next-token loss (over every predicted token), perplexity (its exp) and top-1
    accuracy of `model` on windows data = ids (N, T) or (ids, ids), in eval mode; the same
    definitions as pathens.lesion's rows for loss="next_token"."""
    ids = _ids(data, "eval_data")
    if ids.ndim != 2 or ids.shape[1] < 2 or len(ids) == 0:
        raise PathensError(f"eval_data must be (N, T) token ids with N >= 1, T >= 2, got shape "
                           f"{tuple(ids.shape)}")
    loss, errors, tokens = 0.0, 0, 0
    with eval_mode(model):
        for start in range(0, len(ids), batch_size):
            batch = ids[start:start + batch_size].to(device)
            e, s, n, _ = NextToken().stats(model(batch), batch)
            loss, errors, tokens = loss + s, errors + e, tokens + n
    mean = loss / tokens
    return dict(loss=mean, perplexity=math.exp(mean), accuracy=1 - errors / tokens, tokens=tokens)


def train_lm(model: nn.Module, train_tokens: torch.Tensor, *, steps: int, batch_size: int = 32,
             seq_len: int | None = None, lr: float = 1e-3, min_lr: float | None = None,
             warmup_steps: int = 100, weight_decay: float = 0.1, betas=(0.9, 0.95),
             clip_grad_norm: float | None = 1.0, seed: int = 0, device="cpu", eval_data=None,
             eval_every: int | None = None, eval_batch_size: int = 64, progress: bool = True,
             log=None) -> LMTrainResult:
    """Train a language model in place on the 1-d token stream train_tokens (e.g.
    pathens.text.load_corpus().train) with AdamW, next-token cross-entropy.

    seq_len: window length (default: the model's context, model.config["context"]).
    lr: the peak learning rate, reached linearly over warmup_steps, then a cosine to min_lr
    (default lr / 10) at the last step. clip_grad_norm: the gradient's global norm is clipped
    to it before each step (None: no clipping). seed: torch.manual_seed(seed), and a
    torch.Generator seeded with it draws the windows: a run is reproducible on one machine.
    eval_data: (ids, ids) or ids (N, T) windows evaluated every eval_every steps (None: only
    after the last) and at the end. log: called with one line per evaluation. The model ends
    in eval mode, on `device`. Raises PathensError if the loss becomes NaN or infinite.
    """
    steps = checks.integer("steps", steps, least=1)
    batch_size = checks.positive("batch_size", batch_size)
    warmup_steps = checks.non_negative("warmup_steps", warmup_steps)
    checks.number("lr", lr, low=0, open_low=True)
    min_lr = lr / 10 if min_lr is None else min_lr
    checks.number("min_lr", min_lr, low=0)
    checks.number("weight_decay", weight_decay, low=0)
    if clip_grad_norm is not None:
        checks.number("clip_grad_norm", clip_grad_norm, low=0, open_low=True,
                      hint="a gradient norm")
    if eval_every is not None:
        checks.positive("eval_every", eval_every)
    seed = checks.seed(seed)
    context = getattr(model, "config", {}).get("context")
    seq_len = context if seq_len is None else seq_len
    if seq_len is None:
        raise PathensError("seq_len is needed: the model has no config['context'] to default to")
    seq_len = checks.seq_len(seq_len)
    tokens = _ids(train_tokens, "train_tokens").flatten()
    if len(tokens) < seq_len:
        raise PathensError(f"the training stream holds {len(tokens)} tokens, fewer than one window "
                           f"of {seq_len}")
    device = check_device(device)
    config = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, min_lr=min_lr,
                  warmup_steps=warmup_steps, weight_decay=weight_decay, betas=list(betas),
                  clip_grad_norm=clip_grad_norm, seed=seed, device=str(device),
                  optimizer="AdamW", schedule="linear warm-up, cosine to min_lr",
                  train_tokens=len(tokens), eval_every=eval_every)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas))
    decay_steps = max(1, steps - warmup_steps)

    def lr_at(step):  # step = 1, 2, ..., steps
        if step <= warmup_steps:
            return lr * step / warmup_steps
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (step - warmup_steps) / decay_steps))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="train", unit="step", leave=False)
    curve, history, start, since = [], [], time.perf_counter(), []
    test = None
    try:
        model.train()
        for step in range(1, steps + 1):
            ids = random_windows(tokens, batch_size, seq_len, generator).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            logits = model(ids)  # (B, T, V): position t predicts token t + 1
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            if not torch.isfinite(loss):
                raise PathensError(f"training diverged at step {step} (loss {loss.item()}): lower lr "
                                   f"(now {lr}) or lengthen the warm-up (now {warmup_steps} steps)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            curve.append(dict(step=step, lr=lr_at(step), loss=loss.item()))
            since.append(curve[-1]["loss"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            if step == steps or (eval_every and step % eval_every == 0):
                row = dict(step=step, lr=lr_at(step), train_loss=sum(since) / len(since),
                           test_loss=None, test_perplexity=None, test_accuracy=None)
                if eval_data is not None:
                    test = evaluate_lm(model, eval_data, batch_size=eval_batch_size, device=device)
                    row.update(test_loss=test["loss"], test_perplexity=test["perplexity"],
                               test_accuracy=test["accuracy"])
                    model.train()
                row["seconds"] = time.perf_counter() - start
                history.append(row)
                since = []
                if log is not None:
                    ev = "" if test is None else (f", test loss {row['test_loss']:.4f} (perplexity "
                                                  f"{row['test_perplexity']:.2f})")
                    log(f"step {step}/{steps}: lr {row['lr']:.3g}, train loss "
                        f"{row['train_loss']:.4f}{ev}, {row['seconds']:.1f} s")
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    return LMTrainResult(curve, history, None if test is None else test["loss"],
                         None if test is None else test["perplexity"],
                         None if test is None else test["accuracy"],
                         time.perf_counter() - start, config)


def save_lm_checkpoint(path, model, result: LMTrainResult, *, data: dict, command: str = "",
                       dataset: str = "text", extra: dict | None = None):
    """save_checkpoint for a trained language model: its architecture, the data's description
    (data, e.g. Corpus.description), the seed and steps, the test loss and accuracy, and in
    its "extra" the training configuration, perplexity, time, the command that ran it and
    anything in `extra` (plain values, e.g. the loss curve)."""
    c = result.config
    return save_checkpoint(path, model, dataset=dataset, data=data, seed=c["seed"],
                           steps=c["steps"], loss=result.loss, accuracy=result.accuracy,
                           extra=dict(command=command, train=c, perplexity=result.perplexity,
                                      seconds=round(result.seconds, 1), **(extra or {})))
