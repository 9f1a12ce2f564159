"""The TinyTL paper's Table 2 memory column, reproduced: paper vs ours, ratio per row.

ProxylessNAS-Mobile, batch 8, 224 px (320 px for one TinyTL-L+B row), the paper accounting
(:func:`tinytl_core.paper.paper_table`: the public script's network and profiler conventions, rules P1-P3
in :mod:`tinytl_core.memory.rules`). Beside each row, the step peak of the same mode as this tool trains it
(training engine, Adam, fp32 weights): *measured* on one real profiled step (default; tens of seconds per
row on 2 shared cores) or *modelled* by the complete accounting.

    python benchmarks/paper.py                         # all 7 rows, measured engine step peaks
    python benchmarks/paper.py --step-peak modelled    # fast: no real step
    python -m tinytl_core paper                        # the same table from the CLI (modelled step peaks)

Target: every row within 5% of the paper's figure. MB = 10^6 bytes.

Then the paper's 8-bit frozen weights, for real: the weight memory of ProxylessNAS-Mobile (TinyTL-B and
TinyTL-L+B) with fp32 frozen weights and with 8-bit k-means codes (``frozen_weight_memory`` in
:mod:`tinytl_core.comparisons`: parameter + buffer bytes before and after, the memory model's 8-bit figure,
and how much the process's resident memory fell when the float weights were dropped). ``--no-weights``
skips it.
"""

from __future__ import annotations

import argparse
import sys
import time

from tinytl_core.backbones.proxyless import PROXYLESS_MOBILE
from tinytl_core.comparisons import frozen_weight_memory
from tinytl_core.paper import TOLERANCE, StepPeak, format_paper_table, paper_table, select_methods


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
    parser.add_argument("--no-weights", action="store_true", help="skip the 8-bit frozen weights table")
    args = parser.parse_args(argv)
    try:
        rows = select_methods(args.methods)
    except ValueError as exc:
        parser.error(str(exc))
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
    if not args.no_weights:
        print_weight_memory()
    return 0 if ok else 1


def print_weight_memory() -> None:
    """Weight memory of ProxylessNAS-Mobile with fp32 vs 8-bit (k-means) frozen weights, measured."""
    print(f"\nFrozen weights at 8 bits, measured ({PROXYLESS_MOBILE}, 224 px; MB = 10^6 bytes):")
    print("| mode | fp32 weights MB | 8-bit weights MB | fp32 / 8-bit | modelled 8-bit MB | RSS freed MB |")
    print("|---|---|---|---|---|---|")
    for mode in ("bias", "lite_residual+bias"):
        w = frozen_weight_memory(PROXYLESS_MOBILE, mode, resolution=224)
        freed = "-" if w.process_freed_bytes is None else f"{w.process_freed_bytes / 1e6:.1f}"
        print(
            f"| {mode} | {w.fp32_bytes / 1e6:.2f} | {w.quantized_bytes / 1e6:.2f} | {w.ratio:.2f}x | "
            f"{w.modelled_bytes / 1e6:.2f} | {freed} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
