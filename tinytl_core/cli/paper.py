"""``python -m tinytl_core paper``: the TinyTL paper's Table 2 memory column, reproduced."""

from __future__ import annotations

import argparse
import sys

from tinytl_core.paper import StepPeak, format_paper_table, paper_table, select_methods


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``paper`` command."""
    p = sub.add_parser(
        "paper",
        help="the paper's Table 2 memory column (ProxylessNAS-Mobile, batch 8): paper vs ours, ratio",
    )
    p.add_argument(
        "--step-peak",
        choices=[k.value for k in StepPeak],
        default=StepPeak.MODELLED.value,
        help="the engine's step-peak column: modelled (default, fast), measured (one real step per row, "
        "slow on a CPU) or none",
    )
    p.add_argument("--methods", nargs="*", help="only these rows (the paper's names, e.g. FT-Last)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the reproduced table (Markdown), with progress on stderr."""
    rows = select_methods(args.methods)  # ValueError -> one error line, exit 2

    def progress(done: int, total: int, method: str) -> None:
        print(f"[{done}/{total}] {method}", file=sys.stderr, flush=True)

    print(format_paper_table(paper_table(step_peak=args.step_peak, rows=rows, progress=progress)))
    return 0
