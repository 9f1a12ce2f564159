"""How fast the budget planner answers: cold (empty disk cache: every profile traced), warm from the disk
cache (a new process's first plan) and warm in memory (the app's next plan), and the Memory Explorer's
per-mode analysis: a first look (every mode traced; the issue's 6 modes and all 8), a change of batch size
(the traces rewritten) and a new session's look (its disk cache).

    python benchmarks/planner.py                                # 20 backbones x all modes x 5 px x 1-64
    python benchmarks/planner.py --resolutions 96 --workers 2   # one resolution, traced by 2 processes
    python benchmarks/planner.py --modes full,last,bn+last,bias,lite_residual,lite_residual+bias  # issue's 6
    python benchmarks/planner.py --backbones demo_mobilenetv2_050 --resolutions 32,64 --quick

Targets (issue 15): the whole default space in <= 10 s cold and <= 1 s warm on 2 cores; all modes of a
curated backbone in the Memory Explorer <= 1 s warm, its update after a change <= 1 s. Prints measured
times (this machine is shared: noisy).
``--cache-dir`` keeps the cache between runs (default: a fresh temporary folder, so the first plan is cold).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from tinytl_core.backbones import CURATED_BACKBONES
from tinytl_core.planner.budget import Budget
from tinytl_core.planner.plan import DEFAULT_RESOLUTIONS, SearchSpace, plan
from tinytl_core.planner.profile import ProfileCache
from tinytl_core.planner.reports import ReportCache

try:  # this script also times older commits (README: before/after), which lack tinytl_core.runtime
    from tinytl_core.runtime import freeze_imported_objects
except ImportError:

    def freeze_imported_objects() -> bool:
        """Older code: nothing to freeze."""
        return False


try:  # older commits trace every look: nothing to forget
    from tinytl_core.comparisons import clear_mode_analyses
except ImportError:

    def clear_mode_analyses() -> None:
        """Older code: no traces kept."""


EXTRA = (  # mobile CNNs beyond the curated set, to plan at least 20 backbones
    "mobilenetv3_small_100",
    "mobilenetv2_140",
    "efficientnet_lite0",
    "mnasnet_small",
    "ghostnet_100",
    "lcnet_100",
    "tinynet_a",
    "semnasnet_100",
    "resnet34",
    "regnety_002",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join((*CURATED_BACKBONES, *EXTRA)[:20]))
    parser.add_argument("--resolutions", default=",".join(map(str, DEFAULT_RESOLUTIONS)))
    parser.add_argument(
        "--modes",
        default="all",
        help="comma-separated modes (issue 15's six: full,last,bn+last,bias,"
        "lite_residual,lite_residual+bias)",
    )
    parser.add_argument("--batch-min", type=int, default=1, help="2 skips the GroupNorm (batch 1) profiles")
    parser.add_argument("--batch-max", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="processes tracing the cold profiles")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--explorer", default="mobilenetv2_100", help="backbone of the Memory Explorer timing"
    )
    parser.add_argument("--quick", action="store_true", help="skip the Memory Explorer timing")
    parser.add_argument("--explorer-repeat", type=int, default=5, help="Memory Explorer looks to time")
    args = parser.parse_args()
    freeze_imported_objects()  # as the app's server and `python -m tinytl_core` do (tinytl_core.runtime)
    folder = args.cache_dir or tempfile.mkdtemp(prefix="planner-bench-")
    space = SearchSpace(
        backbones=tuple(b for b in args.backbones.split(",") if b),
        resolutions=tuple(int(r) for r in args.resolutions.split(",")),
        modes=None if args.modes == "all" else tuple(m for m in args.modes.split(",") if m),
        batch_sizes=tuple(range(args.batch_min, args.batch_max + 1)),
    ).checked()
    budget = Budget.of("300 MB")
    print(
        f"{len(space.backbones)} backbones x {len(space.modes)} modes ({', '.join(space.modes)}) x "
        f"{len(space.resolutions)} resolutions x batch {args.batch_min}-{args.batch_max} = {space.size:,} "
        f"configurations; "
        f"cache {folder}; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )

    start = time.perf_counter()
    cache = ProfileCache(folder)
    cold = plan(budget, space, cache=cache, workers=args.workers)
    cold_s = time.perf_counter() - start
    print(
        f"cold (empty disk cache): {cold_s:8.2f} s  ({cache.built} profiles traced by {args.workers} "
        f"process(es), {cold_s * args.workers / max(1, cache.built):.2f} s per profile per process; "
        f"{len(cold.configs):,} configurations, {int(cold.configs['fits'].sum()):,} fit 300 MB)  "
        "target <= 10 s"
    )
    disk = ProfileCache(folder)
    start = time.perf_counter()
    plan(budget, space, cache=disk)
    warm_disk_s = time.perf_counter() - start
    print(
        f"warm (disk cache, new process's first plan): {warm_disk_s:6.3f} s  ({disk.loaded} profiles read)  "
        "target <= 1 s"
    )
    start = time.perf_counter()
    plan(Budget.of("50 MB"), space, cache=disk)
    print(f"warm (in memory, another budget):            {time.perf_counter() - start:6.3f} s")
    if not args.quick:
        explorer_timings(args.explorer, args.explorer_repeat)


ISSUE_MODES = ("full", "last", "bn+last", "bias", "lite_residual", "lite_residual+bias")
"""The six modes issue 15's Explorer target names (the page shows MobileTL and sparse update too)."""


def explorer_timings(backbone: str, repeat: int) -> None:
    """The Memory Explorer's first look at every mode of ``backbone`` (its default size, batch 8) in this
    warm process: traced ``repeat`` times, each into a fresh cache folder with the process's traces
    forgotten (first, best, median; CPU time, best); then a change of batch size (16: the traces are
    kept, the disk cache has no such setting); then the first setting read back from the disk cache as a
    new session would."""
    for modes, label in ((ISSUE_MODES, "the issue's 6 modes"), (None, "all 8 modes")):
        times, cpu = [], []
        folder = None
        for _ in range(repeat):
            clear_mode_analyses()
            folder = tempfile.mkdtemp(prefix="explorer-bench-")
            start, start_cpu = time.perf_counter(), time.process_time()
            ReportCache(folder).reports(backbone, resolution=None, batch_size=8, modes=modes)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        print(
            f"Memory Explorer, {label} of {backbone} at batch 8, traced ({repeat} looks): first "
            f"{times[0]:.2f} s, best {min(times):.2f} s, median {statistics.median(times):.2f} s; "
            f"CPU best {min(cpu):.2f} s  target <= 1 s warm"
        )
    changes = []
    for batch in (16, 32, 4, 64, 12):
        start = time.perf_counter()
        ReportCache(folder).reports(backbone, resolution=None, batch_size=batch)
        changes.append(time.perf_counter() - start)
    print(
        f"Memory Explorer, the batch size changed (16, 32, 4, 64, 12): median "
        f"{statistics.median(changes):.2f} s, worst {max(changes):.2f} s  target <= 1 s"
    )
    start = time.perf_counter()
    ReportCache(folder).reports(backbone, resolution=None, batch_size=8)
    print(f"Memory Explorer, the same again (disk cache, new session): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
