"""The demo: how normalisation shapes the gradient's path-length mix, at initialisation.

Three CIFAR ResNets of the same depth, freshly initialised: BatchNorm (running statistics
calibrated on the inputs, i.e. BN as it acts during training), SkipInit (alpha = 0.5) and no
normalisation. For each, the exact decomposition of the input gradient by path length, next
to the analytic path-length distribution of DESIGN.md for that architecture (BN variance
model, Binomial(n, alpha^2/(1+alpha^2)), Binomial(n, 1/2)). Inputs are Gaussian images with
random labels: at initialisation nothing has been learnt, so no dataset is needed.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__, paths
from .gradients import path_gradients
from .models import cifar_resnet
from .modes import recalibrate_batchnorm
from .outputs import write_text
from .view import wrap

ALPHA = 0.5


def run_demo(out: Path, *, depth: int = 56, batch: int = 32, samples: int = 10, seed: int = 0,
             progress: bool = True, log=print) -> dict:
    """Run the demo, write its files into `out` (which must exist), return the summary."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    specs = {  # label -> (model arguments, analytic distribution over lengths for n blocks)
        "BatchNorm": (dict(norm="bn"), paths.bn_variance_distribution),
        f"SkipInit a={ALPHA}": (dict(norm="skipinit", alpha_init=ALPHA),
                                lambda n: paths.skipinit_distribution(n, ALPHA)),
        "no normalisation": (dict(norm="none"), paths.binomial_distribution),
    }
    results, overlays, summary, views = {}, {}, {}, {}
    for label, (kwargs, analytic) in specs.items():
        torch.manual_seed(seed)
        model = cifar_resnet(depth, **kwargs)
        if kwargs["norm"] == "bn":
            recalibrate_batchnorm(model, x)
        view = views[label] = wrap(model)
        start = time.perf_counter()
        res = path_gradients(view, x, y, progress=progress)
        seconds = time.perf_counter() - start
        slug = label.split()[0].lower().replace("=", "")
        write_text(out / f"{slug}_exact.csv", res.to_csv())
        write_text(out / f"{slug}_exact.json", res.to_json())
        dist = analytic(view.num_blocks)
        energy = res.total ** 2 / (res.total ** 2).sum()
        results[label], overlays[f"{label}: analytic"] = res, dist
        summary[label] = dict(
            model=model.config, blocks=view.num_blocks, seconds=round(seconds, 2),
            mean_length_energy=float((energy * res.lengths).sum()),
            mode_length_energy=int(np.argmax(energy)),
            mean_length_analytic=float(paths.distribution_mean(dist)),
            residual_vs_autograd=res.residual)
        log(f"{label:<18} n={view.num_blocks}  gradient-energy mean length "
            f"{summary[label]['mean_length_energy']:5.2f} (analytic model "
            f"{summary[label]['mean_length_analytic']:5.2f}), mode "
            f"{summary[label]['mode_length_energy']}, exact sweep {seconds:.1f}s")
    if samples:  # Veit's sampled protocol beside the exact sweep, on the BN network
        label = "BatchNorm"
        sampled = path_gradients(views[label], x, y, method="sampled", samples_per_length=samples,
                                 seed=seed, progress=progress)
        write_text(out / "batchnorm_sampled.csv", sampled.to_csv())
        write_text(out / "batchnorm_sampled.json", sampled.to_json())
        summary[label]["sampled_samples_per_length"] = samples
        results[f"{label} "] = sampled
    _figure(out, results, overlays)
    config = dict(depth=depth, batch=batch, samples_per_length=samples, seed=seed,
                  inputs="Gaussian N(0, 1) images 3x32x32, uniform random labels",
                  pathens=__version__, torch=torch.__version__, python=platform.python_version())
    write_text(out / "summary.json", json.dumps(dict(config=config, models=summary), indent=2))
    return summary


def _figure(out: Path, results: dict, overlays: dict) -> None:
    import matplotlib.pyplot as plt

    from .plots import plot_gradient_by_length, plot_per_path

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    exact = {k: v for k, v in results.items() if v.method == "exact"}
    plot_gradient_by_length(exact, ax=a, overlays=overlays)
    plot_per_path(results, ax=b)  # the sampled result only
    a.set_title("gradient by path length at initialisation (exact)")
    b.set_title("one path's gradient vs its length (BatchNorm, sampled)")
    fig.savefig(out / "gradient_by_length.png", dpi=120)
    plt.close(fig)
