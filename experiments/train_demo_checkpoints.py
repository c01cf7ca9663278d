"""Train the four networks of `pathens demo` into data/bundled/ (installed as pathens/bundled/).

    python experiments/train_demo_checkpoints.py [--out data/bundled] [--only NAME]

The recipe (architectures, epochs, learning rates) is pathens.demo.RECIPE; each checkpoint
records it with its seed, test accuracy and training time, and this command in its metadata.
The folder's MANIFEST.json (sizes, sha256, provenance) is rewritten from the checkpoints;
update the table in data/README.md to match (tests/test_bundled_data.py checks both).
"""
import argparse
import shlex
import sys
import time
from pathlib import Path

from pathens.demo import RECIPE, train_recipe, write_manifest

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "bundled"))
parser.add_argument("--only", choices=list(RECIPE), help="train just this one")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
Path(args.out).mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
for name in [args.only] if args.only else RECIPE:
    train_recipe(name, Path(args.out), seed=args.seed, progress=False,
                 command=shlex.join(["python", "experiments/train_demo_checkpoints.py",
                                     *sys.argv[1:]]))
print(f"wrote {write_manifest(Path(args.out))}")
print(f"done in {time.perf_counter() - start:.0f} s; checkpoints in {args.out}")
