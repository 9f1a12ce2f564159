"""``python -m tinytl_core runs``: list, show, export and delete stored adaptation runs."""

from __future__ import annotations

import argparse
import json

from tinytl_core import limits as L
from tinytl_core.cli.args import add_db_option, bounded, check_output
from tinytl_core.quantities import ENDED_STATUSES
from tinytl_core.reports import frame_text
from tinytl_core.results import MEMORY, RUN, ResultsStore, run_table

COLUMNS: tuple[str, ...] = (
    RUN.id,
    RUN.status,
    RUN.backbone,
    RUN.mode,
    RUN.dataset,
    RUN.resolution,
    RUN.batch_size,
    RUN.steps_done,
    RUN.final_val_acc,
    RUN.best_val_acc,
    RUN.n_trainable,
    MEMORY.total_modelled_bytes,
    MEMORY.total_measured_bytes,
    MEMORY.activations_measured_bytes,
    RUN.total_time_s,
    RUN.started_at,
)
"""The compact run table the CLI prints (``runs``; ``adapt --modes`` without backbone, dataset, start)."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``runs`` command."""
    p = sub.add_parser("runs", help="list stored adaptation runs; export them as CSV; delete one")
    add_db_option(p)
    p.add_argument("--limit", type=bounded(L.ROWS), default=None, help="show only the newest N runs (0: all)")
    p.add_argument("--status", choices=[s.value for s in ENDED_STATUSES], default=None)
    p.add_argument("--dataset", default=None, help="only runs on this dataset")
    p.add_argument("--csv", metavar="FILE", default=None, help="export the runs shown to a CSV file")
    p.add_argument("--history", action="store_true", help="include the per-step history in the CSV")
    p.add_argument(
        "--show", type=bounded(L.RUN_ID), metavar="ID", default=None, help="print one run in full (JSON)"
    )
    p.add_argument(
        "--delete", type=bounded(L.RUN_ID), metavar="ID", nargs="+", default=None, help="delete run(s)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List, show, export or delete runs."""
    if args.history and not args.csv:  # an option that would do nothing: said, not ignored
        raise ValueError("--history adds the histories to the CSV export: give --csv FILE too")
    store = ResultsStore(args.db)
    check_output(args.csv, "--csv")
    if args.delete:
        ids = list(dict.fromkeys(args.delete))  # each once, in order
        for run_id in ids:  # every id first: all or nothing
            store.get_run(run_id)
        for run_id in ids:
            store.delete_run(run_id)
            print(f"deleted run {run_id}")
        return 0
    if args.show is not None:
        print(json.dumps(store.get_run(args.show), indent=2))
        return 0
    runs = store.list_runs(limit=args.limit or None, status=args.status, dataset=args.dataset)
    if args.csv:
        n = store.export_csv(args.csv, [r[RUN.id] for r in runs], include_history=args.history)
        print(f"wrote {n} run(s) to {args.csv}")
        return 0
    if not runs:
        if args.status or args.dataset:
            print(f"no run matches (status {args.status or 'any'}, dataset {args.dataset or 'any'})")
        else:
            print(f"no runs stored in {store.path} yet; try `python -m tinytl_core adapt`")
        return 0
    print(frame_text(run_table(runs, COLUMNS)))
    print(f"{len(runs)} run(s) in {store.path}")
    return 0
