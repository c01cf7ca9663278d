"""The `pathens` command line: argparse subcommands over the library (commands.py runs them).

Exit codes: 0 success, 2 user error (one line on stderr, no traceback), 1 internal error.
"""
from __future__ import annotations

import argparse
import sys

from .errors import PathensError

EPILOG = "Exit codes: 0 success, 2 bad input (a one-line message), 1 internal error."


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        check_values(args)
        return args.run(args) or 0
    except (PathensError, FileNotFoundError) as err:
        print(f"pathens: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = (" (re-run with --resume to continue its lesion sweeps)"
                 if hasattr(args, "resume") else "")
        print(f"pathens: interrupted; files already written are complete{again}", file=sys.stderr)
        return 130


# flag -> (test, what a value must be). Checked before any work, so that a bad value costs
# no training or sweep first; each command checks the flags it has.
_VALUES = {
    "margin": (lambda v: 0 <= v < 1, "an error increase in [0, 1), e.g. 0.02"),
    "samples": (lambda v: v >= 0, "a non-negative integer (paths per length)"),
    "trials": (lambda v: v >= 1, "a positive integer"),
    "ks": (lambda v: v >= 0, "non-negative integers (numbers of blocks)"),
    "swaps": (lambda v: v >= 0, "non-negative integers (numbers of swaps)"),
    "limit": (lambda v: v >= 1, "a positive integer (a number of examples)"),
    "gradient_examples": (lambda v: v >= 1, "a positive integer"),
    "recalibrate": (lambda v: v >= 0, "a non-negative integer (0: no recalibration)"),
    "tol": (lambda v: 0 <= v < 1, "a tolerance in [0, 1), e.g. 1e-6"),
}


def check_values(args) -> None:
    """A one-line PathensError for the first flag value out of its range."""
    for name, (ok, what) in _VALUES.items():
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [] if value is None else [value]:
            if not ok(v):  # NaN fails every test
                raise PathensError(f"--{name.replace('_', '-')} must be {what}, got {v}")


def parser() -> argparse.ArgumentParser:
    from . import commands as c

    p = argparse.ArgumentParser(
        prog="pathens", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Residual networks as ensembles of paths (Veit et al. 2016): how much "
                    "gradient flows through paths of each length (exactly), what deleting and "
                    "reordering blocks costs, and the effective depth under BatchNorm and "
                    "SkipInit (De & Smith 2020).\n\nStart with `pathens demo`.")
    sub = p.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name, help, description, run):
        s = sub.add_parser(name, help=help, description=description, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.set_defaults(run=run, command=name)
        return s

    s = command("demo", "BN vs SkipInit ResNets (depths 56, 110) on the bundled digits: full report",
                "Trains (or takes the bundled checkpoints of) BatchNorm and SkipInit CIFAR "
                "ResNets of depths 56 and 110 on scikit-learn's 8x8 digits, runs the full "
                "analysis on each and writes a comparison report.", c.demo)
    s.add_argument("--retrain", action="store_true",
                   help="train the four networks here instead of using the bundled checkpoints")
    s.add_argument("--quick", action="store_true", help="smaller sweeps (for a first look)")
    _common(s, "pathens-demo")

    s = command("analyze", "everything about one checkpoint: gradients, lesions, variance, report",
                "Exact and sampled gradient by path length, single / random / reorder lesions, "
                "branch variance and effective depth, with figures and report.md. Lesion rows "
                "are written as they finish; --resume continues an interrupted analysis.",
                c.analyze)
    _model_args(s)
    _data_args(s)
    _analysis_args(s)
    _common(s, "pathens-analysis", resume=True)

    s = command("compare", "several checkpoints side by side (e.g. BN vs SkipInit)",
                "Runs `analyze` on each checkpoint and writes one report comparing them; "
                "--resume continues an interrupted comparison.", c.compare)
    s.add_argument("checkpoints", nargs="+", help="checkpoint files (pathens or --arch)")
    _arch_args(s)
    _data_args(s)
    _analysis_args(s)
    _common(s, "pathens-compare", resume=True)

    s = command("gradients", "gradient by path length of a checkpoint",
                "Gradient of the mean cross-entropy at the first block's input, split by path "
                "length: exactly (one backward sweep) or by Veit's sampled protocol.", c.gradients)
    _model_args(s)
    _data_args(s, limit=256)
    s.add_argument("--method", choices=["exact", "sampled"], default="exact")
    s.add_argument("--tol", type=float, default=0.0, help="exact: truncation tolerance (e.g. 1e-6)")
    s.add_argument("--samples", type=int, default=100, help="sampled: paths per length")
    _common(s, "pathens-gradients")

    s = command("lesion", "delete each block, then k random blocks",
                "Veit et al.'s lesion study: error with each block's branch deleted, and with k "
                "random (non-downsampling) blocks deleted, several trials per k. Rows are "
                "written as they finish; --resume continues an interrupted sweep.", c.lesion)
    _model_args(s)
    _data_args(s)
    s.add_argument("--ks", type=int, nargs="+", help="numbers of blocks to delete (default 1, 2, 4, ...)")
    s.add_argument("--trials", type=int, default=10, help="random draws per k (default 10)")
    s.add_argument("--recalibrate", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics per condition on N training examples")
    _common(s, "pathens-lesion", resume=True)

    s = command("reorder", "swap random pairs of same-shape blocks",
                "Veit et al.'s reordering study: error against the Kendall tau between the "
                "original and the new block order.", c.reorder)
    _model_args(s)
    _data_args(s)
    s.add_argument("--swaps", type=int, nargs="+", help="numbers of swaps (default 1, 2, 4, ...)")
    s.add_argument("--trials", type=int, default=10)
    _common(s, "pathens-reorder", resume=True)

    s = command("paths", "path counts and analytic path-length distributions (CSV)",
                "For n residual blocks: the number of paths of each length and the share of "
                "each length under the analytic models (Binomial(n, 1/2); BN variance model; "
                "SkipInit with alpha).", c.paths_table)
    s.add_argument("n", type=int, help="number of residual blocks (ResNet-110: 54)")
    s.add_argument("--alpha", type=float, default=None, help="SkipInit scale for its column")
    s.add_argument("--enumerate", action="store_true", help="list every path (n <= 20)")
    s.add_argument("--out", help="write the table to this file instead of printing it")
    s.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    s.add_argument("--quiet", action="store_true", help="with --out: no message")

    s = command("train", "train a CIFAR ResNet and save a checkpoint with its metadata",
                "SGD with momentum, cosine schedule (optional warm-up), weight decay and the "
                "dataset's standard augmentation. The checkpoint records the architecture, "
                "data, seed, epochs and accuracy, so that every other command needs no --arch.",
                c.train)
    s.add_argument("--depth", type=int, default=56, help="6n+2 (default 56)")
    s.add_argument("--norm", choices=["bn", "skipinit", "none"], default="bn")
    s.add_argument("--shortcut", choices=["A", "B"], default="A")
    s.add_argument("--preact", action="store_true", help="pre-activation blocks")
    s.add_argument("--plain", action="store_true", help="no shortcuts (a plain network)")
    s.add_argument("--width", type=int, default=16)
    s.add_argument("--alpha-init", type=float, default=0.0, help="SkipInit's initial alpha")
    _data_args(s, split=False)
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--lr", type=float, default=0.1)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--weight-decay", type=float, default=5e-4)
    s.add_argument("--warmup", type=float, default=0.0, help="warm-up epochs")
    s.add_argument("--clip", type=float, default=None, help="clip the gradient norm to this")
    s.add_argument("--out", required=True, help="checkpoint file to write")
    s.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    return p


_ARCH_HELP = """\
A pathens checkpoint records its architecture; a bare state dict needs --arch:
  resnetD      the pathens CIFAR ResNet of depth D = 6n+2 (20, 32, 44, 56, 110, ...); by
               default BatchNorm with option-A shortcuts, the layout of the akamaster
               checkpoints. The flags below (named as in `pathens train`) describe others,
               e.g. --arch resnet56 --norm skipinit --shortcut B --preact. Sizes not given
               are read from the weights.
  torchvision.resnet18 / resnet50 / ...
               takes its number of classes from the checkpoint's fc.weight."""


def _model_args(s) -> None:
    s.add_argument("checkpoint", help="a checkpoint file (read with weights_only=True)")
    _arch_args(s)


def _arch_args(s) -> None:
    g = s.add_argument_group("third-party checkpoints", _ARCH_HELP)
    g.add_argument("--arch", help="resnetD or torchvision.resnetXX (see above)")
    g.add_argument("--norm", choices=["bn", "skipinit", "none"], help="resnetD: default bn")
    g.add_argument("--shortcut", choices=["A", "B"],
                   help="resnetD: A zero-pad (default) or B projection where the shape changes")
    g.add_argument("--preact", action="store_true", help="resnetD: pre-activation blocks")
    g.add_argument("--plain", action="store_true", help="resnetD: no shortcuts (a plain network)")
    g.add_argument("--width", type=int, help="resnetD: channels of the first stage "
                                             "(default: from conv1.weight, else 16)")
    g.add_argument("--num-classes", type=int, help="default: from the checkpoint's last layer "
                                                   "(linear.weight or fc.weight)")
    g.add_argument("--in-channels", type=int, help="resnetD: input channels (default: from "
                                                   "conv1.weight, else 3)")


def _data_args(s, limit=None, split=True) -> None:
    s.add_argument("--data", help="digits, cifar10, mnist, fashion-mnist, or an .npz file "
                                  "(default: the checkpoint's own dataset)")
    s.add_argument("--root", help="folder (or .npz file) holding the dataset's files")
    if split:
        s.add_argument("--split", choices=["test", "train"], default="test")
    s.add_argument("--limit", type=int, default=limit, help="use the first N examples")
    s.add_argument("--normalize", help="normalisation preset (default: the checkpoint's or "
                                       "the dataset's): imagenet, cifar10, mnist, digits, none")


def _analysis_args(s) -> None:
    s.add_argument("--samples", type=int, default=20,
                   help="Veit's sampled protocol: paths per length (0: skip)")
    s.add_argument("--trials", type=int, default=5, help="trials per k for random lesions")
    s.add_argument("--gradient-examples", type=int, default=128)
    s.add_argument("--margin", type=float, default=0.02,
                   help="lesion-based effective depth: allowed error increase (default 0.02)")


def _common(s, default_out: str, resume: bool = False) -> None:
    s.add_argument("--out", default=default_out, help=f"output folder (default ./{default_out})")
    s.add_argument("--force", action="store_true", help="overwrite the output folder's results")
    if resume:
        s.add_argument("--resume", action="store_true",
                       help="continue the run in --out (same command and settings): finished "
                            "lesion rows are kept, the rest is computed")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.add_argument("--quiet", action="store_true", help="no progress bars or messages")


if __name__ == "__main__":
    sys.exit(main())
