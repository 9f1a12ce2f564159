"""The budget planner: every (backbone, mode, resolution, batch size) of a search space, its modelled step
peak, and whether it fits a memory budget.

One profile per (backbone, resolution, mode) serves every batch size (:mod:`tinytl_core.planner.profile`),
so planning thousands of configurations costs one cache look-up each after the first plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tinytl_core import limits as L
from tinytl_core.backbones import CURATED_BACKBONES, check_backbone_name, list_backbones
from tinytl_core.modes import resolve_modes
from tinytl_core.planner.budget import Budget
from tinytl_core.planner.profile import MemoryProfile, ProfileCache
from tinytl_core.quantities import Unit, format_bytes, format_ratio, names, quantity
from tinytl_core.tracing import optimizer_states

DEFAULT_RESOLUTIONS: tuple[int, ...] = (96, 128, 160, 192, 224)
DEFAULT_BATCH_SIZES: tuple[int, ...] = tuple(range(1, 65))
MAX_BATCH = L.BATCH_SIZE.high
MAX_RESOLUTION = L.RESOLUTION.high


class PlanError(ValueError):
    """A search space or budget the planner cannot use; the message says what to change."""


@dataclass
class PlannedConfig:
    """One planned configuration (a row of :attr:`Plan.configs`), figures in bytes."""

    backbone: str | None = quantity("backbone", Unit.TEXT)
    mode: str | None = quantity("mode", Unit.TEXT)
    resolution: int | None = quantity("resolution (px)", Unit.COUNT, short="px")
    batch_size: int | None = quantity("batch size", Unit.COUNT, short="batch")
    group_norm: bool | None = quantity(
        "GroupNorm", Unit.FLAG, help="Batch 1 trains with GroupNorm in place of BatchNorm, as the paper."
    )
    peak_bytes: float | None = quantity(
        "modelled step peak",
        short="modelled peak",
        help="The memory model's step peak: weights + gradients + optimizer state + the most activation "
        "memory alive at once in one training step (engine or stock PyTorch, as planned).",
    )
    counted_bytes: float | None = quantity(
        "counted against the budget",
        short="in budget",
        help="The modelled peak, less frozen weights kept in flash where the budget says so (MCU presets).",
    )
    flash_bytes: float | None = quantity("frozen weights in flash", short="flash")
    weights_bytes: float | None = quantity("weights", short="weights")
    grads_optimizer_bytes: float | None = quantity("gradients + optimizer state", short="grads+opt")
    activations_bytes: float | None = quantity("peak activations", short="activations")
    n_trainable: int | None = quantity("trainable parameters", Unit.COUNT, short="trainable params")
    n_params: int | None = quantity("parameters", Unit.COUNT, short="params")
    fits: bool | None = quantity("fits", Unit.FLAG)
    over_bytes: float | None = quantity(
        "over the budget", short="over", help="How far the counted bytes exceed the budget (<= 0: fits)."
    )


PLANNED = names(PlannedConfig)
CONFIG_COLUMNS: tuple[str, ...] = tuple(PlannedConfig.__dataclass_fields__)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "backbone",
    "mode",
    "fits",
    "max_resolution",
    "max_batch_at_max_resolution",
    "max_batch",
    "resolution_at_max_batch",
    "smallest_counted_bytes",
)


@dataclass(frozen=True)
class SearchSpace:
    """What the planner tries: backbones x modes x resolutions x batch sizes, with one optimizer,
    one frozen-weight precision and the engine (or stock PyTorch)."""

    backbones: tuple[str, ...]
    modes: tuple[str, ...] | None = None  # None: every registered mode
    resolutions: tuple[int, ...] = DEFAULT_RESOLUTIONS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    optimizer: str = "adam"
    frozen_weight_bits: int = 32
    engine: bool = True
    num_classes: int = 10

    def checked(self) -> SearchSpace:
        """This space with modes resolved, duplicates dropped and every value checked (:class:`PlanError`
        with the reason otherwise). Cheap: nothing is traced."""
        if not self.backbones:
            raise PlanError("no backbone to plan: give at least one (or the curated set)")
        for name in self.backbones:
            try:
                check_backbone_name(name)
            except ValueError as exc:
                raise PlanError(str(exc)) from None
        if self.modes is not None and not len(self.modes):  # None is every mode; resolve_modes's own
            raise PlanError("no mode to plan: choose at least one")  # message speaks of the CLI's list
        try:
            modes = tuple(dict.fromkeys(m.name for m in resolve_modes(self.modes)))  # bias,bias: once
            optimizer_states(self.optimizer)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        if not self.resolutions:
            raise PlanError("no resolution to plan: give at least one")
        if not self.batch_sizes:
            raise PlanError("no batch size to plan: give at least one")
        for values, limit in (
            (self.resolutions, L.RESOLUTION),
            (self.batch_sizes, L.BATCH_SIZE),
            ((self.frozen_weight_bits,), L.FROZEN_WEIGHT_BITS),
            ((self.num_classes,), L.CLASSES),
        ):
            problem = next((limit.problem(v) for v in values if limit.problem(v) is not None), None)
            if problem is not None:
                raise PlanError(problem)
        return SearchSpace(
            backbones=tuple(dict.fromkeys(self.backbones)),
            modes=modes,
            resolutions=tuple(sorted({int(r) for r in self.resolutions})),  # (whole numbers, checked)
            batch_sizes=tuple(sorted({int(b) for b in self.batch_sizes})),
            optimizer=self.optimizer.lower(),
            frozen_weight_bits=self.frozen_weight_bits,
            engine=self.engine,
            num_classes=self.num_classes,
        )

    @property
    def size(self) -> int:
        """Configurations in the space."""
        modes = len(self.modes) if self.modes is not None else len(resolve_modes(None))
        return len(self.backbones) * modes * len(self.resolutions) * len(self.batch_sizes)


def select_backbones(
    names_: Iterable[str] | None = None,
    *,
    curated: bool = False,
    search: str | None = None,
    family: str | None = None,
    kind: str | None = None,
    limit: int | None = None,
) -> tuple[str, ...]:
    """Backbones for a search space: a list, the curated set, and/or a catalog filter
    (:func:`tinytl_core.backbones.list_backbones`), in that order, each once. ``limit`` caps the
    filter's matches."""
    chosen = [n.strip() for n in (names_ or ()) if n.strip()]
    if curated:
        chosen += CURATED_BACKBONES
    if search or family or kind:
        try:
            found = [b.name for b in list_backbones(search=search, family=family, kind=kind)]
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        if not found:
            given = [
                f"{what} {value!r}"
                for what, value in (("search", search), ("family", family), ("kind", kind))
                if value
            ]
            raise PlanError(
                f"no backbone matches {' and '.join(given)}: try a shorter search text, or list the "
                "catalog with `python -m tinytl_core backbones --search TEXT`"
            )
        chosen += found[:limit] if limit else found
    return tuple(dict.fromkeys(chosen))


@dataclass
class Plan:
    """What :func:`plan` found.

    ``configs``: one row per planned configuration (columns: :class:`PlannedConfig`'s fields), in order of
    backbone, mode, resolution, batch size. ``skipped``: (backbone, mode, resolution, reason) where a mode
    does not apply or the input is too small for the architecture.
    """

    budget: Budget
    space: SearchSpace
    configs: pd.DataFrame
    skipped: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["backbone", "mode", "resolution", "reason"])
    )
    built: int = 0  # profiles traced for this plan (cache misses)

    @property
    def fitting(self) -> pd.DataFrame:
        """The configurations that fit, smallest modelled peak first."""
        return self.configs[self.configs[PLANNED.fits]].sort_values(PLANNED.peak_bytes)

    @property
    def any_fits(self) -> bool:
        return bool(self.configs[PLANNED.fits].any()) if len(self.configs) else False

    def smallest(self) -> pd.Series | None:
        """The configuration with the least counted bytes (what to try when nothing fits), or None."""
        if not len(self.configs):
            return None
        return self.configs.loc[self.configs[PLANNED.counted_bytes].idxmin()]

    def summary(self) -> pd.DataFrame:
        """Per backbone x mode: whether anything fits, the largest resolution that fits (and the largest
        batch at it), the largest batch that fits (and the largest resolution at it), the least counted
        against the budget (the modelled peak, less frozen weights kept in flash: what fits is decided on)."""
        records = []
        for (backbone, mode), group in self.configs.groupby(["backbone", "mode"], sort=False):
            fit = group[group[PLANNED.fits]]
            rec = {
                "backbone": backbone,
                "mode": mode,
                "fits": bool(len(fit)),
                "max_resolution": None,
                "max_batch_at_max_resolution": None,
                "max_batch": None,
                "resolution_at_max_batch": None,
                "smallest_counted_bytes": float(group[PLANNED.counted_bytes].min()),
            }
            if len(fit):
                top_res = int(fit[PLANNED.resolution].max())
                rec["max_resolution"] = top_res
                rec["max_batch_at_max_resolution"] = int(
                    fit.loc[fit[PLANNED.resolution] == top_res, PLANNED.batch_size].max()
                )
                top_batch = int(fit[PLANNED.batch_size].max())
                rec["max_batch"] = top_batch
                rec["resolution_at_max_batch"] = int(
                    fit.loc[fit[PLANNED.batch_size] == top_batch, PLANNED.resolution].max()
                )
            records.append(rec)
        return pd.DataFrame.from_records(records, columns=list(SUMMARY_COLUMNS))

    def nothing_fits_message(self) -> str | None:
        """None when something fits; else the smallest configuration and how far over the budget it is."""
        if self.any_fits:
            return None
        best = self.smallest()
        if best is None:
            return "nothing to plan: no mode applies to these backbones at these resolutions"
        over = float(best[PLANNED.counted_bytes]) - self.budget.nbytes
        ratio = format_ratio(best[PLANNED.counted_bytes], self.budget.nbytes, "the budget")
        return (
            f"nothing fits {format_bytes(self.budget.nbytes)}. The smallest configuration is "
            f"{best[PLANNED.backbone]} {best[PLANNED.mode]} at {int(best[PLANNED.resolution])} px, batch "
            f"{int(best[PLANNED.batch_size])}: {format_bytes(best[PLANNED.counted_bytes])}, "
            f"{format_bytes(over)} over ({ratio})."
        )


ProgressCallback = Callable[[int, int, str], None]


def plan(
    budget: Budget,
    space: SearchSpace,
    *,
    cache: ProfileCache | None = None,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> Plan:
    """Model every configuration of ``space`` and check it against ``budget``.

    The figure is the memory model's **modelled step peak** (``total_modelled_bytes`` of
    :func:`tinytl_core.memory.analyze` with the engine, ``total_stock_bytes`` for stock PyTorch); batch 1
    uses GroupNorm. With ``budget.weights_in_flash`` the frozen weights do not count against the budget.
    Profiles not cached yet are traced first, in ``workers`` processes (None: one per core, or
    ``TINYTL_PLANNER_WORKERS``; 1: in this process), with ``progress(done, total, label)`` called before
    the first and after each (``label``: ``"tracing 37/120 profiles (resnet50 bias 160 px)"``); planning
    from cached profiles takes milliseconds and reports nothing.
    """
    if budget.nbytes <= 0:
        raise PlanError(f"budget must be positive, got {budget.nbytes} bytes")
    space = space.checked()
    cache = cache or ProfileCache()
    built_before = cache.built
    needs_gn = 1 in space.batch_sizes
    linear_batches = [b for b in space.batch_sizes if b >= 2]
    jobs = [
        (backbone, resolution, mode, gn)
        for backbone in space.backbones
        for mode in space.modes
        for resolution in space.resolutions
        for gn in ((True,) if needs_gn else ()) + ((False,) if linear_batches else ())
    ]
    columns: dict[str, list] = {c: [] for c in CONFIG_COLUMNS}
    one, many = np.array([1], dtype=np.int64), np.array(linear_batches, dtype=np.int64)
    # why each (backbone, mode, resolution) was not planned, for batch 1 with GroupNorm (True) and the rest
    skipped: dict[tuple[str, str, int], dict[bool, str]] = {}

    def traced(done: int, total: int, request: tuple) -> None:
        if progress is not None:
            backbone, resolution, mode, gn, _ = request
            norm = ", GroupNorm" if gn else ""
            progress(
                done, total, f"tracing {done}/{total} profiles ({backbone} {mode} {resolution} px{norm})"
            )

    cache.fill([(b, r, m, gn, space.num_classes) for b, r, m, gn in jobs], workers=workers, progress=traced)
    for backbone, resolution, mode, gn in jobs:
        profile = cache.get(backbone, resolution, mode, group_norm=gn, num_classes=space.num_classes)
        if not profile.applicable:
            skipped.setdefault((backbone, mode, resolution), {})[gn] = profile.reason
            continue
        _add_rows(columns, profile, one if gn else many, budget, space)
    # Rows come in plan order (backbone, mode, resolution, batch) as the jobs were listed.
    configs = pd.DataFrame(
        {c: np.concatenate(parts) if parts else [] for c, parts in columns.items()},
        columns=list(CONFIG_COLUMNS),
    )
    return Plan(
        budget,
        space,
        configs,
        pd.DataFrame(
            [(*k, _skip_reason(by_gn, needs_gn, linear_batches)) for k, by_gn in skipped.items()],
            columns=["backbone", "mode", "resolution", "reason"],
        ),
        cache.built - built_before,
    )


def _skip_reason(by_gn: dict[bool, str], needs_gn: bool, linear_batches: list[int]) -> str:
    """One note for a (backbone, mode, resolution) not planned: which batch sizes it concerns only when
    the others were planned (or failed for another reason)."""
    both = needs_gn and bool(linear_batches)
    gn, bn = by_gn.get(True), by_gn.get(False)
    if not both or gn == bn:
        return gn or bn or ""
    batches = "batch 2 and above" if len(linear_batches) > 1 else f"batch {linear_batches[0]}"
    parts = [f"batch 1 (GroupNorm): {gn}" if gn else "", f"{batches}: {bn}" if bn else ""]
    return "; ".join(p for p in parts if p)


def _add_rows(
    columns: dict[str, list],
    profile: MemoryProfile,
    batches: np.ndarray,
    budget: Budget,
    space: SearchSpace,
) -> None:
    """Append the configurations of one profile at ``batches`` (one numpy array per column)."""
    bits = space.frozen_weight_bits
    frozen = profile.frozen_weights_bytes(bits)
    weights = profile.trainable_bytes + frozen + profile.buffer_bytes  # = profile.weights_bytes(bits)
    fixed = weights + profile.grads_optimizer_bytes(space.optimizer)
    lines = np.asarray(profile.engine_lines if space.engine else profile.stock_lines, dtype=np.int64)
    n = len(batches)
    act = (
        (lines[:, :1] + lines[:, 1:] * batches[None, :]).max(axis=0) if len(lines) else np.zeros(n, np.int64)
    )
    peak = fixed + act
    counted = peak - (frozen if budget.weights_in_flash else 0)

    def const(value: object) -> np.ndarray:
        return np.full(n, value, dtype=object if isinstance(value, str) else None)

    columns[PLANNED.backbone].append(const(profile.backbone))
    columns[PLANNED.mode].append(const(profile.mode))
    columns[PLANNED.resolution].append(const(profile.resolution))
    columns[PLANNED.batch_size].append(batches)
    columns[PLANNED.group_norm].append(const(profile.group_norm))
    columns[PLANNED.peak_bytes].append(peak)
    columns[PLANNED.counted_bytes].append(counted)
    columns[PLANNED.flash_bytes].append(const(frozen if budget.weights_in_flash else 0))
    columns[PLANNED.weights_bytes].append(const(weights))
    columns[PLANNED.grads_optimizer_bytes].append(const(fixed - weights))
    columns[PLANNED.activations_bytes].append(act)
    columns[PLANNED.n_trainable].append(const(profile.n_trainable))
    columns[PLANNED.n_params].append(const(profile.n_params))
    columns[PLANNED.fits].append(counted <= budget.nbytes)
    columns[PLANNED.over_bytes].append(counted - budget.nbytes)


def pareto_front(frame: pd.DataFrame, x: str, y: str, *, maximize_y: bool = True) -> pd.Series:
    """Boolean mask of the rows on the Pareto front of ``frame``: no other row has ``x`` as small (or
    smaller) and ``y`` as good (or better) with one of them strictly better. Rows with a missing ``x`` or
    ``y`` are never on it."""
    mask = pd.Series(False, index=frame.index)
    valid = frame[[x, y]].dropna()
    if not len(valid):
        return mask
    ys = valid[y] if maximize_y else -valid[y]
    order = sorted(valid.index, key=lambda i: (valid.at[i, x], -ys[i]))
    best = None
    for i in order:
        if best is None or ys[i] > best:
            mask[i] = True
            best = ys[i]
    return mask
