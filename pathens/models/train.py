"""Training a network on in-memory tensors: SGD with momentum, a cosine learning-rate schedule
with an optional linear warm-up, weight decay, standard augmentation, one seed for everything.

    model = pathens.cifar_resnet(110, norm="skipinit", width=8, in_channels=1)
    result = train(model, load_dataset("digits", split="train"), epochs=10, batch_size=64,
                   warmup_epochs=2, clip_grad_norm=1.0, augment="shift",
                   eval_data=load_dataset("digits"))
    save_checkpoint("resnet110.pt", model, dataset="digits", seed=0, epochs=10,
                    accuracy=result.accuracy)

That recipe (lr 0.1, 2 warm-up epochs, gradient norm clipped to 1) trains BN and SkipInit
ResNet-56 and -110 of width 8 on digits to 93-97% test accuracy. Without the clipping, lr 0.1
collapsed SkipInit-110 to chance (loss stuck at ln 10) for some seeds and left BN-110 at 18-53%.

Weight decay applies to conv and linear weights only: not to biases, BatchNorm scales/shifts or
SkipInit's alpha (every parameter with fewer than 2 dimensions). Decaying alpha would pull the
residual branches back towards zero, and decaying BN parameters is known to be unhelpful.
Fixup networks (norm="fixup") train those parameters (their scalar biases and multipliers, the
classifier's bias) at a tenth of the learning rate, as Zhang et al.'s code does.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from .checkpoints import load, save_checkpoint  # noqa: F401 - re-exported: pathens.train.save_checkpoint
from ..errors import PathensError
from .modes import eval_mode


# --- augmentation: batched, on normalised (N, C, H, W) tensors, drawn from one generator ----

def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator, mode: str = "constant") -> torch.Tensor:
    """Pad each image by `pad` pixels and crop it back at a random offset (a random shift of up
    to `pad` pixels). mode "constant" pads with 0, the dataset mean after normalisation (as He
    et al. pad mean-subtracted CIFAR images); "replicate" repeats the edge (the background of
    digit images)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _crop_flip(x, g):  # CIFAR (He et al. 2016): 4-pixel pad + crop, horizontal flip
    return random_flip(random_crop(x, 4, g), g)


def _shift(x, g):  # digits / MNIST: a shift of 1 pixel (8x8) or 2 (28x28); no flips (digits are not symmetric)
    return random_crop(x, 1 if x.shape[-1] <= 16 else 2, g, mode="replicate")


AUGMENTATIONS = {"crop-flip": _crop_flip, "shift": _shift}


def _augmenter(augment):
    if augment is None or callable(augment):
        return augment
    if augment not in AUGMENTATIONS:
        raise PathensError(f"unknown augmentation {augment!r}: choose one of {', '.join(AUGMENTATIONS)} "
                           f"or None (or pass a function (x, generator) -> x)")
    return AUGMENTATIONS[augment]


# --- the result ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainResult:
    """What a training run did. history: one dict per epoch with epoch (1-based), lr (at the
    epoch's last step), train_loss and train_accuracy (mean over the epoch's augmented batches,
    in train mode), eval_loss and eval_accuracy (on eval_data, eval mode; None without it) and
    seconds (since the start). accuracy / loss: on eval_data after the last epoch (None
    without it). seconds: wall-clock time of the whole run. config: the arguments."""
    history: list
    accuracy: float | None
    loss: float | None
    seconds: float
    config: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    def __repr__(self):
        acc = "n/a" if self.accuracy is None else f"{100 * self.accuracy:.2f}%"
        return f"TrainResult({len(self.history)} epochs, eval accuracy {acc}, {self.seconds:.1f} s)"


# --- training -----------------------------------------------------------------------------

def param_groups(model, weight_decay):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": _scalar_lr_scale(model)}]


def _scalar_lr_scale(model) -> float:
    """The learning rate of the parameters with < 2 dims, relative to lr: 0.1 for Fixup."""
    config = getattr(model, "config", None)
    return 0.1 if isinstance(config, dict) and config.get("norm") == "fixup" else 1.0


def _check_data(data, what):
    if not (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        raise PathensError(f"{what} must be a pair (x, y) of tensors, e.g. load_dataset('digits', split='train')")
    x, y = data
    if x.ndim != 4 or y.shape != (len(x),) or len(x) == 0:
        raise PathensError(f"{what}: expected x (N, C, H, W) and y (N,) with N > 0, got x {tuple(x.shape)} "
                           f"and y {tuple(y.shape)}")
    return x, y.long()


def check_device(device) -> torch.device:
    """torch.device(device), or a PathensError if it is not a device name, not available here
    or cannot compute (meta)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PathensError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index is not None and dev.index >= torch.cuda.device_count())):
        raise PathensError(f"device {device!r} is not available on this machine "
                           f"({torch.cuda.device_count()} CUDA devices): use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PathensError(f"device {device!r} is not available on this machine: use --device cpu")
    if dev.type == "meta":  # tensors there have shapes but no values: nothing can be measured
        raise PathensError(f"device {device!r} cannot compute (meta tensors hold no values): "
                           f"use --device cpu or cuda")
    try:  # any other device that cannot run a computation here (no backend, no driver, ...)
        (torch.ones(2, device=dev) * 2).sum().item()
    except Exception as err:  # what each backend raises differs (RuntimeError, NotImplemented...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PathensError(f"device {device!r} cannot compute here ({reason}): use --device "
                           f"cpu") from None
    return dev


@torch.no_grad()
def evaluate(model: nn.Module, data, *, batch_size: int = 512, device="cpu"):
    """(mean cross-entropy loss, accuracy) of model on data = (x, y), in eval mode."""
    x, y = _check_data(data, "eval_data")
    total_loss, correct = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            out = model(xb)
            total_loss += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    return total_loss / len(x), correct / len(x)


def train(model: nn.Module, train_data, *, epochs: int, lr: float = 0.1, momentum: float = 0.9,
          weight_decay: float = 5e-4, batch_size: int = 128, augment=None, warmup_epochs: float = 0.0,
          clip_grad_norm: float | None = None, seed: int = 0, device="cpu", eval_data=None,
          progress: bool = True, log=None) -> TrainResult:
    """Train model in place with SGD (Nesterov off) on train_data = (x (N, C, H, W), y (N,)).

    The learning rate rises linearly from ~0 to lr over warmup_epochs (may be fractional),
    then follows a cosine from lr to 0 at the last step; it is updated every step.
    augment: None, "crop-flip" (CIFAR), "shift" (digits, MNIST) or a function
    (x, generator) -> x applied to each batch. clip_grad_norm: if given, the gradient's global
    norm is clipped to it before each step (steadies deep networks without normalisation).
    seed: torch.manual_seed(seed), and a torch.Generator seeded with it draws the shuffling and
    the augmentation, so a run is reproducible bit for bit on the same machine and device.
    eval_data: evaluated after every epoch. log: a function called with one line per epoch
    (e.g. print). The model ends in eval mode, on `device`. Raises PathensError if the loss becomes NaN or infinite.
    """
    epochs = checks.positive("epochs", epochs)
    batch_size = checks.positive("batch_size", batch_size)
    checks.number("lr", lr, low=0, open_low=True)
    checks.number("momentum", momentum, low=0)
    checks.number("weight_decay", weight_decay, low=0)
    checks.number("warmup_epochs", warmup_epochs, low=0, hint="epochs")
    if clip_grad_norm is not None:
        checks.number("clip_grad_norm", clip_grad_norm, low=0, open_low=True,
                      hint="a gradient norm")
    seed = checks.seed(seed)
    device = check_device(device)
    x, y = _check_data(train_data, "train_data")
    if eval_data is not None:
        _check_data(eval_data, "eval_data")
    aug = _augmenter(augment)
    config = dict(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                  augment=augment if not callable(augment) else getattr(augment, "__name__", "custom"),
                  warmup_epochs=warmup_epochs, clip_grad_norm=clip_grad_norm, seed=seed, device=str(device),
                  train_examples=len(x))
    if _scalar_lr_scale(model) != 1.0:  # Fixup
        config["scalar_lr_scale"] = _scalar_lr_scale(model)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total, warmup = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)

    def lr_at(step):  # step = 1, 2, ..., total
        if step <= warmup:
            return lr * step / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="train", unit="step", leave=False)
    history, start, step = [], time.perf_counter(), 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            loss_sum, correct = 0.0, 0
            for begin in range(0, len(x), batch_size):
                idx = order[begin:begin + batch_size]
                xb, yb = x[idx], y[idx]
                if aug is not None:
                    xb = aug(xb, generator)
                xb, yb = xb.to(device), yb.to(device)
                step += 1
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                if not torch.isfinite(loss):
                    raise PathensError(
                        f"training diverged at epoch {epoch}, step {step} (loss {loss.item()}): lower lr "
                        f"(now {lr}) or add warm-up (warmup_epochs, now {warmup_epochs})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimizer.step()
                loss_sum += loss.item() * len(yb)
                correct += (out.argmax(1) == yb).sum().item()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            row = dict(epoch=epoch, lr=lr_at(step), train_loss=loss_sum / len(x), train_accuracy=correct / len(x),
                       eval_loss=None, eval_accuracy=None)
            if eval_data is not None:
                row["eval_loss"], row["eval_accuracy"] = evaluate(model, eval_data, device=device)
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            if log is not None:
                ev = "" if eval_data is None else \
                    f", eval loss {row['eval_loss']:.4f} accuracy {100 * row['eval_accuracy']:.2f}%"
                log(f"epoch {epoch}/{epochs}: lr {row['lr']:.4g}, train loss {row['train_loss']:.4f} "
                    f"accuracy {100 * row['train_accuracy']:.2f}%{ev}, {row['seconds']:.1f} s")
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    last = history[-1]
    return TrainResult(history=history, accuracy=last["eval_accuracy"], loss=last["eval_loss"],
                       seconds=time.perf_counter() - start, config=config)
