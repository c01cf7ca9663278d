"""The command line's arguments: argparse subcommands over the library (commands.py runs
them), and the checks of every value before anything runs (limits: pathens.checks).

Building the parser imports neither torch nor matplotlib (`pathens --help` is instant): the
commands are named here and looked up in commands.py only to run one.
"""
from __future__ import annotations

import argparse

from .. import checks
from ..errors import PathensError
from ..checks import MAX_CONDITIONS, MAX_ENUMERATE_BLOCKS, MAX_PATHS_BLOCKS, MAX_SAMPLES
from ..version import __version__

EPILOG = ("Exit codes: 0 success, 2 bad input (a one-line message), 1 internal error or a\n"
          "result file that could not be written (a full disk), 130 interrupted.")


# flag -> its check (pathens.checks: the same checker, limit and words as the API argument
# it becomes), called as check(flag, value). Checked before any work, so that a bad value costs
# no training or sweep first; each command checks the flags it has.
_VALUES = {
    "margin": lambda f, v: checks.margin(v, f),
    "samples": lambda f, v: checks.samples(v, f),
    "trials": checks.positive,
    "ks": lambda f, v: checks.lesion_count(v, f),
    "swaps": lambda f, v: checks.lesion_count(v, f),
    "limit": lambda f, v: checks.limit(v, f),
    "gradient_examples": checks.positive,
    "recalibrate": lambda f, v: checks.non_negative(f, v, hint="0: no recalibration"),
    "tol": lambda f, v: checks.tolerance(v, f, kind="a tolerance"),
    "seed": lambda f, v: checks.seed(v, f, what="an integer from 0 to 2^63 - 1"),
    "n": checks.non_negative,
    "alpha": lambda f, v: checks.alpha(v, f),
    "epochs": checks.positive,
    "batch_size": checks.positive,
    "lr": lambda f, v: checks.number(f, v, low=0, open_low=True),
    "weight_decay": lambda f, v: checks.number(f, v, low=0),
    "warmup": lambda f, v: checks.number(f, v, low=0, hint="epochs"),
    "clip": lambda f, v: checks.number(f, v, low=0, open_low=True, hint="a gradient norm"),
    "width": checks.positive,
    "num_classes": checks.positive,
    "in_channels": checks.positive,
    "image_size": lambda f, v: checks.positive(f, v, hint="pixels"),
    "crop_pct": lambda f, v: checks.number(f, v, low=0, high=1, open_low=True,
                                           kind="a fraction", example="0.875"),
    "workers": lambda f, v: checks.non_negative(f, v, hint="0: decode in this process"),
    "seq_len": lambda f, v: checks.seq_len(v, f),
    "depth": lambda f, v: checks.integer(f, v, least=1),
    "steps": lambda f, v: checks.integer(f, v, least=1),
    "warmup_steps": checks.non_negative,
    "heads": checks.positive,
    "context": lambda f, v: checks.integer(f, v, least=2, hint="tokens"),
    "mlp_ratio": checks.positive,
    "dropout": lambda f, v: checks.number(f, v, low=0, high=1, open_high=True),
    "jacobian_examples": lambda f, v: checks.positive(f, v, hint="examples"),
    "jacobian_k": lambda f, v: checks.positive(f, v, hint="singular values at each end"),
    "jacobian_iters": lambda f, v: checks.positive(f, v, hint="products per map"),
    "eps": lambda f, v: checks.number(f, v, low=0, hint="relative to the layer's mean |A|",
                                      example="1e-3"),
    "share": lambda f, v: checks.number(f, v, low=0, high=1, open_low=True, kind="a fraction",
                                        hint="of the samples", example="1"),
    "delta": lambda f, v: checks.number(f, v, low=0, high=1, open_low=True, open_high=True,
                                        hint="pairs with |corr| >= 1 - delta overlap"),
    "variance": lambda f, v: checks.number(f, v, low=0, high=1, open_low=True,
                                           kind="a fraction", hint="of the variance",
                                           example="0.99"),
    "max_examples": lambda f, v: checks.integer(f, v, least=2),
    "hessian_top_k": lambda f, v: checks.non_negative(f, v, hint="0: no eigenvalues"),
    "hessian_probes": lambda f, v: checks.non_negative(f, v, hint="0: no trace"),
    "hessian_slq_probes": lambda f, v: checks.non_negative(f, v, hint="0: no density"),
    "n_remove": lambda f, v: checks.positive(f, v, hint="the number of layers or blocks to "
                                                          "remove"),
}

# The diagnostics (pathens/measure/registry.py, diagnostic=True), for the help: the registry
# checks the names a run asks for (tests/test_diagnose.py checks that these are its names).
DIAGNOSTICS = ("signal", "jacobians", "singularities", "hessian")
# flag (its argparse dest) -> (diagnostic, option): the diagnostics' own options on the command
# line, each passed on only when given (the measurement's defaults otherwise).
DIAGNOSTIC_FLAGS = {
    "jacobian_examples": ("jacobians", "examples"), "jacobian_k": ("jacobians", "k"),
    "jacobian_iters": ("jacobians", "iters"),
    "eps": ("singularities", "eps"), "share": ("singularities", "share"),
    "delta": ("singularities", "delta"), "variance": ("singularities", "variance"),
    "positions": ("singularities", "positions"), "max_examples": ("singularities", "max_examples"),
    "hessian_top_k": ("hessian", "top_k"), "hessian_probes": ("hessian", "trace_probes"),
    "hessian_slq_probes": ("hessian", "density_probes"), "hessian_params": ("hessian", "params"),
}
# where a command's flag means something else
_COMMAND_VALUES = {
    "gradients": {"samples": lambda f, v: checks.paths_per_length(
        v, f, what="at least 2 paths per length")},
}
# flag -> (the most it may be, why): sizes whose work or output could not finish or fit
_LIMITS = {
    "trials": (MAX_CONDITIONS, "lesion conditions, each a pass over the data"),
    "samples": (MAX_SAMPLES, "paths per length, each a backward pass"),
    "n": (MAX_PATHS_BLOCKS, "blocks: the table holds every exact C(n, k), growing as n^2"),
}
_POSITIONAL = ("n",)
_FLAGS = {"n_remove": "--n"}  # dest -> flag, where they differ


def check_values(args) -> None:
    """A one-line PathensError for the first flag value out of its range."""
    rules = {**_VALUES, **_COMMAND_VALUES.get(getattr(args, "command", None), {})}
    for name, check in rules.items():
        value = getattr(args, name, None)
        flag = _FLAGS.get(name) or (name if name in _POSITIONAL else "--" + name.replace("_", "-"))
        for v in value if isinstance(value, list) else [] if value is None else [value]:
            check(flag, v)
            if name in _LIMITS and v > _LIMITS[name][0]:
                most, why = _LIMITS[name]
                raise PathensError(f"{flag} {v} is more than the limit of {most:,} ({why})")
        if isinstance(value, list) and len(set(value)) < len(value):
            twice = next(v for v in value if value.count(v) > 1)
            raise PathensError(f"{flag} lists {twice} twice: each count is measured --trials "
                               f"times already; give it once (more trials: raise --trials)")
    if getattr(args, "enumerate", False) and args.n > MAX_ENUMERATE_BLOCKS:
        raise PathensError(f"--enumerate lists all 2^n paths: n must be at most "
                           f"{MAX_ENUMERATE_BLOCKS} ({2 ** MAX_ENUMERATE_BLOCKS:,} lines), got "
                           f"{args.n}")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every flag's default appended to its help (argparse's
    ArgumentDefaultsHelpFormatter, without the noise of "default: None" and "default:
    False", and not where the help already gives it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS  # not 0
        if action.option_strings and not unset and "default" not in text:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pathens", epilog=EPILOG, formatter_class=_Formatter,
        description="Residual networks as ensembles of paths (Veit et al. 2016): how much "
                    "gradient flows through paths of each length (exactly), what deleting and "
                    "reordering blocks costs, and the effective depth under BatchNorm and "
                    "SkipInit (De & Smith 2020).\n\nStart with `pathens demo`.")
    p.add_argument("--version", action="version", version=f"pathens {__version__}")
    sub = p.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name, help, description, run=None):
        """A subcommand, run by the function commands.<run> (default: its name)."""
        s = sub.add_parser(name, help=help, description=description, epilog=EPILOG,
                           formatter_class=_Formatter)
        s.set_defaults(run=run or name, command=name)
        return s

    s = command("demo", "BN vs SkipInit ResNets (depths 56, 110) on the bundled digits: full report",
                "Trains (or takes the bundled checkpoints of) BatchNorm and SkipInit CIFAR "
                "ResNets of depths 56 and 110 on scikit-learn's 8x8 digits, runs the full "
                "analysis on each and writes a comparison report.")
    s.add_argument("--retrain", action="store_true",
                   help="train the four networks here instead of using the bundled checkpoints")
    s.add_argument("--quick", action="store_true", help="smaller sweeps (for a first look)")
    _common(s, "pathens-demo")

    s = command("analyze", "everything about one checkpoint: gradients, lesions, variance, report",
                "Exact and sampled gradient by path length, single / random / reorder lesions, "
                "branch variance and effective depth, with figures and report.md. Lesion rows "
                "are written as they finish; --resume continues an interrupted analysis.")
    _model_args(s)
    _data_args(s)
    _analysis_args(s)
    _diagnostic_args(s, flag=True)
    _common(s, "pathens-analysis", resume=True)

    s = command("compare", "several checkpoints side by side (e.g. BN vs SkipInit)",
                "Runs `analyze` on each checkpoint and writes one report comparing them; "
                "--resume continues an interrupted comparison.")
    s.add_argument("checkpoints", nargs="+", help="checkpoint files (pathens or --arch)")
    _arch_args(s)
    _data_args(s)
    _analysis_args(s)
    _diagnostic_args(s, flag=True)
    _common(s, "pathens-compare", resume=True)

    s = command("diagnose", "signal propagation, block Jacobians, singularities of checkpoints",
                "The diagnostics alone, on one or several networks side by side (e.g. "
                "BatchNorm, SkipInit, Fixup and plain): signal propagation (Brock et al. 2021: "
                "the stream's channel mean and variance per block, the gradient norm and "
                "Zaeemzadeh et al.'s norm ratio), the extreme singular values of each block's "
                "Jacobian and its branch's, and the singularities of every layer (Orhan & "
                "Pitkow 2018: eliminated, overlapping and linearly dependent units). Plain "
                "networks get each per layer. One report.md with a section per network and "
                "figures comparing them.")
    s.add_argument("checkpoints", nargs="*", help="checkpoint files (pathens or --arch; none "
                                                  "with --model: the model its function builds)")
    s.add_argument("--only", nargs="+", metavar="NAME",
                   help=f"run only these diagnostics ({', '.join(DIAGNOSTICS)}; default: all)")
    _arch_args(s)
    _data_args(s)
    _diagnostic_args(s)
    s.add_argument("--recalibrate", type=int, default=0, metavar="N",
                   help="re-estimate the BatchNorm statistics of the networks that have them on "
                        "N training examples first (e.g. at initialisation, to see the batch "
                        "statistics; 0: keep the stored statistics)")
    _common(s, "pathens-diagnose")

    s = command("gradients", "gradient by path length of a checkpoint",
                "Gradient of the mean cross-entropy at the first block's input, split by path "
                "length: exactly (one backward sweep) or by Veit's sampled protocol.")
    _model_args(s)
    _data_args(s, limit=256)
    s.add_argument("--method", choices=["exact", "sampled"], default="exact",
                   help="exact: the whole decomposition in one backward sweep; sampled: "
                        "Veit's protocol (random single paths of each length)")
    s.add_argument("--tol", type=float, default=0.0, help="exact: truncation tolerance (e.g. 1e-6)")
    s.add_argument("--samples", type=int, default=100, help="sampled: paths per length")
    _common(s, "pathens-gradients")

    s = command("lesion", "delete each block, then k random blocks",
                "Veit et al.'s lesion study: error with each block's branch deleted, and with k "
                "random (non-downsampling) blocks deleted, several trials per k. Rows are "
                "written as they finish; --resume continues an interrupted sweep.")
    _model_args(s)
    _data_args(s)
    s.add_argument("--ks", type=int, nargs="+", help="numbers of blocks to delete (default: 1, "
                                                     "2, 4, ... up to the deletable blocks)")
    s.add_argument("--trials", type=int, default=10, help="random draws per k")
    s.add_argument("--recalibrate", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics per condition on N training examples "
                        "(0: keep the trained statistics)")
    s.add_argument("--calibration-data", metavar="PATH",
                   help="--recalibrate's examples: an .npz or an image folder (the --root "
                        "layout); needed with --data .npz or imagefolder, which have no "
                        "training split (default: the named dataset's train split)")
    _unit_arg(s)
    _common(s, "pathens-lesion", resume=True)

    s = command("reorder", "swap random pairs of same-shape blocks",
                "Veit et al.'s reordering study: error against the Kendall tau between the "
                "original and the new block order.")
    _model_args(s)
    _data_args(s)
    s.add_argument("--swaps", type=int, nargs="+", help="numbers of swaps (default: 1, 2, 4, "
                                                        "... up to the most disjoint swaps)")
    s.add_argument("--trials", type=int, default=10, help="random reorderings per number of swaps")
    _unit_arg(s)
    _common(s, "pathens-reorder", resume=True)

    s = command("importance", "ShortGPT's Block Influence or Gromov et al.'s angular distance",
                "The peers' layer-importance scores alone, forward only: --score bi, ShortGPT's "
                "Block Influence 1 - cos(x_in, x_out) of every layer (Men et al. 2024; the --n "
                "lowest are removed), or --score angular, Gromov et al.'s angular distance "
                "arccos(cos(x_l, x_l+n)) / pi between the inputs of layers l and l+n (2024; the "
                "n layers from the l of smallest distance are removed). Writes the table (CSV, "
                "JSON) and config.json to --out; --export DIR saves the model with those layers "
                "removed (view.pruned).")
    _model_args(s)
    _data_args(s)
    s.add_argument("--score", choices=["bi", "angular"], default="bi",
                   help="bi: Block Influence per layer; angular: angular distance over --n "
                        "consecutive layers")
    s.add_argument("--n", dest="n_remove", type=int, default=1, metavar="N",
                   help="layers (or blocks, --unit block) to remove: the N of lowest BI, or "
                        "the N consecutive ones of smallest angular distance")
    s.add_argument("--unit", choices=["layer", "block"], default="layer",
                   help="what a score is of: each layer (a module with all its blocks, as "
                        "both papers) or each residual block (a transformer's attention and "
                        "MLP sublayers apart)")
    s.add_argument("--positions", choices=["last", "all"],
                   help="angular: the positions a distance is averaged over: each sequence's "
                        "last real token (Gromov et al.'s protocol; the default for a "
                        "language model) or every real position (the default otherwise)")
    s.add_argument("--export", metavar="DIR",
                   help="save the model with the layers to remove removed, in DIR: a Hugging "
                        "Face folder (save_pretrained, with the source's tokenizer files) or a "
                        "pathens checkpoint DIR/model.pt")
    _common(s, "pathens-importance")

    s = command("paths", "path counts and analytic path-length distributions (CSV)",
                "For n residual blocks: the number of paths of each length and the share of "
                "each length under the analytic models (Binomial(n, 1/2); BN variance model; "
                "SkipInit with alpha).", "paths_table")
    s.add_argument("n", type=int, help="number of residual blocks (ResNet-110: 54)")
    s.add_argument("--alpha", type=float, default=None, help="SkipInit scale for its column "
                                                             "(default: no SkipInit column)")
    s.add_argument("--enumerate", action="store_true",
                   help=f"list every path (n <= {MAX_ENUMERATE_BLOCKS})")
    s.add_argument("--out", help="write the table to this file instead of printing it")
    s.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    s.add_argument("--quiet", action="store_true", help="with --out: no message")

    s = command("train", "train a CIFAR ResNet or a small GPT; save a checkpoint with its metadata",
                "--arch resnet (default): a CIFAR ResNet, SGD with momentum, cosine schedule "
                "(optional warm-up), weight decay and the dataset's standard augmentation. "
                "--arch gpt: pathens's decoder-only transformer on --data text, AdamW with "
                "warm-up and cosine decay. The checkpoint records the architecture, data, "
                "seed and test accuracy or loss, so that every other command needs no --arch.")
    s.add_argument("--arch", choices=["resnet", "gpt"], default="resnet",
                   help="the network to train")
    s.add_argument("--depth", type=int, help="resnet: 6n+2, n blocks per stage (default 56); "
                                             "gpt: layers, two blocks each (default 6)")
    s.add_argument("--norm", choices=["bn", "skipinit", "none", "fixup", "pre", "post", "rezero"],
                   help="resnet: bn (default), skipinit (a scalar alpha ending each branch, no "
                        "normalisation), none or fixup (Zhang et al. 2019: scalar biases and "
                        "multipliers, zero-initialised branch ends, no normalisation); "
                        "gpt: pre (default, GPT-2), post (the original "
                        "Transformer), rezero (a scalar alpha per sublayer, no normalisation) "
                        "or none")
    s.add_argument("--shortcut", choices=["A", "B"], default="A",
                   help="resnet: where the shape changes: A zero-pad, B 1x1 projection")
    s.add_argument("--preact", action="store_true", help="resnet: pre-activation blocks")
    s.add_argument("--plain", action="store_true", help="resnet: no shortcuts (a plain network)")
    s.add_argument("--width", type=int, help="resnet: channels of the first stage (default 16); "
                                             "gpt: the residual stream's width (default 64)")
    s.add_argument("--alpha-init", type=float, default=0.0,
                   help="skipinit / rezero: the initial alpha")
    s.add_argument("--heads", type=int, default=4, help="gpt: attention heads")
    s.add_argument("--context", type=int, default=64, help="gpt: longest sequence (tokens)")
    s.add_argument("--mlp-ratio", type=int, default=4, help="gpt: MLP width / stream width")
    s.add_argument("--dropout", type=float, default=0.0, help="gpt: dropout while training")
    _data_args(s, split=False)
    s.add_argument("--epochs", type=int, default=15, help="resnet: passes over the training split")
    s.add_argument("--steps", type=int, default=800, help="gpt: optimisation steps")
    s.add_argument("--warmup-steps", type=int, default=100, help="gpt: linear warm-up steps")
    s.add_argument("--lr", type=float, help="peak learning rate (default: resnet 0.1, SGD with "
                                            "momentum 0.9; gpt 1e-3, AdamW)")
    s.add_argument("--batch-size", type=int, help="examples per step (default: resnet 128, "
                                                  "gpt 32)")
    s.add_argument("--weight-decay", type=float,
                   help="default: resnet 5e-4 (conv and linear weights), gpt 0.1")
    s.add_argument("--warmup", type=float, default=0.0,
                   help="resnet: warm-up epochs (may be fractional)")
    s.add_argument("--clip", type=float, default=None,
                   help="clip the gradient norm to this (default: resnet none, gpt 1.0)")
    s.add_argument("--out", required=True, help="checkpoint file to write")
    s.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    s.add_argument("--seed", type=int, default=0,
                   help="seeds the initialisation, shuffling and augmentation")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    return p


_ARCH_HELP = """\
A pathens checkpoint records its architecture. Anything else says how to build the model:
  --arch resnetD          the pathens CIFAR ResNet of depth D = 6n+2 (20, 32, 44, 56, 110, ...):
                          BatchNorm, option-A shortcuts (the akamaster checkpoints' layout) unless
                          the flags below say otherwise (named as in `pathens train`); sizes
                          not given are read from the weights
  --arch torchvision.NAME resnet18 ... resnet152, wide_resnet50_2, resnext50_32x4d, vit_b_16, ...
  --arch timm:NAME        any timm model name (pip install 'pathens[timm]'), e.g. timm:resnet50
  --arch hf:DIR           a local Hugging Face model folder: config.json + model.safetensors
                          (pip install 'pathens[hf]'); its tokenizer, if any, tokenises --data text
  --model FILE.py:FUNCTION  (or package.module:function) your own code: the file is imported
                          (it may register its blocks with pathens.register_block and its model
                          with pathens.register_model) and FUNCTION() returns the model; CHECKPOINT,
                          if given, is loaded into it
Weights: .pth / .pt / .th (read with weights_only=True; `module.` stripped) or .safetensors.
Class counts are read from the weights."""


def _model_args(s) -> None:
    s.add_argument("checkpoint", nargs="?", help="a checkpoint file (read with weights_only=True; "
                                                 "optional with --model)")
    _arch_args(s)


def _arch_args(s) -> None:
    g = s.add_argument_group("models pathens did not train", _ARCH_HELP)
    g.add_argument("--arch", help="resnetD, torchvision.NAME, timm:NAME or hf:DIR (see above)")
    g.add_argument("--model", metavar="FILE.py:FUNCTION",
                   help="a function of yours that returns the model (see above)")
    g.add_argument("--norm", choices=["bn", "skipinit", "none", "fixup"],
                   help="resnetD: default bn")
    g.add_argument("--shortcut", choices=["A", "B"],
                   help="resnetD: A zero-pad (default) or B projection where the shape changes")
    g.add_argument("--preact", action="store_true", help="resnetD: pre-activation blocks")
    g.add_argument("--plain", action="store_true", help="resnetD: no shortcuts (a plain network)")
    g.add_argument("--width", type=int, help="resnetD: channels of the first stage "
                                             "(default: from conv1.weight, else 16)")
    g.add_argument("--num-classes", type=int, help="default: from the checkpoint's classifier")
    g.add_argument("--in-channels", type=int, help="resnetD: input channels (default: from "
                                                   "conv1.weight, else 3)")


def _data_args(s, limit=None, split=True) -> None:
    s.add_argument("--data", help="digits, cifar10, mnist, fashion-mnist, an .npz file, "
                                  "imagefolder (--root DIR: one subfolder per class) or text "
                                  "(the Python standard library's source, or --root FILE_OR_DIR "
                                  "of UTF-8 text) (default: the checkpoint's own)" if split else
                                  "the dataset to train on: digits, cifar10, mnist, "
                                  "fashion-mnist, or text (with --arch gpt)")
    s.add_argument("--root", help="folder (or file) holding the dataset's files")
    if split:
        s.add_argument("--split", choices=["test", "train"], default="test",
                       help="the dataset's split to measure on")
    s.add_argument("--limit", type=int, default=limit, metavar="N",
                   help="use the first N examples (image folders: a seeded subset spread over "
                        "the classes; text: N windows)" + (" (default: all)" if limit is None
                                                           else ""))
    s.add_argument("--normalize", help="normalisation preset (default: the checkpoint's or "
                                       "the dataset's; image folders: the model's): imagenet, "
                                       "cifar10, mnist, digits, none (pixels in [0, 1])")
    g = s.add_argument_group("image folders and text")
    if split:
        g.add_argument("--image-size", type=int, help="imagefolder: centre-crop size (default: "
                                                      "the timm model's, else 224)")
        g.add_argument("--crop-pct", type=float, help="imagefolder: crop fraction, the short "
                                                      "side resized to size / crop-pct "
                                                      "(default: the timm model's, else 0.875)")
        g.add_argument("--workers", type=int, help="imagefolder: decoding processes (default: "
                                                   "one per CPU, at most 4)")
        g.add_argument("--skip-bad-images", action="store_true",
                       help="imagefolder: leave out files that cannot be decoded (counted in "
                            "config.json) instead of stopping")
        g.add_argument("--batch-size", type=int, help="examples per batch (default: 64 read from "
                                                      "an image folder, 256 evaluated in memory)")
    g.add_argument("--tokenizer", help="text: bytes, chars or hf:DIR (default: the checkpoint's, "
                                       "a Hugging Face folder's own, else bytes)")
    g.add_argument("--seq-len", type=int, help="text: tokens per window (default: the model's "
                                               "context)")


def _unit_arg(s) -> None:
    s.add_argument("--unit", choices=["block", "layer"], default="block",
                   help="what a lesion deletes or moves: each residual block (a transformer's "
                        "attention and MLP sublayers apart) or each layer (a module with all "
                        "its blocks)")


def _analysis_args(s) -> None:
    s.add_argument("--samples", type=int, default=20,
                   help="Veit's sampled protocol: paths per length (0: skip)")
    s.add_argument("--trials", type=int, default=5,
                   help="random draws per k (random lesions) and per number of swaps (reorder)")
    s.add_argument("--gradient-examples", type=int, default=128, metavar="N",
                   help="the first N examples measure the gradient by path length")
    s.add_argument("--margin", type=float, default=0.02,
                   help="lesion-based effective depth: allowed error increase")
    _unit_arg(s)


def _diagnostic_args(s, flag: bool = False) -> None:
    """The diagnostics' options; flag: the --diagnose switch of analyze and compare."""
    g = s.add_argument_group("diagnostics", "Options of the diagnostics (each passed on only "
                             "when given; --only / --diagnose choose which run).")
    if flag:
        g.add_argument("--diagnose", nargs="*", metavar="NAME",
                       help=f"also run the diagnostics (all, or those named: "
                            f"{', '.join(DIAGNOSTICS)}), as `pathens diagnose` does")
    g.add_argument("--jacobian-examples", type=int, metavar="N",
                   help="jacobians: measure at the first N examples (default 2)")
    g.add_argument("--jacobian-k", type=int, metavar="K",
                   help="jacobians: the K largest and K smallest singular values (default 3)")
    g.add_argument("--jacobian-iters", type=int, metavar="N",
                   help="jacobians: at most N products per map and example (default 60)")
    g.add_argument("--eps", type=float, help="singularities: a unit is eliminated when |A_u| <= "
                                             "eps x the layer's mean |A| (default 1e-3) ...")
    g.add_argument("--share", type=float, help="singularities: ... on at least this share of "
                                               "the samples (default 1)")
    g.add_argument("--delta", type=float, help="singularities: units overlap when |corr| >= "
                                               "1 - delta (default 0.01)")
    g.add_argument("--variance", type=float,
                   help="singularities: count the components holding this share of the "
                        "variance (default 0.99)")
    g.add_argument("--positions", choices=["mean", "all"],
                   help="singularities: each unit averaged over an example's positions (mean, "
                        "default) or every position a sample (all)")
    g.add_argument("--max-examples", type=int, metavar="N",
                   help="singularities: read at most the first N examples (default 10000)")
    g.add_argument("--hessian-top-k", type=int, metavar="K",
                   help="hessian: the K largest eigenvalues (default 3)")
    g.add_argument("--hessian-probes", type=int, metavar="N",
                   help="hessian: Rademacher probes of the trace (default 20)")
    g.add_argument("--hessian-slq-probes", type=int, metavar="N",
                   help="hessian: Lanczos probes of the spectral density (default 2)")
    g.add_argument("--hessian-params", metavar="WHICH",
                   help="hessian: over these parameters: 'branches', a block or module name, or "
                        "a parameter name (default: all)")


def _common(s, default_out: str, resume: bool = False) -> None:
    s.add_argument("--out", default=default_out, help="output folder, locked while a run "
                                                      "writes it")
    s.add_argument("--force", action="store_true", help="overwrite the output folder's results")
    if resume:
        s.add_argument("--resume", action="store_true",
                       help="continue the run in --out (same command and settings): finished "
                            "lesion rows are kept, the rest is computed")
    s.add_argument("--seed", type=int, default=0, help="seeds every random draw (0 to 2^63 - 1)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.add_argument("--quiet", action="store_true", help="no progress bars or messages")

