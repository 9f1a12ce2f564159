"""``python -m tinytl_core plan``: what fits a memory budget -- backbones x modes x resolutions x batch
sizes, their modelled step peak, and per backbone x mode the largest batch and resolution that fit."""

from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

from tinytl_core import limits as L
from tinytl_core.backbones import own_resolution
from tinytl_core.cli.args import bounded, check_output
from tinytl_core.modes import MODES
from tinytl_core.planner.budget import PRESETS, Budget
from tinytl_core.planner.export import PlanRequest, write_training_plan
from tinytl_core.planner.plan import (
    DEFAULT_RESOLUTIONS,
    PLANNED,
    Plan,
    PlanError,
    SearchSpace,
    plan,
    select_backbones,
)
from tinytl_core.planner.profile import ProfileCache
from tinytl_core.quantities import format_bytes
from tinytl_core.tracing import OPTIMIZER_STATES


def _ints(text: str, what: str, limit: L.Limit) -> tuple[int, ...]:
    """``"1-64"``, ``"96,128,160"`` or ``"1-8,16,32"`` -> integers, each within ``limit`` (checked before a
    range is expanded: ``1-10**30`` is refused, not built)."""
    values: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            ends = [int(x) for x in part.split("-", 1)] if "-" in part[1:] else [int(part)]
            if ends[-1] < ends[0]:
                raise ValueError
        except ValueError:
            raise PlanError(f"cannot read {what} {part!r}: use numbers, ranges like 1-64, commas") from None
        for end in ends:
            if (problem := limit.problem(end)) is not None:
                raise PlanError(problem)
        values.extend(range(ends[0], ends[-1] + 1))
    if not values:
        raise PlanError(f"no {what} given")
    return tuple(values)


def _resolutions(text: str | None, backbones: tuple[str, ...]) -> tuple[int, ...]:
    """The resolutions given, or the default grid and each backbone's own (one rule for defaults: a
    model's own resolution is always planned, e.g. the demo backbone's 64 px)."""
    if text is not None:
        return _ints(text, "resolution", L.RESOLUTION)
    own = {own_resolution(b) for b in backbones}
    return tuple(sorted(set(DEFAULT_RESOLUTIONS) | {r for r in own if L.RESOLUTION.problem(r) is None}))


FILTER_LIMIT = 20
"""Backbones a catalog filter plans by default (``--limit``)."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plan`` command."""
    presets = ", ".join(PRESETS)
    p = sub.add_parser(
        "plan",
        help="budget planner: which backbone x mode x resolution x batch fits N MB",
        description="Plan what fits a memory budget (modelled step peak; MB = 10^6 bytes, KB = 10^3).",
    )
    p.add_argument(
        "--budget",
        required=True,
        help=f"a size ('256KB', '0.5 GB', '300 MB', '300' = MB; KiB/MiB/GiB binary) or a preset: {presets}",
    )
    p.add_argument("--backbones", default=None, help="comma-separated backbones")
    p.add_argument("--curated", action="store_true", help="the curated backbones (the default without any)")
    p.add_argument("--search", default=None, help="catalog filter: name contains (wildcards allowed)")
    p.add_argument("--family", default=None, help="catalog filter: timm family (module), e.g. efficientnet")
    p.add_argument("--kind", default=None, help="catalog filter: cnn, transformer, hybrid, mlp")
    p.add_argument(
        "--limit",
        type=bounded(L.ROWS),
        default=None,
        help=f"at most this many backbones from a filter (--search/--family/--kind; default "
        f"{FILTER_LIMIT}, 0: all)",
    )
    p.add_argument("--modes", default="all", help=f"'all' or comma-separated: {', '.join(MODES)}")
    p.add_argument(
        "--resolutions",
        default=None,
        help="input sizes in px, e.g. 96,128,160 or 64-224 (default: "
        f"{','.join(map(str, DEFAULT_RESOLUTIONS))} and each backbone's own, e.g. 64 for the demo backbone)",
    )
    p.add_argument("--batch-sizes", default="1-64", help="e.g. 1-64 or 1,8,32 (default: %(default)s)")
    p.add_argument("--optimizer", default="adam", choices=list(OPTIMIZER_STATES))
    p.add_argument(
        "--frozen-weight-bits",
        type=bounded(L.FROZEN_WEIGHT_BITS),
        default=None,
        help="bits per frozen weight counted, 1 to 32 for what-ifs (default: 32; MCU presets: 8 as the "
        "paper); a training run keeps them at 8 or 32",
    )
    p.add_argument("--stock", action="store_true", help="plan stock PyTorch layers instead of the engine")
    p.add_argument(
        "--classes", type=bounded(L.CLASSES), default=10, help="classes of the target task (classifier size)"
    )
    p.add_argument("--all", action="store_true", help="print every fitting configuration, not the summary")
    p.add_argument("--csv", default=None, metavar="FILE", help="write every planned configuration to FILE")
    p.add_argument(
        "--export-plan",
        default=None,
        metavar="FILE.json",
        help="write the training plan of one configuration (give exactly one backbone, mode, resolution "
        "and batch size, or the best fit: largest resolution, then batch, of the first backbone x mode)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk trace cache")
    p.add_argument(
        "--workers",
        type=bounded(L.WORKERS),
        default=None,
        help="processes tracing the profiles not cached yet (default: one per core; 1: none)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Plan, print the summary (or every fit), optionally write the CSV and a training plan."""
    budget = Budget.of(args.budget)
    check_output(args.csv, "--csv")  # before the (possibly long) planning
    check_output(args.export_plan, "--export-plan")
    bits = args.frozen_weight_bits
    if bits is None:
        preset = PRESETS.get(args.budget.strip().lower())
        bits = preset.frozen_weight_bits if preset else 32
    names = [n for n in (args.backbones or "").split(",") if n.strip()]
    if args.backbones is not None and not names:
        raise PlanError("--backbones: no backbone given (leave it out for the curated set)")
    if args.limit is not None and not (args.search or args.family or args.kind):  # would do nothing
        raise PlanError("--limit caps a catalog filter's matches: give --search, --family or --kind too")
    curated = args.curated or not (names or args.search or args.family or args.kind)
    backbones = select_backbones(
        names,
        curated=curated,
        search=args.search,
        family=args.family,
        kind=args.kind,
        limit=FILTER_LIMIT if args.limit is None else args.limit or None,
    )
    space = SearchSpace(
        backbones=backbones,
        modes=None if args.modes == "all" else tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        resolutions=_resolutions(args.resolutions, backbones),
        batch_sizes=_ints(args.batch_sizes, "batch size", L.BATCH_SIZE),
        optimizer=args.optimizer,
        frozen_weight_bits=bits,
        engine=not args.stock,
        num_classes=args.classes,
    ).checked()
    cache = ProfileCache(disk=not args.no_cache)
    if args.workers is not None and args.workers < 1:
        raise PlanError(f"--workers must be at least 1, got {args.workers}")
    bar = tqdm(total=None, desc="tracing profiles", unit="profile", leave=False, disable=None)

    def progress(done: int, total: int, label: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(label.split("(", 1)[-1].rstrip(")"), refresh=True)  # what is being traced

    try:
        result = plan(budget, space, cache=cache, progress=progress, workers=args.workers)
    finally:
        bar.close()
    layers = "stock PyTorch" if args.stock else "engine"
    where = " (frozen weights in flash, not counted)" if budget.weights_in_flash else ""
    print(
        f"budget {format_bytes(budget.nbytes)}{where}; {len(result.configs):,} configurations planned "
        f"({layers}, {args.optimizer}, frozen weights {bits}-bit; modelled step peak, MB = 10^6 bytes); "
        f"{int(result.configs[PLANNED.fits].sum()) if len(result.configs) else 0:,} fit"
    )
    if args.all:
        fit = result.fitting
        for _, r in fit.iterrows():
            print(
                f"  {r['backbone']:<24} {r['mode']:<20} {int(r['resolution']):>4} px  batch "
                f"{int(r['batch_size']):>4}  {format_bytes(r[PLANNED.counted_bytes]):>9}"
            )
    else:
        _print_summary(result)
    for _, s in result.skipped.iterrows():
        print(f"note: {s['backbone']} {s['mode']} at {s['resolution']} px not planned: {s['reason']}")
    message = result.nothing_fits_message()
    if message:
        print(message)
    if args.csv:
        result.configs.to_csv(args.csv, index=False)
        print(f"wrote {len(result.configs):,} configurations to {args.csv}")
    if args.export_plan:
        request = _export_request(result, space)
        with tqdm(total=1, desc="writing the training plan", leave=False, disable=None):
            path = write_training_plan(request, args.export_plan)
        print(
            f"wrote the training plan of {request.backbone} {request.mode} {request.resolution} px batch "
            f"{request.batch_size} to {path}"
        )
    return 0


def _print_summary(result: Plan) -> None:
    """Per backbone x mode: the largest resolution (and batch at it), the largest batch (and px)."""
    summary = result.summary()
    cells = ("largest px (batch)", "largest batch (px)", "counted")
    print(f"  {'backbone':<24} {'mode':<20} {cells[0]:>19} {cells[1]:>19} {cells[2]:>9}")
    for _, r in summary.iterrows():
        if r["fits"]:
            res = f"{int(r['max_resolution'])} ({int(r['max_batch_at_max_resolution'])})"
            bat = f"{int(r['max_batch'])} ({int(r['resolution_at_max_batch'])})"
        else:
            res = bat = "does not fit"
        smallest = format_bytes(r["smallest_counted_bytes"])
        print(f"  {r['backbone']:<24} {r['mode']:<20} {res:>19} {bat:>19} {smallest:>9}")


def _export_request(result: Plan, space: SearchSpace) -> PlanRequest:
    """The one configuration to export: the only one in the space, or the best fit of the first pair."""
    fit = result.configs[result.configs[PLANNED.fits]]  # in plan order: backbone, mode, px, batch
    if space.size == 1 and len(result.configs):
        row = result.configs.iloc[0]
    elif len(fit):
        first = fit[(fit["backbone"] == space.backbones[0])]
        first = first if len(first) else fit
        first = first[first["mode"] == first["mode"].iloc[0]]
        row = first.sort_values(["resolution", "batch_size"]).iloc[-1]
        print(
            "note: --export-plan with several configurations: exporting the largest resolution, then "
            f"batch, that fits for {row['backbone']} {row['mode']}",
            file=sys.stderr,
        )
    elif not len(result.configs) and len(result.skipped):  # nothing planned at all: say why
        first = result.skipped.iloc[0]
        raise PlanError(
            f"--export-plan: nothing to export: {first['backbone']} {first['mode']} at "
            f"{first['resolution']} px was not planned ({first['reason']})"
        )
    else:
        raise PlanError("--export-plan: nothing fits the budget; nothing to export")
    return PlanRequest(
        backbone=str(row["backbone"]),
        mode=str(row["mode"]),
        resolution=int(row["resolution"]),
        batch_size=int(row["batch_size"]),
        optimizer=space.optimizer,
        frozen_weight_bits=space.frozen_weight_bits,
        engine=space.engine,
        num_classes=space.num_classes,
    )
