"""``python -m tinytl_core adapt``: run a short adaptation in one mode (or every mode) and store it."""

from __future__ import annotations

import argparse

import torch
from tqdm.auto import tqdm

from tinytl_core import limits as L
from tinytl_core.adapt import (
    OPTIMIZERS,
    SCHEDULES,
    AdaptConfig,
    EvalEvent,
    PhaseEvent,
    StepEvent,
    adapt,
    check_setup,
)
from tinytl_core.backbones import default_backbone
from tinytl_core.cli.args import add_db_option, add_image_caps, bounded, check_resolution
from tinytl_core.cli.runs import COLUMNS
from tinytl_core.data import check_dataset_name, dataset_display_name, load_dataset
from tinytl_core.memory import MemoryLimitError
from tinytl_core.modes import ModeNotApplicable, get_mode, resolve_modes
from tinytl_core.quantities import RunStatus
from tinytl_core.reports import frame_text
from tinytl_core.results import RUN, ResultsStore, run_table
from tinytl_core.sparse_scheme import SparseScheme, read_scheme


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``adapt`` command."""
    d = AdaptConfig()
    p = sub.add_parser(
        "adapt",
        help="train a backbone in a fine-tuning mode on a dataset, record the run",
        description="Short adaptation with accuracy and memory figures, stored in the "
        "results database (see the `runs` command).",
    )
    p.add_argument(
        "--model",
        default=default_backbone(),
        help="shipped or timm architecture (default: %(default)s, the demo backbone, offline)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--mode", default=None, help=f"fine-tuning mode (default: {d.mode})")
    which.add_argument(
        "--modes",
        default=None,
        help="'all' or a comma-separated list: run each in turn and print a comparison table",
    )
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help="built-in or torchvision name, image folder or .zip of one (default: %(default)s)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=bounded(L.STEPS), default=None, help=f"optimisation steps (default: {d.steps})"
    )
    budget.add_argument("--epochs", type=bounded(L.EPOCHS), default=None, help="epochs instead of steps")
    p.add_argument(
        "--batch-size",
        type=bounded(L.TRAINING_BATCH_SIZE),
        default=d.batch_size,
        help="images per step (1 allowed)",
    )
    p.add_argument(
        "--lr", type=bounded(L.LEARNING_RATE), default=d.lr, help="learning rate (default: %(default)g)"
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning-rate schedule")
    p.add_argument("--label-smoothing", type=bounded(L.LABEL_SMOOTHING), default=d.label_smoothing)
    p.add_argument(
        "--seed", type=bounded(L.SEED), default=d.seed, help="training seed (init, order, augmentation)"
    )
    p.add_argument(
        "--resolution",
        type=bounded(L.RESOLUTION),
        default=None,
        help="input size in px (default: the model's own, e.g. 64 for the demo backbone)",
    )
    add_image_caps(p)
    p.add_argument(
        "--val-fraction",
        type=bounded(L.VALIDATION_FRACTION),
        default=d.val_fraction,
        help="share held out for validation where the set has no official split",
    )
    p.add_argument(
        "--eval-every",
        type=bounded(L.EVAL_EVERY),
        default=d.eval_every,
        help="also evaluate every N steps (default 0: only at the end)",
    )
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="random init instead of pretrained weights",
    )
    p.add_argument(
        "--group-norm",
        action="store_true",
        help="GroupNorm + weight standardisation instead of BatchNorm (the paper's recipe for batch size 1)",
    )
    p.add_argument(
        "--frozen-weight-bits",
        dest="weight_bits",
        type=int,
        choices=(8, 32),
        default=32,
        help="8: store frozen conv/linear weights as 8-bit codes, dequantised on the fly (~4x less weight "
        "memory); 32: float (default)",
    )
    p.add_argument(
        "--weight-quantization",
        choices=("kmeans", "linear"),
        default="kmeans",
        help="how 8-bit codes are made: k-means, 256 centroids per layer (the paper's), or linear",
    )
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no training augmentation")
    p.add_argument("--no-memory", dest="record_memory", action="store_false", help="skip the memory figures")
    p.add_argument(
        "--no-measure",
        dest="measure_memory",
        action="store_false",
        help="model memory only; do not measure real steps",
    )
    p.add_argument(
        "--no-engine",
        dest="engine",
        action="store_false",
        help="train with stock PyTorch layers instead of the training engine's (same gradients, "
        "more stored for backward)",
    )
    p.add_argument(
        "--sparse-scheme",
        default=None,
        metavar="FILE.json",
        help='mode sparse: the scheme to train, e.g. {"bias_blocks": 8, "weights": {"conv_head": "1/4"}} '
        "(from `sparse-search` or written by hand; default: the backbone's default scheme)",
    )
    add_db_option(p)
    p.add_argument("--no-save", dest="save", action="store_false", help="do not store the run(s)")
    p.add_argument("--threads", type=bounded(L.THREADS), default=None, help="torch CPU threads")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace, mode: str, scheme: SparseScheme | None = None) -> AdaptConfig:
    steps = args.steps if args.steps is not None else (None if args.epochs is not None else AdaptConfig.steps)
    # The flags are named after the configuration's fields, except the backbone (--model) and what the
    # command resolves itself (mode, steps, the scheme read from --sparse-scheme's file).
    return AdaptConfig.from_dict(
        {
            **vars(args),
            "backbone": args.model,
            "mode": mode,
            "steps": steps,
            "sparse_scheme": scheme.to_dict() if scheme is not None and get_mode(mode).sparse else None,
        }
    )


class _Bar:
    """Turns progress events into a tqdm bar (one per run) and printed notes."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, event: PhaseEvent | StepEvent | EvalEvent) -> None:
        if isinstance(event, StepEvent):
            if self.bar is None:
                self.bar = tqdm(total=event.total_steps, desc=self.label, unit="step", leave=True)
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{event.loss:.3f}",
                acc=f"{100 * event.train_acc:.0f}%",
                ips=f"{event.images_per_s:.1f}",
                refresh=False,
            )
        elif isinstance(event, EvalEvent):
            text = f"  step {event.step}: val acc {100 * event.val_acc:.1f}%, val loss {event.val_loss:.3f}"
            (self.bar.write if self.bar is not None else print)(text)
        elif event.phase in ("model", "memory"):
            print(f"  {event.message}")
        elif event.phase == "note":
            print(f"  note: {event.message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    """Run the adaptation(s); exit 1 if one failed or diverged, 130 if cancelled (Ctrl-C).

    Every argument is checked first (backbone, modes, dataset name, numbers, resolution), before the
    dataset or a model is loaded."""
    if args.modes is not None:  # given, even empty: resolve_modes refuses "" and ","
        modes = [m.name for m in resolve_modes(args.modes)]
    else:
        modes = [args.mode or AdaptConfig.mode]
    if args.weight_quantization != "kmeans" and args.weight_bits == 32:  # would do nothing: said
        raise ValueError("--weight-quantization makes 8-bit frozen weights: give --frozen-weight-bits 8 too")
    if args.eval_every and args.steps is not None and args.eval_every >= args.steps:
        raise ValueError(
            f"--eval-every {args.eval_every} never evaluates before the end of {args.steps} steps (the end "
            "always does): give fewer steps between evaluations, or leave it out"
        )
    scheme = read_scheme(args.sparse_scheme) if args.sparse_scheme else None
    if scheme is not None and not any(get_mode(m).sparse for m in modes):
        raise ValueError("--sparse-scheme needs mode sparse (--mode sparse or sparse in --modes)")
    configs = [_config(args, m, scheme) for m in modes]
    for config in configs:
        config.validate()  # every configuration before the first (possibly long) run
    check_dataset_name(args.dataset)
    check_resolution(args.model, args.resolution)
    notes: list[str] = []
    runnable = []
    for config in configs:  # each model on `meta` (shapes only), before the dataset loads
        try:
            check_setup(config)
        except ModeNotApplicable as exc:
            if len(configs) == 1:
                raise
            notes.append(f"{config.mode}: skipped ({exc})")
            continue
        except ValueError as exc:
            raise ValueError(f"mode {config.mode}: {exc}" if len(configs) > 1 else str(exc)) from None
        runnable.append(config)
    if args.threads:
        torch.set_num_threads(args.threads)
    store = ResultsStore(args.db) if args.save else None
    data = load_dataset(
        args.dataset,
        val_fraction=args.val_fraction,
        seed=configs[0].split_seed,
        shots=args.shots,
        val_cap=args.val_cap,
        progress=True,
    )
    print(data.summary())
    if data.skipped:
        print(f"  skipped: {', '.join(data.skipped_examples)}{' ...' if data.skipped > 10 else ''}")
    for note in notes:
        print(f"  {note}")
    results = []
    refused = 0  # modes whose step does not fit in memory: the others still run
    for config in runnable:
        print(f"{config.backbone} / {config.mode} / {dataset_display_name(config.dataset)}")
        bar = _Bar(config.mode)
        try:
            result = adapt(config, data=data, progress=bar, store=store)
        except ModeNotApplicable as exc:
            if len(configs) == 1:
                raise
            notes.append(f"{config.mode}: skipped ({exc})")
            print(f"  skipped: {exc}")
            continue
        except MemoryLimitError as exc:
            if len(configs) == 1:
                raise
            refused += 1
            notes.append(f"{config.mode}: not trained ({exc})")
            print(f"  not trained: {exc}")
            continue
        finally:
            bar.close()
        results.append(result)
        if result.backbone_message and not result.pretrained_loaded and config.pretrained:
            notes.append(result.backbone_message)
        print(result.summary() + (f"  [run {result.run_id}]" if result.run_id is not None else ""))
        if result.status == RunStatus.CANCELLED:
            break
    if len(results) > 1:
        columns = [c for c in COLUMNS if c not in (RUN.started_at, RUN.backbone, RUN.dataset)]
        frame = run_table([{**r.to_record(), RUN.id: r.run_id} for r in results], columns)
        print()
        print(frame_text(frame))
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    if any(r.status == RunStatus.CANCELLED for r in results):
        return 130
    return 1 if refused or any(r.status.unsuccessful for r in results) else 0
