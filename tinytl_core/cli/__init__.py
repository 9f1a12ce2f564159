"""Command line interface: ``python -m tinytl_core <command> ...``.

Each command lives in its own module of this package and exposes ``register(subparsers)``, which adds
its sub-parser and sets ``func`` (a callable taking the parsed args and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# One module per command; add a name here when a command module lands.
COMMANDS: tuple[str, ...] = ("backbones", "modes", "datasets", "adapt", "runs", "memory")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="python -m tinytl_core",
        description="TinyTL Lab: measure why on-device learning is bound by activation memory.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code. Known user errors print one line, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
