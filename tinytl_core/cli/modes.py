"""``python -m tinytl_core modes``: what each fine-tuning mode trains on a backbone."""

from __future__ import annotations

import argparse

from tinytl_core import limits as L
from tinytl_core.backbones import check_backbone_name, default_backbone
from tinytl_core.cli.args import bounded, check_resolution
from tinytl_core.modes import MODES, compare_trainable
from tinytl_core.reports import text_table, trainable_display, trainable_table


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``modes`` command."""
    p = sub.add_parser("modes", help="trainable parameters of every fine-tuning mode on a backbone")
    p.add_argument(
        "--model",
        default=default_backbone(),
        help="shipped or timm architecture (default: %(default)s, the demo backbone, offline)",
    )
    p.add_argument(
        "--resolution",
        type=bounded(L.RESOLUTION, zero=True),
        default=None,
        help="input size in pixels (default or 0: the model's own)",
    )
    p.add_argument(
        "--group-norm", action="store_true", help="GroupNorm + weight standardisation instead of BatchNorm"
    )
    p.add_argument("--describe", action="store_true", help="print each mode's description and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the per-mode trainable parameter table."""
    if args.describe:
        given = [
            option
            for option, value in (
                ("--model", args.model != default_backbone()),
                ("--resolution", args.resolution is not None),
                ("--group-norm", args.group_norm),
            )
            if value
        ]
        if given:  # options that would do nothing: said, not ignored
            raise ValueError(
                f"--describe prints what each mode trains, the same for every model: drop {', '.join(given)} "
                "(or drop --describe for the table of trainable parameters)"
            )
        for mode in MODES.values():
            print(f"{mode.name:20s} {mode.title:26s} {mode.description}")
        return 0
    check_backbone_name(args.model)
    resolution = args.resolution or None  # 0: the model's own, as `memory`
    check_resolution(args.model, resolution)
    table = trainable_table(compare_trainable(args.model, resolution=resolution, group_norm=args.group_norm))
    shown, formats = trainable_display(table)  # headers and decimals as the app's Modes page
    shown.insert(0, "name", table["mode"])  # what --mode takes
    print(text_table(shown, formats))
    return 0
