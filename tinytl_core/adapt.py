"""The short adaptation loop: train a backbone in one fine-tuning mode on a dataset, with live progress.

:func:`adapt` is built to be driven from a worker thread (the app) or the CLI:

- ``progress(event)`` is called with small frozen dataclasses: :class:`PhaseEvent` (setup stages),
  :class:`StepEvent` after every optimisation step and :class:`EvalEvent` after every evaluation;
- ``cancel`` (a ``threading.Event``) is checked before every step and every evaluation batch; a cancelled
  run returns what it did so far with status :attr:`RunStatus.CANCELLED` (Ctrl-C does the same);
- a run that diverges stops with status :attr:`RunStatus.DIVERGED` and a message that says what to change:
  a non-finite training or validation loss at once, a training loss far above its start
  (:data:`EXPLODED_FACTOR`) for :data:`DIVERGED_PATIENCE` steps in a row, a validation loss that far
  above it at any evaluation (so a run too short for the patience is caught too), or a validation accuracy
  that collapses to chance after it had been well above (a NaN is one way of diverging, so it is the same
  status, not ``failed``);
- a setting the code adjusts is recorded as it ran and said (``AdaptResult.notes``, also in ``message``
  and as a ``PhaseEvent("note", ...)``): a batch larger than the training set trains on the whole set and
  records that batch (memory figures and images/s at it); epochs rounded to whole steps; shots / val_cap
  larger than the data; a resolution other than asked; a resolution so small the feature maps collapse;
- with ``store`` the run is written to the :class:`~tinytl_core.results.ResultsStore` in one transaction,
  whatever its outcome (an unexpected error is recorded as failed, then re-raised).

Same seed, same data, CPU: same history and accuracy. Note that the seed is applied to torch's global
random generator (torchvision's augmentations draw from it), so do not run two adaptations in parallel
threads of one process when you need reproducibility.
"""

from __future__ import annotations

import copy
import math
import numbers
import platform
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from tinytl_core import __version__
from tinytl_core import limits as L
from tinytl_core.backbones import (
    check_backbone_name,
    default_backbone,
    plain_shape_error,
    small_resolution_warning,
)
from tinytl_core.data import (
    DatasetSplits,
    attach_transforms,
    canonical_dataset_name,
    check_dataset_name,
    dataset_display_name,
    load_dataset,
)
from tinytl_core.engine import is_converted
from tinytl_core.engine.quantized import WeightQuantization, check_weight_bits
from tinytl_core.memory import (
    MemoryLimitError,
    MemoryReport,
    analyze,
    memory_problem,
    training_memory_figures,
)
from tinytl_core.modes import get_mode, prepare_model
from tinytl_core.quantities import RunMemory, RunStatus, format_bytes
from tinytl_core.results import ResultsStore
from tinytl_core.sparse_scheme import SparseScheme

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
TRAIN_ACC_WINDOW = 20
"""Steps over which :attr:`StepEvent.train_acc` is averaged (a running window)."""
EXPLODED_FACTOR = 10.0
"""A loss above this many times its reference (the larger of the first step's loss and ln(classes), the
loss of a uniform guess) counts as exploded."""
DIVERGED_PATIENCE = 5
"""Steps in a row with an exploded loss after which a run stops as diverged."""


class DivergedError(RuntimeError):
    """Training diverged: the loss exploded or became non-finite, or the accuracy collapsed."""


class NonFiniteLossError(DivergedError):
    """The training loss became NaN or infinite (one way of diverging)."""


def _advice(config: AdaptConfig) -> str:
    return f"Try a lower learning rate (now {config.lr:g}){' or Adam' if config.optimizer == 'sgd' else ''}."


_WHOLE_NUMBER_FIELDS = (
    "steps", "batch_size", "seed", "resolution", "split_seed", "shots", "val_cap", "eval_every",
    "eval_batch_size", "weight_bits",
)  # fmt: skip
_REAL_NUMBER_FIELDS = ("epochs", "lr", "momentum", "weight_decay", "label_smoothing", "val_fraction")


@dataclass
class AdaptConfig:
    """Everything that defines one adaptation run (stored with the run as JSON).

    Give ``steps`` or ``epochs`` (set the other to None). ``resolution=None`` uses the backbone's own
    input size. ``eval_every=0`` evaluates only at the end. ``device="auto"`` picks CUDA when present.
    ``record_memory`` computes the modelled memory figures and, with ``measure_memory``, measures a real
    step (stock PyTorch layers and the training engine's); turn it off for quick experiments and tests.
    ``engine`` trains on the training engine's layers (:func:`tinytl_core.engine.convert`: same outputs
    and gradients as stock PyTorch, less stored for backward); False trains with stock PyTorch layers.
    ``group_norm``: GroupNorm + weight standardisation, the paper's recipe for batch size 1.
    ``weight_bits=8`` stores the frozen conv and linear weights as 8-bit codes (``weight_quantization``
    ``kmeans`` or ``linear``), dequantised on the fly: about 4x less weight memory, a small accuracy effect.
    """

    backbone: str = field(default_factory=default_backbone)
    mode: str = "lite_residual+bias"
    dataset: str = "shapes"
    steps: int | None = 200
    epochs: float | None = None
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    schedule: str = "cosine"
    seed: int = 0
    resolution: int | None = None
    pretrained: bool = True
    group_norm: bool = False
    augment: bool = True
    val_fraction: float = 0.2
    split_seed: int = 0
    shots: int | None = None
    val_cap: int | None = None
    eval_every: int = 0
    eval_batch_size: int = 32
    device: str = "auto"
    record_memory: bool = True
    measure_memory: bool = True
    engine: bool = True
    weight_bits: int = 32  # 8: frozen conv/linear weights as 8-bit codes (tinytl_core.engine.quantized)
    weight_quantization: str = "kmeans"  # how 8-bit codes are made: kmeans (the paper's) or linear
    sparse_scheme: dict[str, Any] | None = None  # mode "sparse": its scheme as JSON data (None: default)

    def __post_init__(self) -> None:
        self.dataset = canonical_dataset_name(self.dataset)  # "SHAPES" is "shapes": one configuration
        # A whole number given as a float (1.0, or a NumPy integer from a table) is that int: one
        # configuration, one config_key, whatever type it came in (a sweep of seeds [1, 1.0] trained both).
        # Any other real number (np.float32, Fraction) is a plain float: the configuration is stored as
        # JSON and keyed by it.
        for name in (*_WHOLE_NUMBER_FIELDS, *_REAL_NUMBER_FIELDS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue  # refused by validate as not a number
            if isinstance(value, numbers.Integral):
                setattr(self, name, int(value))
            elif name in _WHOLE_NUMBER_FIELDS and math.isfinite(value) and float(value).is_integer():
                setattr(self, name, int(value))
            elif type(value) is not float:
                setattr(self, name, float(value))

    def scheme(self) -> SparseScheme | None:
        """The sparse-update scheme given (None: the mode's default); SchemeError if malformed."""
        return SparseScheme.from_dict(self.sparse_scheme) if self.sparse_scheme is not None else None

    def validate(self) -> None:
        """Raise ``ValueError`` with a helpful message for an inconsistent configuration (cheap: no data
        and no model are loaded, so callers check every configuration before any slow work)."""
        check_backbone_name(self.backbone)
        mode = get_mode(self.mode)
        if self.sparse_scheme is not None:
            if not mode.sparse:
                raise ValueError(f"a sparse-update scheme needs mode 'sparse', not {self.mode!r}")
            self.scheme()  # malformed schemes fail here; layers are checked against the model later
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give either steps or epochs (exactly one of them)")
        # every number within its range (tinytl_core.limits: the CLI's argument types use the same);
        # None only where it means something (steps or epochs, the backbone's own size, all images)
        for value, limit in (
            (self.steps, L.STEPS),
            (self.epochs, L.EPOCHS),
            (self.resolution, L.RESOLUTION),
            (self.shots, L.IMAGES_PER_CLASS),
            (self.val_cap, L.VALIDATION_IMAGES_PER_CLASS),
        ):
            if value is not None:
                limit.check(value)
        for value, limit in (
            (self.batch_size, L.TRAINING_BATCH_SIZE),
            (self.eval_batch_size, L.TRAINING_BATCH_SIZE),
            (self.lr, L.LEARNING_RATE),
            (self.seed, L.SEED),
            (self.split_seed, L.SEED),
            (self.eval_every, L.EVAL_EVERY),
            (self.label_smoothing, L.LABEL_SMOOTHING),
            (self.val_fraction, L.VALIDATION_FRACTION),
            (self.momentum, L.MOMENTUM),
            (self.weight_decay, L.WEIGHT_DECAY),
        ):
            limit.check(value)  # None included: "... must be a number, got None"
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        check_weight_bits(self.weight_bits)
        WeightQuantization.parse(self.weight_quantization)
        resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdaptConfig:
        """Rebuild a configuration (e.g. from a stored run, or from settings holding more than it: CLI
        arguments named after its fields, a search's settings), ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class PhaseEvent:
    """A setup stage started: ``phase`` is data, model, memory, train or eval."""

    phase: str
    message: str
    elapsed_s: float


@dataclass(frozen=True)
class StepEvent:
    """After one optimisation step. ``train_acc`` is the accuracy over the last
    :data:`TRAIN_ACC_WINDOW` steps; ``images_per_s`` counts training time only (no evaluation)."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    train_acc: float
    lr: float
    images_per_s: float
    elapsed_s: float


@dataclass(frozen=True)
class EvalEvent:
    """After one evaluation on the validation split (``final`` for the one at the end)."""

    step: int
    total_steps: int
    val_acc: float
    val_loss: float
    elapsed_s: float
    final: bool = False


ProgressEvent = PhaseEvent | StepEvent | EvalEvent
ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class AdaptResult:
    """What one run did. ``status`` is finished, cancelled, failed or diverged (``message`` says why);
    ``memory`` the run's memory figures (None when not recorded; ``memory_error`` says why when they
    failed). ``batch_size`` is the batch that ran (the config keeps the one asked for); ``notes`` say every
    setting the run adjusted and every warning about it (also appended to ``message``)."""

    config: AdaptConfig
    status: RunStatus = RunStatus.FAILED
    message: str = ""
    device: str = ""
    num_classes: int = 0
    n_train: int = 0
    n_val: int = 0
    skipped_files: int = 0
    resolution: int = 0
    batch_size: int = 0
    group_norm: bool | None = None  # whether GroupNorm replaced BatchNorm (None: not set up yet)
    notes: list[str] = field(default_factory=list)
    images_seen: int = 0
    steps_planned: int = 0
    steps_done: int = 0
    epochs_done: float = 0.0
    n_trainable: int = 0
    n_total: int = 0
    engine_layers: int = 0  # layers that ran on the training engine (0: stock PyTorch layers)
    pretrained_loaded: bool = False
    backbone_message: str = ""
    final_val_acc: float | None = None
    final_val_loss: float | None = None
    best_val_acc: float | None = None
    final_train_acc: float | None = None
    memory: RunMemory | None = None
    memory_error: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    setup_time_s: float = 0.0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    total_time_s: float = 0.0
    images_per_s: float = 0.0
    started_at: str = ""
    ended_at: str = ""
    run_id: int | None = None

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)
        if isinstance(self.memory, dict):  # figures read back from a stored run
            self.memory = RunMemory.from_dict(self.memory)

    @property
    def steps(self) -> list[dict[str, Any]]:
        """History entries of the optimisation steps."""
        return [h for h in self.history if h["kind"] == "step"]

    @property
    def evals(self) -> list[dict[str, Any]]:
        """History entries of the evaluations."""
        return [h for h in self.history if h["kind"] == "eval"]

    def summary(self) -> str:
        """One line: mode, accuracy, memory, time, status."""
        c = self.config
        acc = "-" if self.final_val_acc is None else f"{100 * self.final_val_acc:.1f}%"
        mem, m = "", self.memory
        if m is not None:
            mem = f", memory {format_bytes(m.total_modelled_bytes)} modelled"
            if m.total_measured_bytes is not None:
                mem += f" / {format_bytes(m.total_measured_bytes)} measured"
        layers = "engine" if self.engine_layers else "stock layers"
        text = (
            f"{c.backbone} {c.mode} on {dataset_display_name(c.dataset)}: val acc {acc} after "
            f"{self.steps_done} steps{mem}, {self.total_time_s:.1f} s ({self.images_per_s:.1f} img/s, "
            f"{layers}) [{self.status}]"
        )
        return text + (f": {self.message}" if self.message else "")

    def to_record(self) -> dict[str, Any]:
        """The row written to the results store: its columns (memory figures included) and JSON fields."""
        c = self.config
        memory = asdict(self.memory) if self.memory is not None else None
        record = {
            "status": self.status,
            "message": self.message,
            "backbone": c.backbone,
            "mode": c.mode,
            "dataset": c.dataset,
            "batch_size": self.batch_size or c.batch_size,
            "optimizer": c.optimizer,
            "lr": c.lr,
            "label_smoothing": c.label_smoothing,
            "seed": c.seed,
            "pretrained": c.pretrained,
            "group_norm": c.group_norm if self.group_norm is None else self.group_norm,  # what ran
            "weight_bits": c.weight_bits,
            "config": c.to_dict(),
            "history": self.history,
            "versions": versions(),
            "memory": memory
            if memory is not None
            else ({"error": self.memory_error} if self.memory_error else None),
            **(memory or {}),
        }
        for name in (
            "num_classes",
            "n_train",
            "n_val",
            "skipped_files",
            "resolution",
            "steps_planned",
            "steps_done",
            "epochs_done",
            "device",
            "pretrained_loaded",
            "n_trainable",
            "n_total",
            "final_val_acc",
            "final_val_loss",
            "best_val_acc",
            "final_train_acc",
            "setup_time_s",
            "train_time_s",
            "eval_time_s",
            "total_time_s",
            "images_per_s",
            "started_at",
            "ended_at",
        ):
            record[name] = getattr(self, name)
        return record


def versions() -> dict[str, str]:
    """Library versions recorded with each run."""
    import numpy
    import timm
    import torchvision

    return {
        "tinytl_core": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
    }


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; other values are checked (``ValueError`` if unusable:
    not a CPU or CUDA device, no CUDA, no GPU of that index)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unknown = f"unknown device {device!r}: use auto, cpu, cuda or cuda:N (N: the GPU's index)"
    if not isinstance(device, (str, torch.device)):
        raise ValueError(unknown)
    try:
        dev = torch.device(device)
    except RuntimeError:  # PyTorch lists every device type it knows (ipu, mkldnn, ...): not for users
        raise ValueError(unknown) from None
    if dev.type == "meta":
        raise ValueError("cannot train on the meta device")
    if dev.type not in ("cpu", "cuda"):  # the engine and the memory measurements know these two
        raise ValueError(unknown)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"there is no GPU {dev.index}: this machine has {torch.cuda.device_count()}")
    return dev


class _Cancelled(Exception):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _optimizer_state(config: AdaptConfig) -> str:
    """The optimizer's state as the memory model names it (plain SGD keeps none)."""
    return config.optimizer if config.optimizer == "adam" or config.momentum else "none"


def _check_fits(
    model: nn.Module, config: AdaptConfig, resolution: int, batch_size: int, device: torch.device
) -> MemoryReport | None:
    """The model's report of this configuration, after refusing (:class:`MemoryLimitError`) a step whose
    modelled peak does not fit in the memory free on ``device`` -- before training, where it would end
    in the out-of-memory killer or a CUDA error. The weights are already there, so they are not counted
    again. None (no check) for a model the memory model cannot trace: it still trains."""
    size, optimizer = (3, resolution, resolution), _optimizer_state(config)
    try:
        report = analyze(model, input_size=size, batch_size=batch_size, optimizer=optimizer)
    except Exception:  # noqa: BLE001 -- the memory figures say why, if they are recorded
        return None
    t = report.totals
    peak = t.total_modelled_bytes if is_converted(model) else t.total_stock_bytes
    what = f"Training {config.backbone} in mode {config.mode} at batch {batch_size}, {resolution} px"
    problem = memory_problem(peak - t.weights_bytes, device, what=what)
    if problem:
        raise MemoryLimitError(problem)
    return report


def _memory_figures(
    model: nn.Module, config: AdaptConfig, resolution: int, batch_size: int, report: MemoryReport | None
) -> RunMemory:
    """Modelled (and measured) memory of this configuration, leaving the model and RNG as they were."""
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        return training_memory_figures(
            model,
            input_size=(3, resolution, resolution),
            batch_size=batch_size,
            optimizer=_optimizer_state(config),
            measure=config.measure_memory,
            report=report,
        )
    finally:
        model.load_state_dict(state)
        for p in model.parameters():
            p.grad = None
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    cancel: threading.Event | None,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy over a loader (raises _Cancelled when asked to stop)."""
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader:
            if cancel is not None and cancel.is_set():
                raise _Cancelled
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    return correct / max(1, total), loss_sum / max(1, total)


def _make_optimizer(params: list[nn.Parameter], config: AdaptConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def explained_message(exc: BaseException) -> str | None:
    """The library's own message for a problem it explains (a ``ValueError`` or ``RuntimeError``: bad
    settings, data unavailable, a diverging loss), without Python's class name; None for anything else
    (e.g. an ``OSError``, whose text may hold server paths)."""
    if isinstance(exc, (ValueError, RuntimeError)) and not isinstance(exc, OSError) and str(exc):
        return str(exc)
    return None


def is_small_batch_error(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch's refusal of batch statistics over one value per channel (BatchNorm in
    training at batch 1 where a feature map is 1x1): the case :func:`small_batch_problem` explains."""
    return isinstance(exc, ValueError) and "more than 1 value per channel" in str(exc)


def small_batch_problem(batch_size: int, resolution: int | None) -> str:
    """What to change when BatchNorm layers using batch statistics see one value per channel (the message
    of every place that trains or measures a step: adapt, the Adapt page, sweeps, the Memory Explorer)."""
    at = f" at {resolution} px" if resolution else ""
    return (
        f"batch size {batch_size} is too small for BatchNorm layers that use batch statistics{at} (a "
        "feature map shrinks to 1x1); use a larger batch or resolution, GroupNorm + weight standardisation, "
        "or a mode with a frozen backbone"
    )


def check_setup(config: AdaptConfig, num_classes: int = 10) -> None:
    """Refuse, before any data is loaded, a configuration that would fail once its model is built.

    Builds ``config``'s model in its mode on the ``meta`` device (shapes only: no memory, no weights) and
    runs one training-mode forward at its batch size and resolution. Raises
    :class:`~tinytl_core.modes.ModeNotApplicable` when the mode does not apply (e.g. a lite residual mode
    on a ViT, sparse update with GroupNorm), ``ValueError`` when batch statistics of the batch are
    meaningless (a feature map shrinks to 1x1) or the input does not go through the model. The batch the
    run trains at may still shrink to a small training set (:func:`adapt` then says so).
    """
    config.validate()
    prepared = prepare_model(
        config.backbone,
        config.mode,
        num_classes=num_classes,
        resolution=config.resolution,
        group_norm=config.group_norm,
        device="meta",
        engine=False,  # the engine's layers compute the same shapes; skip the conversion
        sparse_scheme=config.scheme(),
    )
    channels, height, width = prepared.data.input_size
    model = prepared.model.train()
    try:
        with torch.no_grad():
            model(torch.empty(config.batch_size, channels, height, width, device="meta"))
    except ValueError as exc:
        if is_small_batch_error(exc):
            raise ValueError(small_batch_problem(config.batch_size, height)) from None
        raise
    except (RuntimeError, AssertionError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{config.backbone} in mode {config.mode} does not run at {height} px, batch "
            f"{config.batch_size}: {plain_shape_error(first)}"
        ) from None


def adapt(
    config: AdaptConfig,
    *,
    data: DatasetSplits | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    store: ResultsStore | None = None,
) -> AdaptResult:
    """Run one short adaptation and return its :class:`AdaptResult` (also stored when ``store`` is given).

    Args:
        config: what to train and how.
        data: an already loaded dataset (e.g. to share one between runs); default: load
            ``config.dataset``. Its transforms are replaced by the backbone's.
        progress: called with :class:`PhaseEvent`, :class:`StepEvent` and :class:`EvalEvent`.
        cancel: set it (from any thread) to stop at the next step.
        store: results store to record the run in.

    Setup errors (unknown backbone/dataset, mode not applicable, dataset unavailable) raise before
    anything is recorded. A diverging run (non-finite or exploded loss, collapsed accuracy) returns status
    diverged; any other error during the run is recorded as failed and re-raised.
    """
    config.validate()
    if data is None:
        check_dataset_name(config.dataset)  # an unknown name fails before anything slow
        check_setup(config)  # so does a model that cannot train so (well under a second, on meta)
    emit = progress or (lambda event: None)
    t0 = time.perf_counter()
    result = AdaptResult(config=config, started_at=_now())
    device = resolve_device(config.device)
    result.device = str(device)

    def phase(name: str, message: str) -> None:
        emit(PhaseEvent(name, message, time.perf_counter() - t0))

    # ----------------------------------------------------------------------------------- setup
    phase("data", f"loading {dataset_display_name(config.dataset)}")
    if data is None:
        data = load_dataset(
            config.dataset,
            val_fraction=config.val_fraction,
            seed=config.split_seed,
            shots=config.shots,
            val_cap=config.val_cap,
        )
    torch.manual_seed(config.seed)
    phase("model", f"building {config.backbone} in mode {config.mode}")
    prepared = prepare_model(
        config.backbone,
        config.mode,
        num_classes=data.num_classes,
        pretrained=config.pretrained,
        resolution=config.resolution,
        group_norm=config.group_norm,
        device=device,
        engine=config.engine,
        weight_bits=config.weight_bits,
        weight_quantization=config.weight_quantization,
        sparse_scheme=config.scheme(),
    )
    model = prepared.model
    if prepared.result.scheme is not None:  # say what a sparse update trains (the default, or the one given)
        phase("model", f"sparse update: {prepared.result.scheme.describe(model)}")
    result.resolution = attach_transforms(
        data, prepared.data, resolution=config.resolution, augment=config.augment
    )
    result.num_classes, result.n_train, result.n_val = data.num_classes, len(data.train), len(data.val)
    result.skipped_files = data.skipped
    result.n_trainable, result.n_total = prepared.result.n_trainable, prepared.result.n_total
    result.engine_layers = prepared.result.engine_layers
    result.group_norm = config.group_norm and prepared.result.group_norms > 0
    result.pretrained_loaded = bool(prepared.status.pretrained_loaded)
    result.backbone_message = prepared.status.message
    if config.pretrained and not result.pretrained_loaded:
        phase("model", prepared.status.message)  # say it before training, not only in the result
    if len(data.train) == 0 or len(data.val) == 0:
        raise ValueError(f"{data.summary()}: need at least one training and one validation image")

    batch = result.batch_size = min(config.batch_size, len(data.train))
    per_epoch = len(data.train) // batch
    total = config.steps if config.steps is not None else max(1, math.ceil(config.epochs * per_epoch))
    result.steps_planned = total
    for note in _adjustments(config, data, result, per_epoch):
        result.notes.append(note)
        phase("note", note)
    gen = torch.Generator().manual_seed(config.seed)
    train_loader = torch.utils.data.DataLoader(
        data.train, batch_size=batch, shuffle=True, drop_last=True, generator=gen
    )
    val_loader = torch.utils.data.DataLoader(data.val, batch_size=config.eval_batch_size)
    report = _check_fits(model, config, result.resolution, batch, device)  # a setup error: nothing stored

    try:
        if config.record_memory:
            phase("memory", "modelling" + (" and measuring" if config.measure_memory else "") + " memory")
            try:
                result.memory = _memory_figures(model, config, result.resolution, batch, report)
            except Exception as exc:  # the figures are a bonus: a model the tracer cannot handle still trains
                result.memory_error = f"{type(exc).__name__}: {exc}"
                phase("memory", f"memory figures unavailable: {result.memory_error}")
        result.setup_time_s = time.perf_counter() - t0
        _train(
            model, config, data, train_loader, val_loader, device, total, per_epoch, emit, cancel, result, t0
        )
    except DivergedError as exc:
        result.status, result.message = RunStatus.DIVERGED, str(exc)
    except (_Cancelled, KeyboardInterrupt):
        result.status = RunStatus.CANCELLED
        result.message = f"cancelled after {result.steps_done} of {total} steps"
    except Exception as exc:
        result.status = RunStatus.FAILED
        result.message = explained_message(exc) or f"{type(exc).__name__}: {exc}"
        _finish(result, t0, store)
        raise
    _finish(result, t0, store)
    return result


def _adjustments(config: AdaptConfig, data: DatasetSplits, result: AdaptResult, per_epoch: int) -> list[str]:
    """What this run does differently from what ``config`` asked, and warnings about it, one line each."""
    notes = []
    n_train = len(data.train)
    if config.group_norm and not result.group_norm:
        notes.append(
            f"GroupNorm + weight standardisation was asked for, but {config.backbone} has no BatchNorm to "
            "replace (its normalisation works per sample already): it trained as it is, recorded so"
        )
    if result.batch_size < config.batch_size:
        notes.append(
            f"batch size {config.batch_size} is larger than the {n_train} training images: each "
            f"step trains on all {n_train} (recorded as batch {result.batch_size})"
        )
    if config.epochs is not None and not math.isclose(result.steps_planned / per_epoch, config.epochs):
        notes.append(
            f"{config.epochs:g} epochs asked for: {result.steps_planned} whole step(s) of "
            f"{result.batch_size} images make {result.steps_planned / per_epoch:.3g} epochs"
        )
    caps = ((config.shots, data.train, "training"), (config.val_cap, data.val, "validation"))
    for asked, split, what in caps:
        most = max((int(n) for n in split.class_counts()), default=0) if asked is not None else 0
        if asked is not None and most < asked:
            notes.append(
                f"{'shots' if split is data.train else 'val_cap'} {asked} is more than the data "
                f"has: at most {most} {what} images per class are used"
            )
    if config.resolution is not None and result.resolution != config.resolution:
        notes.append(f"resolution {config.resolution} px asked for: the model runs at {result.resolution} px")
    warning = small_resolution_warning(config.backbone, result.resolution)
    if warning:
        notes.append(warning)
    return notes


def _finish(result: AdaptResult, t0: float, store: ResultsStore | None) -> None:
    result.total_time_s = time.perf_counter() - t0
    result.ended_at = _now()
    if result.train_time_s > 0:
        result.images_per_s = result.images_seen / result.train_time_s
    if result.notes:
        result.message = "; ".join(m for m in (result.message, *result.notes) if m)
    if store is not None:
        result.run_id = store.save_run(result.to_record())


def _train(
    model: nn.Module,
    config: AdaptConfig,
    data: DatasetSplits,
    train_loader: Any,
    val_loader: Any,
    device: torch.device,
    total: int,
    per_epoch: int,
    emit: ProgressCallback,
    cancel: threading.Event | None,
    result: AdaptResult,
    t0: float,
) -> None:
    """The optimisation loop; fills ``result`` as it goes so a cancel or failure keeps what was done."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(params, config)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    window: deque[tuple[int, int]] = deque(maxlen=TRAIN_ACC_WINDOW)
    layers = f"{result.engine_layers} layers on the engine" if result.engine_layers else "stock layers"
    emit(
        PhaseEvent(
            "train",
            f"training {result.n_trainable:,} of {result.n_total:,} parameters for {total} "
            f"steps on {result.device} ({layers})",
            time.perf_counter() - t0,
        )
    )

    def evaluate(final: bool) -> None:
        start = time.perf_counter()
        emit(PhaseEvent("eval", f"evaluating on {len(data.val)} images", start - t0))
        try:
            acc, loss = _evaluate(model, val_loader, device, cancel)
        finally:
            result.eval_time_s += time.perf_counter() - start
        best_before = result.best_val_acc or 0.0
        if not math.isfinite(loss):  # the last step(s) made the weights NaN / inf: nothing to record
            # (its accuracy is chance from a NaN model: not a figure of this run; earlier ones stay)
            result.final_val_acc, result.final_val_loss = None, None
            raise NonFiniteLossError(
                f"the validation loss became {loss} at step {result.steps_done}: the weights are no longer "
                f"finite numbers; training stopped. {_advice(config)}"
            )
        result.final_val_acc, result.final_val_loss = acc, loss
        result.best_val_acc = max(acc, result.best_val_acc or 0.0)
        event = EvalEvent(result.steps_done, total, acc, loss, time.perf_counter() - t0, final)
        result.history.append({"kind": "eval", **asdict(event)})
        emit(event)
        check_exploded(loss)
        check_collapse(acc, best_before)

    reference, exploded = None, 0
    chance = 1 / max(1, result.num_classes)

    def check_exploded(val_loss: float) -> None:
        """Diverged when the validation loss is far above where training started: a run too short for
        :data:`DIVERGED_PATIENCE` exploded steps in a row (5 steps at lr 1e6) is still caught."""
        if reference is not None and val_loss > EXPLODED_FACTOR * reference:
            raise DivergedError(
                f"the validation loss exploded to {val_loss:.3g} at step {result.steps_done} (training "
                f"started at {reference:.3g}; more than {EXPLODED_FACTOR:g}x that); training stopped. "
                f"{_advice(config)}"
            )

    def check_collapse(acc: float, best: float) -> None:
        """Diverged when the accuracy falls back to chance after being at least halfway to perfect."""
        if result.num_classes > 1 and best >= chance + 0.5 * (1 - chance) and acc <= 1.1 * chance:
            raise DivergedError(
                f"the validation accuracy collapsed to {100 * acc:.1f}% (chance is {100 * chance:.1f}%) at "
                f"step {result.steps_done}, after {100 * best:.1f}% before; training stopped. "
                f"{_advice(config)}"
            )

    iterator = iter(train_loader)
    for step in range(1, total + 1):
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        start = time.perf_counter()
        try:
            x, y = next(iterator)
        except StopIteration:  # next epoch (the loader reshuffles)
            iterator = iter(train_loader)
            x, y = next(iterator)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        model.train()
        try:
            logits = model(x)
        except ValueError as exc:
            if not is_small_batch_error(exc):
                raise
            raise ValueError(small_batch_problem(len(x), result.resolution)) from None
        loss = criterion(logits, y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the loss became {loss.item()} at step {step}; training stopped. {_advice(config)}"
            )
        value = loss.item()
        if reference is None:
            reference = max(value, math.log(max(2, result.num_classes)))
        exploded = exploded + 1 if value > EXPLODED_FACTOR * reference else 0
        if exploded >= DIVERGED_PATIENCE:
            raise DivergedError(
                f"the loss exploded to {value:.3g} at step {step} (it started at {reference:.3g}; above "
                f"{EXPLODED_FACTOR:g}x that for {exploded} steps in a row); training stopped. "
                f"{_advice(config)}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        window.append((int((logits.detach().argmax(1) == y).sum()), len(y)))
        result.train_time_s += time.perf_counter() - start
        result.images_seen += len(y)
        result.steps_done = step
        result.epochs_done = step / per_epoch
        result.final_train_acc = sum(c for c, _ in window) / sum(n for _, n in window)
        event = StepEvent(
            step,
            total,
            result.epochs_done,
            loss.item(),
            result.final_train_acc,
            lr,
            result.images_seen / result.train_time_s,
            time.perf_counter() - t0,
        )
        result.history.append({"kind": "step", **asdict(event)})
        emit(event)
        if config.eval_every and step % config.eval_every == 0 and step < total:
            evaluate(final=False)
    evaluate(final=True)
    result.status, result.message = RunStatus.FINISHED, ""
