"""Train the four networks of `pathens demo` and bundle them in pathens/bundled/.

    python experiments/train_demo_checkpoints.py [--out pathens/bundled] [--only NAME]

The recipe (architectures, epochs, learning rates) is pathens.demo.RECIPE; each checkpoint
records it with its seed, test accuracy and training time, and this command in its metadata.
"""
import argparse
import shlex
import sys
import time
from pathlib import Path

from pathens.demo import RECIPE, train_recipe

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "pathens" / "bundled"))
parser.add_argument("--only", choices=list(RECIPE), help="train just this one")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
Path(args.out).mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
for name in [args.only] if args.only else RECIPE:
    train_recipe(name, Path(args.out), seed=args.seed, progress=False,
                 command=shlex.join(["python", "experiments/train_demo_checkpoints.py",
                                     *sys.argv[1:]]))
print(f"done in {time.perf_counter() - start:.0f} s; checkpoints in {args.out}")
