"""A sweep's grid: backbones x modes x datasets x resolutions x seeds x steps, expanded into
:class:`~tinytl_core.adapt.AdaptConfig` objects, and the stable key that says whether a configuration has
already finished in the results store (so an interrupted sweep resumes where it stopped)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from tinytl_core import limits as L
from tinytl_core.adapt import AdaptConfig, check_setup
from tinytl_core.backbones import own_resolution, resolution_problem
from tinytl_core.data import check_dataset_name
from tinytl_core.modes import ModeNotApplicable, compare_trainable, resolve_modes
from tinytl_core.quantities import RunStatus
from tinytl_core.results import RUN, ResultsStore
from tinytl_core.seeds import config_key

GRID_AXES: tuple[str, ...] = ("backbone", "dataset", "resolution", "steps", "mode", "seed")
"""The configuration fields a grid varies, outermost first (a seed's runs of one mode come together)."""


def sweep_id(configs: Iterable[AdaptConfig]) -> str:
    """A sweep's name in the job queue, stable across restarts: ``sweep-`` and the hash of its
    configurations' keys (the same grid gets the same id)."""
    keys = sorted({config_key(c) for c in configs})
    return "sweep-" + hashlib.sha256(",".join(keys).encode()).hexdigest()[:12]


def parse_list(text: str | Sequence[Any] | None, what: str, cast: type = str) -> list[Any]:
    """``"a,b, c"`` (or a list) -> ``["a", "b", "c"]`` cast to ``cast``; empty items dropped, repeats kept
    once in order. ``ValueError`` naming ``what`` for an item that does not convert or an empty list."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    out: list[Any] = []
    for item in items:
        raw = item.strip() if isinstance(item, str) else item
        if raw == "" or raw is None:
            continue
        try:
            value = cast(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {raw!r} is not a valid {cast.__name__}") from None
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"{what}: give at least one value")
    return out


def parse_resolutions(text: str | Sequence[Any], what: str) -> list[int | None]:
    """``"own, 32, 64"`` -> ``[None, 32, 64]`` (``own`` or 0: each backbone's own), repeats once, in order.
    ``ValueError`` naming ``what`` for an item that is not a whole number of pixels within
    :data:`tinytl_core.limits.RESOLUTION` (a superscript ``²`` passes ``str.isdigit`` but not ``int``)."""
    out: list[int | None] = []
    for item in parse_list(text, what):
        raw = str(item).strip()
        if raw.lower() in ("own", "0"):
            value = None
        elif raw.isdecimal() and len(raw) <= 9:  # exactly what int() reads, of a size it reads quickly
            value = int(raw)
            problem = L.RESOLUTION.problem(value)
            if problem:
                raise ValueError(f"{what}: {problem}")
        elif raw.isdecimal():
            raise ValueError(
                f"{what}: {L.RESOLUTION.name} must be {L.RESOLUTION.text()}, got {len(raw)} digits"
            )
        else:
            raise ValueError(f"{what}: {raw!r} is not a size in px (or 'own')")
        if value not in out:
            out.append(value)
    return out


@dataclass(frozen=True)
class SweepSetting:
    """One setting a sweep's command line carries for every run: the :class:`AdaptConfig` field and its
    ``sweep`` flag (whose argparse destination is the field's name). ``switch``: a flag without a value,
    given when the setting differs from its default (``--no-engine``, ``--group-norm``)."""

    field: str
    flag: str
    switch: bool = False


SWEEP_SETTINGS: tuple[SweepSetting, ...] = (
    SweepSetting("batch_size", "--batch-size"),
    SweepSetting("lr", "--lr"),
    SweepSetting("optimizer", "--optimizer"),
    SweepSetting("shots", "--shots"),
    SweepSetting("val_cap", "--val-cap"),
    SweepSetting("eval_every", "--eval-every"),
    SweepSetting("device", "--device"),
    SweepSetting("pretrained", "--no-pretrained", switch=True),
    SweepSetting("record_memory", "--no-memory", switch=True),
    SweepSetting("measure_memory", "--no-measure", switch=True),
    SweepSetting("engine", "--no-engine", switch=True),
    SweepSetting("group_norm", "--group-norm", switch=True),
)
"""The one table of what a sweep command carries besides its grid: ``sweep``'s options, the grid it builds
(:func:`tinytl_core.cli.sweep.grid_from_args`) and the command lines written for it (a Ray driver the app
starts, a reference set's label) all read it, so none can drop a setting the others keep."""
GRID_FIELDS = frozenset({"backbone", "mode", "dataset", "resolution", "steps", "epochs", "seed"})
"""The fields a grid varies (its lists), not carried as settings."""


def setting_args(base: AdaptConfig) -> list[str]:
    """The ``sweep`` arguments for ``base``'s settings that differ from the defaults. ``ValueError`` when a
    setting differs that the command cannot carry (it would be dropped, and the runs stored with another
    configuration than the one asked for)."""
    default = AdaptConfig()
    args: list[str] = []
    for setting in SWEEP_SETTINGS:
        value = getattr(base, setting.field)
        if value != getattr(default, setting.field):
            args += [setting.flag] if setting.switch else [setting.flag, str(value)]
    carried = GRID_FIELDS | {s.field for s in SWEEP_SETTINGS} | {"backbone"}
    dropped = [
        f.name
        for f in fields(AdaptConfig)
        if f.name not in carried and getattr(base, f.name) != getattr(default, f.name)
    ]
    if dropped:
        raise ValueError(f"a sweep command cannot carry these settings: {', '.join(dropped)}")
    return args


@dataclass
class SweepGrid:
    """What a sweep varies, and the settings every run shares (``base``).

    ``modes`` may be ``["all"]``; ``resolutions`` holds pixel sizes or None for each backbone's own;
    ``steps`` the optimisation steps of each run. Everything else (batch size, learning rate, memory
    figures, ...) comes from ``base``.
    """

    backbones: list[str]
    modes: list[str] = field(default_factory=lambda: ["all"])
    datasets: list[str] = field(default_factory=lambda: ["shapes", "digits"])
    resolutions: list[int | None] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: list[int] = field(default_factory=lambda: [200])
    base: AdaptConfig = field(default_factory=AdaptConfig)

    def mode_names(self) -> list[str]:
        """The grid's modes by name (``all`` expanded, unknown names a ``ValueError``)."""
        if "all" in self.modes:
            return [m.name for m in resolve_modes("all")]
        return list(dict.fromkeys(m.name for m in resolve_modes(list(self.modes))))

    def expand(self) -> list[AdaptConfig]:
        """Every configuration of the grid, each once, in :data:`GRID_AXES` order. Checks every one
        (backbone and mode names, numbers, dataset names, each resolution against each backbone on
        ``meta``, batch 1 with BatchNorm) before returning, so a bad value fails before any slow work or
        queued job; ``ValueError`` says which."""
        for name, values in (
            ("backbones", self.backbones),
            ("modes", self.modes),
            ("datasets", self.datasets),
            ("resolutions", self.resolutions),
            ("seeds", self.seeds),
            ("steps", self.steps),
        ):
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                # a lone string would be read letter by letter ("unknown backbone 'd'")
                raise ValueError(f"{name} must be a list of values, e.g. [{values!r}], got {values!r}")
            if not values:
                raise ValueError(f"a sweep needs at least one value in {name}")
        for resolution in self.resolutions:
            if resolution is not None:
                L.RESOLUTION.check(resolution)  # before a size is tried on a backbone: 64.5 px is not a size
        for dataset in dict.fromkeys(self.datasets):
            check_dataset_name(dataset)
        for backbone in dict.fromkeys(self.backbones):  # a size the backbone cannot run at: refused now
            for resolution in dict.fromkeys(int(r) for r in self.resolutions if r):
                problem = resolution_problem(backbone, resolution)
                if problem:
                    raise ValueError(problem)
        configs: dict[str, AdaptConfig] = {}
        for backbone, dataset, resolution, steps, mode, seed in itertools.product(
            self.backbones, self.datasets, self.resolutions, self.steps, self.mode_names(), self.seeds
        ):
            if resolution is not None and resolution == own_resolution(backbone):
                resolution = None  # the backbone's own size, written out: the same run as `own`
            config = replace(
                self.base,
                backbone=backbone,
                dataset=dataset,
                resolution=resolution,
                steps=steps,
                epochs=None,
                mode=mode,
                seed=seed,
            )
            config.validate()
            configs.setdefault(config_key(config), config)
        if self.base.batch_size == 1 and not self.base.group_norm:
            _check_batch_one(configs.values())
        return list(configs.values())


def _check_batch_one(configs: Iterable[AdaptConfig]) -> None:
    """Batch 1 with BatchNorm fails in a run wherever a feature map shrinks to 1x1 (and the mode trains
    with batch statistics): refuse such a grid now, naming the configuration, not after each run loaded
    its data. One shape-only check (:func:`~tinytl_core.adapt.check_setup`) per backbone, mode and
    resolution; a mode that does not apply is left to the sweep (it reports it as not applicable)."""
    seen = set()
    for config in configs:
        setup = (config.backbone, config.mode, config.resolution)
        if setup in seen:
            continue
        seen.add(setup)
        try:
            check_setup(config)
        except ModeNotApplicable:
            continue
        except ValueError as exc:
            size = f"{config.resolution} px" if config.resolution else "its own resolution"
            raise ValueError(f"{config.backbone} in mode {config.mode} at {size}: {exc}") from None


def not_applicable(configs: Iterable[AdaptConfig]) -> dict[str, str]:
    """Key -> why, for each configuration whose mode does not apply to its backbone (a lite residual mode
    on a ViT, sparse update with GroupNorm): each backbone's modes applied once per resolution and
    normalisation on the ``meta`` device (:func:`~tinytl_core.modes.compare_trainable`). The CLI's dry
    run says so; the app queues none of them (they would only fail in a worker)."""
    reasons: dict[tuple, dict[str, str]] = {}
    out = {}
    for config in configs:
        backbone, resolution, group_norm = setup = (config.backbone, config.resolution, config.group_norm)
        if setup not in reasons:
            results = compare_trainable(backbone, resolution=resolution, group_norm=group_norm)
            reasons[setup] = {r.mode: r.reason for r in results if not r.applicable}
        if config.mode in reasons[setup]:
            out[config_key(config)] = reasons[setup][config.mode]
    return out


def finished_keys(store: ResultsStore, keys: Iterable[str] | None = None) -> dict[str, int]:
    """Key -> id of the newest finished run in ``store`` for each configuration (only those in ``keys``
    when given). Cancelled, failed and diverged runs do not count: they run again."""
    wanted = set(keys) if keys is not None else None
    out: dict[str, int] = {}
    for run in store.list_runs(status=RunStatus.FINISHED.value):  # newest first
        if not run.get("config"):
            continue
        key = config_key(run["config"])
        if (wanted is None or key in wanted) and key not in out:
            out[key] = int(run[RUN.id])
    return out
