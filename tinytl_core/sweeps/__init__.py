"""Sweeps: a grid of adaptation runs (backbones x modes x datasets x resolutions x seeds x steps), resumable,
on local worker processes or a Ray cluster.

- :mod:`~tinytl_core.sweeps.grid`: :class:`SweepGrid` -> configurations, :func:`config_key`,
  :func:`finished_keys`;
- :mod:`~tinytl_core.sweeps.executors`: :func:`train_config` (one configuration -> :class:`TaskOutcome`),
  :class:`QueueExecutor` (local workers of the job queue), :class:`RayExecutor`,
  :class:`InlineExecutor`;
- :mod:`~tinytl_core.sweeps.runner`: :func:`run_sweep` (skip finished, store each run, progress),
  :func:`export_reference`.
"""

from tinytl_core.seeds import config_key, seedless_key
from tinytl_core.sweeps.executors import (
    RAY_MISSING,
    InlineExecutor,
    OutcomeKind,
    QueueExecutor,
    RayExecutor,
    SweepExecutor,
    TaskOutcome,
    import_ray,
    job_outcome,
    train_config,
)
from tinytl_core.sweeps.grid import SweepGrid, finished_keys, parse_list, sweep_id
from tinytl_core.sweeps.runner import SweepProgress, SweepReport, export_reference, run_sweep

__all__ = [
    "RAY_MISSING",
    "InlineExecutor",
    "OutcomeKind",
    "QueueExecutor",
    "RayExecutor",
    "SweepExecutor",
    "SweepGrid",
    "SweepProgress",
    "SweepReport",
    "TaskOutcome",
    "config_key",
    "job_outcome",
    "export_reference",
    "finished_keys",
    "import_ray",
    "parse_list",
    "run_sweep",
    "seedless_key",
    "sweep_id",
    "train_config",
]
