"""Small float64 networks for oracle tests: every architecture variant, with non-trivial
BatchNorm statistics and SkipInit scales so that no factor of a Jacobian is the identity."""
from __future__ import annotations

import torch

import pathens

# (name, cifar_resnet keyword arguments)
VARIANTS = [
    ("post-A-bn", dict(preact=False, shortcut="A", norm="bn")),
    ("post-B-bn", dict(preact=False, shortcut="B", norm="bn")),
    ("pre-A-bn", dict(preact=True, shortcut="A", norm="bn")),
    ("pre-B-bn", dict(preact=True, shortcut="B", norm="bn")),
    ("post-A-skipinit", dict(preact=False, shortcut="A", norm="skipinit")),
    ("pre-B-skipinit", dict(preact=True, shortcut="B", norm="skipinit")),
    ("post-B-none", dict(preact=False, shortcut="B", norm="none")),
    ("pre-A-none", dict(preact=True, shortcut="A", norm="none")),
]


def small_resnet(depth: int = 20, *, seed: int = 0, width: int = 4, **kwargs):
    """A float64 CIFAR ResNet with random BN statistics/affines and SkipInit alphas in
    [0.3, 0.9], in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = randomize_bn(pathens.cifar_resnet(depth, width=width, **kwargs).double(), generator=g)
    with torch.no_grad():
        for b in model.modules():
            if getattr(b, "alpha", None) is not None:
                b.alpha.copy_(0.3 + 0.6 * torch.rand((), generator=g))
    return model


def randomize_bn(model, seed: int = 0, generator=None):
    """The model in eval mode with random BatchNorm statistics and affines (every BatchNorm2d
    subclass too: timm's BatchNormAct2d): initialisation leaves them 0 / 1, which would make a
    Jacobian factor the identity, and which a loader that skipped buffers would reproduce.
    generator: draw from it (and leave it advanced) instead of a new one seeded with seed."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def batch(n: int = 4, *, size: int = 8, channels: int = 3, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g)
