"""Command line interface: ``python -m tinytl_core <command> ...``.

Each command lives in its own module of this package and exposes ``register(subparsers)``, which adds
its sub-parser and sets ``func`` (a callable taking the parsed args and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from tinytl_core.runtime import freeze_imported_objects

# One module per command; add a name here when a command module lands.
COMMANDS: tuple[str, ...] = (
    "backbones",
    "modes",
    "datasets",
    "adapt",
    "runs",
    "memory",
    "worker",
    "jobs",
    "sweep",
    "sparse_search",
    "plan",
    "paper",
)


class UsageError(ValueError):
    """A command line argparse refuses (unknown option, a value out of its range); ``main`` prints it as
    one ``error:`` line naming the option, and where to read the usage."""


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad command line raises :class:`UsageError` (not a usage block and
    ``SystemExit``): one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered command."""
    parser = _Parser(
        prog="python -m tinytl_core",
        description="TinyTL Lab: measure why on-device learning is bound by activation memory.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def error_message(exc: BaseException) -> str:
    """One clean line for an exception: a ``KeyError``'s own text (``str()`` would quote it), an
    ``OSError``'s reason and file, else the message (the type name when it has none)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    elif isinstance(exc, sqlite3.Error):
        text = f"results database: {exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split()) if "\n" not in text else text.strip()


def main(argv: Sequence[str] | None = None, *, freeze_gc: bool = False) -> int:
    """Run the CLI; return the process exit code. User errors (a bad value, a missing file, an unknown id)
    print one ``error:`` line and exit 2; anything unexpected prints one line too and exits 1, with the
    traceback only when ``TINYTL_DEBUG`` is set. ``freeze_gc`` (``python -m tinytl_core``): once the
    commands are imported, :func:`tinytl_core.runtime.freeze_imported_objects`."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8 prints as \xe9, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(argv)  # imports every command (seconds: PyTorch, timm, pandas)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if freeze_gc:
        freeze_imported_objects()
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, OSError, sqlite3.Error) as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("TINYTL_DEBUG"):
            traceback.print_exc()
        print(
            f"error: {type(exc).__name__}: {error_message(exc)} (set TINYTL_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
