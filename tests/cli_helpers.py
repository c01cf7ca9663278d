"""What the command-line tests share: running `pathens.cli.main`, checking a refusal, a folder's
contents, and small checkpoints made without training (instant; their errors are near chance,
which is all a test of the command line needs)."""
from __future__ import annotations

import torch

import pathens
from pathens.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv, match, code=2):
    """Runs argv, checks the exit code (2: bad input) with a one-line message containing
    match; returns the message."""
    got, _, err = run(capsys, *argv)
    assert got == code and err.count("\n") == 1 and err.startswith("pathens: error: "), err
    assert match in err, err
    return err


def snapshot(folder):
    """Every file under folder and its bytes (the lock file aside: its holder's details)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".pathens.lock"}


def checkpoint(path, depth: int = 8, seed: int = 0, **kw):
    """An untrained pathens CIFAR ResNet of width 4 for the 8x8 digits (1 channel)."""
    torch.manual_seed(seed)
    model = pathens.cifar_resnet(depth, width=4, in_channels=1, num_classes=10, **kw)
    return pathens.save_checkpoint(path, model, dataset="digits", seed=seed, epochs=0,
                                   accuracy=None)
