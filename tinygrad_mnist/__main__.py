"""`python -m tinygrad_mnist` runs the `tinygrad-mnist` command (same flags, same exit codes)."""
import sys

from .cli import main

if __name__ == "__main__":  # the serve command's worker processes import this module too
    sys.exit(main())
