"""Entry point for ``python -m tinytl_core``."""

import sys

from tinytl_core.cli import main

sys.exit(main(freeze_gc=True))
