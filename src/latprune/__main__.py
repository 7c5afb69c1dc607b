"""``python -m latprune`` (and ``torchrun -m latprune``): the command line."""

import sys

from latprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
