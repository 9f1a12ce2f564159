"""Argument types every command shares: numbers checked against their :mod:`tinytl_core.limits` range by
argparse itself, so a bad value is refused with the option's name before any work (no dataset loaded, no
model built), and no command takes a number without a range (``tests/test_cli_basics.py`` checks every
option of every command).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tinytl_core import limits as L
from tinytl_core.backbones import resolution_problem, small_resolution_warning
from tinytl_core.limits import Limit


@dataclass(frozen=True)
class Bounded:
    """An argparse ``type``: the text as an int (``limit.integer``) or a float, within ``limit``;
    ``zero`` also allows 0 (a "not set" / "all" value such as ``--limit 0``)."""

    limit: Limit
    zero: bool = False

    @property
    def __name__(self) -> str:  # argparse names the type in its messages
        return "whole number" if self.limit.integer else "number"

    def __call__(self, text: str) -> int | float:
        shown = text if len(text) <= 24 else f"{text[:20]}… ({len(text)} characters)"
        try:
            value: int | float = int(text) if self.limit.integer else float(text)
        except ValueError:
            kind = "a whole number" if self.limit.integer else "a number"
            raise argparse.ArgumentTypeError(f"must be {kind} ({self.limit.text()}), got {shown!r}") from None
        if self.zero and value == 0:
            return value
        problem = self.limit.problem(value)
        if problem is not None:
            extra = " or 0" if self.zero else ""
            finite = isinstance(value, int) or math.isfinite(value)
            what = f"{self.limit.text()}{extra}" if finite else f"a finite number, {self.limit.text()}{extra}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {shown}") from None
        return value


def bounded(limit: Limit, *, zero: bool = False) -> Bounded:
    """The argparse ``type`` of an option within ``limit`` (``zero``: 0 allowed too)."""
    return Bounded(limit, zero)


def check_resolution(backbone: str, resolution: int | None) -> None:
    """Refuse a resolution the backbone cannot run at (``ValueError``); warn on stderr below the size where
    its last feature map collapses to 1x1, naming the smallest sensible size. None: the model's own."""
    if not resolution:
        return
    problem = resolution_problem(backbone, resolution)
    if problem:
        raise ValueError(problem)
    warning = small_resolution_warning(backbone, resolution)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


SQLITE_HEADER = b"SQLite format 3\x00"
"""The first bytes of every SQLite database file (the results store and its job queue among them)."""


def _is_database(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def check_output(path: str | os.PathLike[str] | None, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, a missing folder, no
    permission, or a database -- the results store itself, whose runs a CSV or JSON written over it would
    destroy (``ValueError`` naming the option). An existing file is replaced, and said so on stderr. None:
    no output asked for."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option}: {target} is a folder; give a file name")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{option}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"{option}: {target} cannot be written (no permission)")
    if _is_database(target):
        raise ValueError(
            f"{option}: {target} is a database (the results store?); writing there would destroy it: give "
            "another file name"
        )
    if target.exists():
        print(f"note: {option}: {target} exists and will be replaced", file=sys.stderr)


def add_image_caps(parser: argparse.ArgumentParser) -> None:
    """``--shots`` and ``--val-cap`` (images per class kept for training / validation), as every command
    that trains takes them."""
    for flag, split, limit in (
        ("--shots", "training", L.IMAGES_PER_CLASS),
        ("--val-cap", "validation", L.VALIDATION_IMAGES_PER_CLASS),
    ):
        parser.add_argument(
            flag,
            type=bounded(limit),
            default=None,
            help=f"at most this many {split} images per class",
        )


def _database(text: str) -> str:
    """``--db``'s type: a path whose folder exists (a typo'd folder is said, not created with an empty
    database in it that a listing would show as empty)."""
    path = Path(text)
    if not path.exists() and not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise argparse.ArgumentTypeError(f"no results database at {text} (its folder does not exist)")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a results database")
    return text


_database.path = True  # type: ignore[attr-defined]  # a path, not a number (tests/test_cli_basics.py)


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """``--db``, as every command that reads or writes the results database (and its job queue) takes it."""
    parser.add_argument(
        "--db",
        type=_database,
        default=None,
        help="results database (default: $TINYTL_RESULTS_DB or data folder)",
    )
