"""`python -m pathens ...`: the `pathens` command (for environments without its script)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
