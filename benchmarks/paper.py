"""The TinyTL paper's Table 2 memory column, reproduced: paper vs ours, ratio per row.

ProxylessNAS-Mobile, batch 8, 224 px (320 px for one TinyTL-L+B row), the paper accounting
(:func:`tinytl_core.paper.paper_table`: the public script's network and profiler conventions, rules P1-P3
in :mod:`tinytl_core.memory.rules`). Beside each row, the step peak of the same mode as this tool trains it
(training engine, Adam, fp32 weights): *measured* on one real profiled step (default; tens of seconds per
row on 2 shared cores) or *modelled* by the complete accounting.

    python benchmarks/paper.py                         # all 7 rows, measured engine step peaks
    python benchmarks/paper.py --step-peak modelled    # fast: no real step

Target: every row within 5% of the paper's figure. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import sys
import time

from tinytl_core.paper import TABLE2, TOLERANCE, StepPeak, format_paper_table, paper_table


def main(argv: list[str] | None = None) -> int:
    """Print the reproduced Table 2 and whether every row is within the tolerance; 1 when one is not."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--step-peak",
        choices=[k.value for k in StepPeak],
        default=StepPeak.MEASURED.value,
        help="the engine's step-peak column: measured (one real step per row), modelled, or none",
    )
    parser.add_argument(
        "--methods", nargs="*", help="only these rows (paper names, e.g. FT-Last 'TinyTL-L+B @320')"
    )
    args = parser.parse_args(argv)
    rows = TABLE2
    if args.methods:
        known = {r.method: r for r in TABLE2}
        unknown = [m for m in args.methods if m not in known]
        if unknown:
            parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        rows = tuple(known[m] for m in args.methods)
    start = time.perf_counter()

    def progress(done: int, total: int, method: str) -> None:
        print(f"[{done}/{total}] {method} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    table = paper_table(step_peak=args.step_peak, rows=rows, progress=progress)
    print(format_paper_table(table))
    worst = max(table, key=lambda r: abs(r.ratio - 1))
    ok = all(r.within_tolerance for r in table)
    print(
        f"\nTarget: every row within {TOLERANCE:.0%} of the paper -- {'met' if ok else 'NOT met'} "
        f"(worst: {worst.method}, ours / paper = {worst.ratio:.3f}). "
        f"{time.perf_counter() - start:.0f} s."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
