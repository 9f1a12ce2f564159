"""Entry point for ``python -m tinytl_core``."""

import sys

try:  # a Ctrl-C while PyTorch and timm import (seconds) is a one-line stop, not an import traceback
    from tinytl_core.cli import main

    code = main(freeze_gc=True)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    code = 130
sys.exit(code)
