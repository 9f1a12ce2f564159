"""``python -m tinytl_core sweep``: a grid of adaptation runs on local worker processes or Ray, resumable."""

from __future__ import annotations

import argparse
import shlex
import sys

from tqdm.auto import tqdm

from tinytl_core import limits as L
from tinytl_core.adapt import OPTIMIZERS, AdaptConfig
from tinytl_core.backbones import default_backbone
from tinytl_core.cli.args import add_db_option, add_image_caps, bounded, check_output, check_resolution
from tinytl_core.jobs import default_pool_size
from tinytl_core.reports import frame_text
from tinytl_core.results import ResultsStore
from tinytl_core.seeds import SEED_GROUP_HEADERS, group_seeds
from tinytl_core.sweeps import (
    InlineExecutor,
    QueueExecutor,
    RayExecutor,
    SweepGrid,
    SweepProgress,
    export_reference,
    import_ray,
    parse_list,
    run_sweep,
    sweep_id,
)
from tinytl_core.sweeps.driver import DriverState, StatusWriter
from tinytl_core.sweeps.executors import check_ray_address
from tinytl_core.sweeps.grid import SWEEP_SETTINGS, parse_resolutions, setting_args

LOCAL_RAY = "local"
"""``--ray`` given without an address: start a local Ray instance for the sweep."""


LABEL_DEFAULT = "Reference sweep"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` command."""
    d = AdaptConfig()
    p = sub.add_parser(
        "sweep",
        help="run a grid of adaptations (backbones x modes x datasets x resolutions x seeds x steps)",
        description="Expand a grid of adaptation runs, skip the configurations already finished in the "
        "results database (an interrupted sweep resumes), and run the rest on local worker processes or, "
        "with --ray, as tasks on a Ray cluster. Each run is stored as it comes back.",
    )
    p.add_argument("--backbones", default=default_backbone(), help="comma-separated (default: %(default)s)")
    p.add_argument("--modes", default="all", help="'all' or a comma-separated list (default: all)")
    p.add_argument("--datasets", default="shapes,digits", help="comma-separated (default: %(default)s)")
    p.add_argument(
        "--resolutions",
        default="own",
        help="comma-separated px; 'own' (or 0) is each backbone's own (default: own)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--steps", default=str(d.steps), help="comma-separated step counts (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=bounded(L.TRAINING_BATCH_SIZE), default=d.batch_size, help="images per step"
    )
    p.add_argument(
        "--lr", type=bounded(L.LEARNING_RATE), default=d.lr, help="learning rate (default: %(default)g)"
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    add_image_caps(p)
    p.add_argument(
        "--eval-every", type=bounded(L.EVAL_EVERY), default=d.eval_every, help="also evaluate every N steps"
    )
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (on each worker)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random init")
    p.add_argument("--no-memory", dest="record_memory", action="store_false", help="skip the memory figures")
    p.add_argument("--no-measure", dest="measure_memory", action="store_false", help="model memory only")
    p.add_argument(
        "--group-norm",
        action="store_true",
        help="GroupNorm + weight standardisation instead of BatchNorm (the paper's recipe for batch size 1)",
    )
    p.add_argument("--no-engine", dest="engine", action="store_false", help="stock PyTorch layers")
    p.add_argument(
        "--workers",
        type=bounded(L.WORKERS),
        default=None,
        help=f"local worker processes (default: {default_pool_size()}, half the cores; 0 = train in this "
        "process); with --ray and no cluster address, the CPUs of the local Ray instance",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        default=None,
        metavar="ADDRESS",
        help="run each configuration as a Ray task: no ADDRESS starts a local Ray for the sweep, 'auto' "
        "joins the cluster running on this machine (or starts one), else a cluster address "
        "(ray://host:10001). Needs `pip install 'tinytl-lab[ray]'`",
    )
    add_db_option(p)
    p.add_argument("--dry-run", action="store_true", help="list the configurations and what would be skipped")
    p.add_argument(
        "--export-reference",
        default=None,
        metavar="PATH",
        help="afterwards, write the grid's finished runs as a reference set (JSON) labelled with the command",
    )
    p.add_argument("--label", default=LABEL_DEFAULT, help="the reference set's label (--export-reference)")
    p.add_argument(
        "--status-file",
        default=None,
        metavar="PATH",
        help="keep the sweep's state and progress in this JSON file as it goes (the app's Sweep page follows "
        "a sweep on Ray this way)",
    )
    p.add_argument("--owner", default=None, help=argparse.SUPPRESS)  # the app session, in the status file
    p.set_defaults(func=run)


def grid_from_args(args: argparse.Namespace) -> SweepGrid:
    """The sweep's grid from the command line (every list parsed; ``ValueError`` names a bad value)."""
    resolutions = parse_resolutions(args.resolutions, "--resolutions")
    base = AdaptConfig(**{setting.field: getattr(args, setting.field) for setting in SWEEP_SETTINGS})
    return SweepGrid(
        backbones=parse_list(args.backbones, "--backbones"),
        modes=parse_list(args.modes, "--modes"),
        datasets=parse_list(args.datasets, "--datasets"),
        resolutions=resolutions,
        seeds=parse_list(args.seeds, "--seeds", int),
        steps=parse_list(args.steps, "--steps", int),
        base=base,
    )


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this sweep's grid and settings (labels a reference set): the grid's
    lists always, every other setting when it differs from its default; not where it ran (workers, Ray,
    database)."""
    parts = ["python -m tinytl_core sweep"]
    for flag in ("backbones", "modes", "datasets", "resolutions", "seeds", "steps"):
        parts.append(f"--{flag} {shlex.quote(str(getattr(args, flag)))}")
    parts += [shlex.quote(arg) for arg in setting_args(grid_from_args(args).base)]
    return " ".join(parts)


def _executor(
    args: argparse.Namespace, db: str | None, sweep: str
) -> InlineExecutor | QueueExecutor | RayExecutor:
    """Where the sweep runs. ``sweep`` names the whole grid's jobs in the queue (the same on every resume,
    whatever is left to run, so a restarted sweep adopts its jobs still waiting)."""
    if args.ray is not None:
        address = None if args.ray == LOCAL_RAY else args.ray
        check_ray_address(address)
        try:
            import_ray()
        except ImportError as exc:
            raise ValueError(str(exc)) from None
        init = {"num_cpus": args.workers} if args.workers else {}
        return RayExecutor(address, init_kwargs=init)
    if args.workers == 0:
        return InlineExecutor()
    return QueueExecutor(db, args.workers, sweep=sweep)


class _GridBar:
    """A tqdm bar over the configurations to run, one printed line per configuration that comes back."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.seen = 0

    def __call__(self, state: SweepProgress) -> None:
        if self.bar is None:
            self.bar = tqdm(total=state.to_run, desc="sweep", unit="run", leave=True)
        self.bar.set_postfix(finished=state.finished, failed=state.failed, refresh=False)
        if state.done > self.seen:
            self.bar.write(f"  {state.last}")
            self.bar.update(state.done - self.seen)
            self.seen = state.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    """Run the sweep; exit 0 when every configuration finished (or does not apply), 1 when one failed or
    was cancelled from elsewhere, 130 when interrupted (Ctrl-C: run the same command again to resume).

    Every argument is checked first (lists, names, numbers, resolutions, Ray installed), before anything
    is trained. With ``--status-file`` the state and progress go to that file too, and its last word says
    how the sweep ended (the reason when it failed)."""
    if args.label != LABEL_DEFAULT and not args.export_reference:  # would do nothing: said, not ignored
        raise ValueError("--label names the reference set --export-reference writes: give that too")
    check_output(getattr(args, "status_file", None), "--status-file")  # before anything is trained
    check_output(args.export_reference, "--export-reference")
    writer = StatusWriter(args.status_file, owner=args.owner) if getattr(args, "status_file", None) else None
    try:
        return _run(args, writer)
    except KeyboardInterrupt:
        if writer is not None:
            writer.end(DriverState.INTERRUPTED, RESUME)
        raise
    except Exception as exc:
        if writer is not None:
            from tinytl_core.cli import error_message

            writer.end(DriverState.FAILED, error_message(exc).splitlines()[0])
        raise


RESUME = "interrupted: start the same sweep again to resume (finished configurations are skipped)"


def _run(args: argparse.Namespace, writer: StatusWriter | None) -> int:
    grid = grid_from_args(args)
    configs = grid.expand()
    for backbone in grid.backbones:
        for resolution in grid.resolutions:
            check_resolution(backbone, resolution)
    store = ResultsStore(args.db)
    executor = _executor(args, str(store.path), sweep_id(configs))
    command = command_line(args)
    print(
        f"sweep: {len(configs)} configurations ({len(grid.backbones)} backbone(s) x {len(grid.mode_names())} "
        f"mode(s) x {len(grid.datasets)} dataset(s) x {len(grid.resolutions)} resolution(s) x "
        f"{len(grid.seeds)} seed(s) x {len(grid.steps)} step count(s)) on {executor.name}; "
        f"results in {store.path}"
    )
    if args.dry_run:
        from tinytl_core.sweeps import config_key, finished_keys
        from tinytl_core.sweeps.grid import not_applicable

        done = finished_keys(store, (config_key(c) for c in configs))
        inapplicable = not_applicable(configs)  # what each mode's model says (on meta)
        for c in configs:
            key = config_key(c)
            if key in inapplicable:
                state = f"not applicable ({inapplicable[key]})"
            else:
                state = f"finished (run {done[key]}), skipped" if key in done else "to run"
            print(
                f"  {c.backbone} {c.mode} {c.dataset} {c.resolution or 'own'} px seed {c.seed} "
                f"{c.steps} steps: {state}"
            )
        if writer is not None:
            writer.end(DriverState.FINISHED, "dry run: nothing trained")
        return 0
    bar = _GridBar()
    if writer is not None:
        writer.describe(sweep_id(configs), executor.name)

    def progress(state: SweepProgress) -> None:
        bar(state)
        if writer is not None:
            writer(state)

    try:
        report = run_sweep(configs, store=store, executor=executor, progress=progress)
    finally:
        bar.close()
    if writer is not None:
        end = DriverState.INTERRUPTED if report.interrupted else DriverState.FINISHED
        writer.end(end, RESUME if report.interrupted else "", report.progress)
    print(report.progress.line() + f" in {report.progress.elapsed_s:.0f} s")
    grouped = group_seeds(store.get_run(i) for i in report.finished_run_ids(store))
    if len(grouped):
        unused = ["run_ids"] + ([] if grouped["differs_in"].astype(bool).any() else ["differs_in"])
        table = grouped.drop(columns=unused).rename(columns=SEED_GROUP_HEADERS).round(1)
        print()
        print(frame_text(table))
    if report.interrupted:
        print(
            f"interrupted: {report.remaining} of {len(configs)} configurations have no finished run yet. "
            "Run the same command again to resume: finished configurations are skipped.",
            file=sys.stderr,
        )
        return 130
    if args.export_reference:
        path = export_reference(report, store, args.export_reference, command=command, label=args.label)
        print(f"reference set written to {path} ({len(report.finished_run_ids(store))} runs)")
    if report.progress.cancelled:  # not by this command (it was not interrupted): e.g. another session
        print(
            f"{report.progress.cancelled} configuration(s) were cancelled before they finished (by another "
            "session or sweep sharing their jobs); run the same command again to train them.",
            file=sys.stderr,
        )
    return 1 if report.progress.failed or report.progress.cancelled else 0
