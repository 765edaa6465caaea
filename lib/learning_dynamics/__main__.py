"""``python -m learning_dynamics``: see :mod:`learning_dynamics.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
