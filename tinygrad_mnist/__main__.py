"""`python -m tinygrad_mnist` runs the `tinygrad-mnist` command (same flags, same exit codes)."""
import sys

from .cli import main

sys.exit(main())
