"""Repeated seeds of one configuration grouped, for the sweep CLI's summary and the Compare runs page.

The grouping itself (one definition of mean and spread over seeds, shared with the budget planner) lives
in :mod:`tinytl_core.seeds`; this module keeps the sweeps' names for it.
"""

from __future__ import annotations

from tinytl_core.seeds import (
    GROUP_COLUMNS,
    SEED_GROUP_COLUMNS,
    SEED_GROUP_HEADERS,
    group_seeds,
    seed_group_key,
)

__all__ = ["GROUP_COLUMNS", "SEED_GROUP_COLUMNS", "SEED_GROUP_HEADERS", "group_seeds", "seed_group_key"]
