"""The `pathens` command line.

    pathens demo                          BN vs SkipInit vs no normalisation at initialisation
    pathens paths 54                      path counts and analytic length distributions
    pathens gradients CKPT --arch resnet56 --data test.npz
                                          gradient by path length of a trained network

Exit codes: 0 success, 2 user error (one line on stderr, no traceback), 1 internal error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import PathensError

EPILOG = "Exit codes: 0 success, 2 bad input (one-line message), 1 internal error."


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (PathensError, FileNotFoundError) as err:
        print(f"pathens: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pathens: interrupted; files already written are complete", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pathens", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Residual networks as ensembles of paths (Veit et al. 2016): how much "
                    "gradient flows through paths of each length, exactly.")
    sub = p.add_subparsers(title="commands", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="path-length mix of BN, SkipInit and unnormalised ResNets",
                       description="Exact gradient by path length of three freshly initialised "
                                   "CIFAR ResNets (BatchNorm, SkipInit, none) beside the analytic "
                                   "distributions; writes CSV/JSON, a figure and summary.json.",
                       epilog=EPILOG)
    d.add_argument("--depth", type=int, default=56, help="6n+2 layers (default 56: 27 blocks)")
    d.add_argument("--batch", type=int, default=32, help="Gaussian input images (default 32)")
    d.add_argument("--samples", type=int, default=10,
                   help="Veit's sampled protocol: paths per length on the BN net (0: skip)")
    _common(d, default_out="pathens-demo")
    d.set_defaults(run=_demo)

    q = sub.add_parser("paths", help="path counts and analytic path-length distributions",
                       description="For n residual blocks: the number of paths of each length "
                                   "and the share of each length under the analytic models "
                                   "(Binomial(n, 1/2); BN variance model; SkipInit with alpha).",
                       epilog=EPILOG)
    q.add_argument("n", type=int, help="number of residual blocks (ResNet-110: 54)")
    q.add_argument("--alpha", type=float, default=None, help="SkipInit scale for its column")
    q.set_defaults(run=_paths)

    g = sub.add_parser("gradients", help="gradient by path length of a checkpoint",
                       description="Gradient of the mean cross-entropy at the first block's "
                                   "input, split by path length, for a trained checkpoint.",
                       epilog=EPILOG)
    g.add_argument("checkpoint", help="state-dict file (read with weights_only=True)")
    g.add_argument("--arch", required=True,
                   help="resnetD (pathens CIFAR ResNet, D = 20, 32, 44, 56, 110, ...: BN, "
                        "option A, the akamaster layout) or torchvision.resnet18 etc.")
    g.add_argument("--data", required=True,
                   help=".npz with x (N, H, W, C) uint8 and y (N,), e.g. CIFAR-10 test images")
    g.add_argument("--normalize", default="imagenet",
                   help="input normalisation preset: imagenet (akamaster, default), cifar10, none")
    g.add_argument("--limit", type=int, default=256, help="examples used (default 256)")
    g.add_argument("--method", choices=["exact", "sampled"], default="exact")
    g.add_argument("--tol", type=float, default=0.0, help="exact: truncation tolerance")
    g.add_argument("--samples", type=int, default=100, help="sampled: paths per length")
    g.add_argument("--batch-size", type=int, default=128, help="examples per sweep")
    _common(g, default_out="pathens-gradients")
    g.set_defaults(run=_gradients)
    return p


def _common(p, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help=f"output folder (default ./{default_out})")
    p.add_argument("--force", action="store_true", help="overwrite an output folder's results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PathensError(f"unknown device {name!r}: use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PathensError(f"device {name} is not available here (no CUDA): use --device cpu")
    return device


def _demo(args) -> int:
    from .demo import run_demo
    from .outputs import prepare_out
    _device(args.device)
    out = prepare_out(args.out, force=args.force)
    log = (lambda *a: None) if args.quiet else print
    run_demo(out, depth=args.depth, batch=args.batch, samples=args.samples, seed=args.seed,
             progress=not args.quiet, log=log)
    log(f"wrote {out}/ (gradient_by_length.png, summary.json, CSV and JSON per model)")
    return 0


def _paths(args) -> int:
    from . import paths
    n = args.n
    cols = {"paths": paths.path_counts(n), "binomial": paths.binomial_distribution(n),
            "bn_variance": paths.bn_variance_distribution(n)}
    if args.alpha is not None:
        cols[f"skipinit_alpha{args.alpha:g}"] = paths.skipinit_distribution(n, args.alpha)
    print("length," + ",".join(cols))
    for k in range(n + 1):
        print(f"{k}," + ",".join(str(v[k]) if name == "paths" else f"{v[k]:.6g}"
                                 for name, v in cols.items()))
    return 0


def build_arch(name: str) -> torch.nn.Module:
    """A model from an --arch name: resnetD / cifar_resnetD, or torchvision.<resnet name>."""
    from .models import cifar_resnet
    key = name.lower().removeprefix("cifar_")
    if key.startswith("resnet") and key[6:].isdigit():
        try:
            return cifar_resnet(int(key[6:]))
        except ValueError as err:
            raise PathensError(f"--arch {name}: {err}") from None
    if key.startswith(("torchvision.", "tv.")):
        try:
            from torchvision import models as tvm
        except ImportError:
            raise PathensError("torchvision is not installed: pip install torchvision") from None
        arch = key.split(".", 1)[1]
        if not arch.startswith("resnet") and not arch.startswith("wide_resnet") \
                or not hasattr(tvm, arch):
            raise PathensError(f"unknown torchvision ResNet {arch!r}: e.g. torchvision.resnet50")
        return getattr(tvm, arch)(weights=None)
    raise PathensError(f"unknown --arch {name!r}: use resnetD (D = 6n+2, e.g. resnet56) or "
                       f"torchvision.resnet18 / resnet50 / ...")


def _gradients(args) -> int:
    from .checkpoints import load_weights
    from .data import load_npz
    from .gradients import path_gradients
    from .outputs import prepare_out, write_text
    from .view import wrap
    device = _device(args.device)
    if not Path(args.checkpoint).exists():
        raise PathensError(f"checkpoint {args.checkpoint} does not exist: check the path")
    model = load_weights(build_arch(args.arch), args.checkpoint).to(device)
    x, y = load_npz(args.data, normalize=args.normalize, limit=args.limit)
    out = prepare_out(args.out, force=args.force)
    view = wrap(model, example_input=x[:2].to(device))
    res = path_gradients(view, x, y, method=args.method, tol=args.tol,
                         samples_per_length=args.samples, seed=args.seed,
                         batch_size=args.batch_size if args.method == "exact" else None,
                         progress=not args.quiet)
    res.config.update(checkpoint=str(args.checkpoint), arch=args.arch, data=str(args.data),
                      normalize=args.normalize)
    write_text(out / f"gradients_{args.method}.csv", res.to_csv())
    write_text(out / f"gradients_{args.method}.json", res.to_json())
    from .plots import plot_gradient_by_length, plot_per_path
    import matplotlib.pyplot as plt
    sampled = args.method == "sampled"
    fig, axes = plt.subplots(1, 1 + sampled, figsize=(6 + 6 * sampled, 4.5), layout="constrained")
    axes = np.atleast_1d(axes)
    plot_gradient_by_length({args.arch: res}, ax=axes[0], quantity="magnitude")
    if sampled:  # single paths are measured only by the sampled protocol
        plot_per_path({args.arch: res}, ax=axes[1])
    fig.savefig(out / f"gradients_{args.method}.png", dpi=120)
    plt.close(fig)
    if not args.quiet:
        share = res.fraction()
        top = np.argsort(share)[::-1][:5]
        print(f"{view}\nmost gradient at lengths " +
              ", ".join(f"{res.lengths[k]} ({share[k]:.1%})" for k in top) +
              f"\nwrote {out}/gradients_{args.method}.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
