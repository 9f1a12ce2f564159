"""TinyTL and what came after it, measured the same way: one table of memory and accuracy per method.

For mobilenetv2_100 (ReLU6), mobilenetv3_large_100 (h-swish) and efficientnet_b0 (SiLU) at 224 px, batch
8, Adam, CPU, each method as the modes build it (training engine, channels-last):

- the step's **measured peak** (PyTorch's profiler memory timeline, :func:`tinytl_core.memory.measure`,
  the run loop of ``benchmarks/peak.py``) and the activations it **stored** for backward (measured with
  saved-tensor hooks), beside the modelled ones (:func:`tinytl_core.memory.analyze`);
- and, from a short sweep with the shipped demo backbone on a built-in set (:func:`tinytl_core.adapt.adapt`,
  same budget for every method), the validation **accuracy** of each method. The demo backbone is a ReLU6
  network, where MobileTL's backward is exact (its ReLU6 masks are exact 1-bit masks), so MobileTL equals
  ``bias`` there; the cost of its approximation shows on an h-swish network, compared like for like with
  exact ``bias`` (``--smooth-backbone``, random init: no h-swish weights ship offline).

    python benchmarks/methods.py                          # the README table (~10 min on 2 shared cores)
    python benchmarks/methods.py --backbones mobilenetv3_large_100 --modes bias mobiletl --seeds 0

Methods are modes of the registry (:data:`tinytl_core.modes.MODES`); a method named in :data:`METHODS`
that the registry does not hold (yet) is skipped with a note. Target: MobileTL stores at least 40% less
than exact bias-only training on mobilenetv3_large_100 (the paper: 46-53% per inverted residual block).
MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from engine import run_all  # the sibling benchmark script (shared run loop with peak.py)
from tqdm.auto import tqdm

from tinytl_core.adapt import AdaptConfig, adapt
from tinytl_core.backbones import DEMO_BACKBONE
from tinytl_core.data import list_datasets, load_dataset
from tinytl_core.memory import analyze, measure
from tinytl_core.modes import MODES, prepare_model
from tinytl_core.quantities import MB, RunStatus

BACKBONES: tuple[str, ...] = ("mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0")
METHODS: tuple[str, ...] = ("full", "bias", "lite_residual+bias", "mobiletl", "sparse")
"""The methods compared (mode names), in table order. ``sparse`` is each backbone's default sparse-update
scheme (:func:`tinytl_core.sparse_scheme.default_scheme`); a scheme chosen under a budget by the
contribution analysis is benchmarked by ``benchmarks/sparse.py``."""
# Adam learning rate per method for the accuracy sweep (as benchmarks/transfer.py): frozen-backbone
# methods take a larger step, full fine-tuning a smaller one.
LEARNING_RATES: dict[str, float] = {"full": 1e-3}
DEFAULT_LR = 3e-3
MOBILETL_TARGET = 0.40  # MobileTL stores >= 40% less than exact bias-only, mobilenetv3_large_100
SMOOTH_RESOLUTION = 64  # px, the h-swish network of the accuracy-cost runs


@dataclass(frozen=True)
class MemoryRow:
    """One (backbone, method): measured step peak and stored activations, and the modelled ones (bytes)."""

    backbone: str
    mode: str
    n_trainable: int
    peak: int
    stored: int
    modelled_peak: int
    modelled_stored: int
    phase: str


@dataclass(frozen=True)
class AccuracyRun:
    """One adaptation of the accuracy sweep."""

    backbone: str
    mode: str
    seed: int
    val_acc: float
    seconds: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    builtin = [d.name for d in list_datasets(kind="builtin")]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--modes", nargs="+", default=list(METHODS), help="methods (mode names) to compare")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--optimizer", default="adam", choices=["none", "sgd", "adam", "adamw"])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--dataset", default="digits", choices=builtin, help="built-in set of the accuracy sweep")
    p.add_argument("--steps", type=int, default=150, help="optimisation steps per accuracy run (0: no sweep)")
    p.add_argument("--sweep-batch-size", type=int, default=32)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument(
        "--smooth-backbone",
        default="mobilenetv3_small_050",
        help="h-swish network for MobileTL's accuracy cost vs exact bias (random init, 64 px; '' skips)",
    )
    p.add_argument("--out", type=Path, help="also write every row and run as JSON here")
    args = p.parse_args(argv)
    if min(args.resolution, args.batch_size, args.threads, args.sweep_batch_size) < 1 or args.steps < 0:
        raise SystemExit("error: sizes, --threads and --sweep-batch-size must be >= 1, --steps >= 0")
    missing = [m for m in args.modes if m not in MODES]
    if missing:
        print(f"note: skipping methods this version does not have: {', '.join(missing)}")
    args.modes = [m for m in args.modes if m in MODES]
    if not args.modes:
        raise SystemExit(f"error: no known method; choose from {', '.join(MODES)}")
    return args


def bench_memory(backbone: str, mode: str, args: argparse.Namespace) -> MemoryRow:
    """Measure one (backbone, method): the model as the modes build it (engine, channels-last), one
    profiled step (the peak) after one that allocates the optimizer state."""
    torch.manual_seed(0)
    size, batch = (3, args.resolution, args.resolution), args.batch_size
    prepared = prepare_model(backbone, mode, resolution=args.resolution, pretrained=False)
    modelled = analyze(prepared.model, input_size=size, batch_size=batch, optimizer=args.optimizer)
    m = measure(
        prepared.model,
        input_size=size,
        batch_size=batch,
        optimizer=args.optimizer,
        per_layer=False,
        modelled=modelled,
    )
    t = modelled.totals
    return MemoryRow(
        backbone,
        mode,
        prepared.result.n_trainable,
        int(m.step_peak),
        int(m.saved_bytes),
        int(t.total_modelled_bytes),
        int(t.activations_necessary_bytes),
        m.peak_phase,
    )


def sweep_accuracy(args: argparse.Namespace) -> list[AccuracyRun]:
    """Short adaptations of the demo backbone on ``args.dataset``, every method x seed, same budget."""
    if args.steps == 0:
        return []
    data = load_dataset(args.dataset, progress=True)  # loaded once, transforms reset by every run
    jobs = [(DEMO_BACKBONE, m, s) for m in args.modes for s in args.seeds]
    if args.smooth_backbone and "mobiletl" in args.modes:  # the approximation's cost, like for like
        jobs += [(args.smooth_backbone, m, s) for m in ("bias", "mobiletl") for s in args.seeds]
    runs = []
    for backbone, mode, seed in tqdm(jobs, desc=f"accuracy ({args.dataset})", unit="run", dynamic_ncols=True):
        demo = backbone == DEMO_BACKBONE
        config = AdaptConfig(
            backbone=backbone,
            mode=mode,
            dataset=args.dataset,
            steps=args.steps,
            batch_size=args.sweep_batch_size,
            lr=LEARNING_RATES.get(mode, DEFAULT_LR),
            seed=seed,
            pretrained=demo,
            resolution=None if demo else SMOOTH_RESOLUTION,
            record_memory=False,
            device="cpu",
        )
        result = adapt(config, data=data)
        if result.status != RunStatus.FINISHED:
            raise RuntimeError(f"{backbone} {mode} seed {seed}: {result.message}")
        runs.append(AccuracyRun(backbone, mode, seed, float(result.final_val_acc), result.total_time_s))
    return runs


def _accuracy_cell(runs: list[AccuracyRun], mode: str, backbone: str = DEMO_BACKBONE) -> str:
    values = [r.val_acc for r in runs if r.mode == mode and r.backbone == backbone]
    if not values:
        return "–"
    mean = 100 * sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * (max(values) - min(values)) / 2:.1f}"


def table(rows: list[MemoryRow], runs: list[AccuracyRun], args: argparse.Namespace) -> str:
    """One markdown table: per method, per backbone measured peak / stored activations, and accuracy."""
    by_key = {(r.backbone, r.mode): r for r in rows}
    head = "| method | " + " | ".join(f"{b} peak / stored MB" for b in args.backbones)
    head += f" | {args.dataset} accuracy % (demo) |"
    smooth = sorted({r.backbone for r in runs} - {DEMO_BACKBONE})
    head += "".join(f" {args.dataset} accuracy % ({b}, random init) |" for b in smooth)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in args.modes:
        cells = []
        for backbone in args.backbones:
            r = by_key.get((backbone, mode))
            cells.append("–" if r is None else f"{r.peak / MB:.1f} / {r.stored / MB:.1f}")
        cells += [_accuracy_cell(runs, mode)] + [_accuracy_cell(runs, mode, b) for b in smooth]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail(rows: list[MemoryRow]) -> str:
    """Markdown table of every row with the modelled figures beside the measured ones."""
    lines = [
        "| backbone | mode | trainable params | peak MB (modelled, err) | stored MB (modelled) | peak in |",
        "|---|---|---:|---|---|---|",
    ]
    for r in rows:
        err = r.modelled_peak / r.peak - 1
        lines.append(
            f"| {r.backbone} | {r.mode} | {r.n_trainable:,} | {r.peak / MB:.1f} ({r.modelled_peak / MB:.1f}, "
            f"{err:+.0%}) | {r.stored / MB:.1f} ({r.modelled_stored / MB:.1f}) | {r.phase} |"
        )
    return "\n".join(lines)


def targets(rows: list[MemoryRow]) -> list[str]:
    """The MobileTL target line (when its rows were measured)."""
    by_key = {(r.backbone, r.mode): r for r in rows}
    bias, mobiletl = (
        by_key.get(("mobilenetv3_large_100", "bias")),
        by_key.get(("mobilenetv3_large_100", "mobiletl")),
    )
    if bias is None or mobiletl is None:
        return []
    less = 1 - mobiletl.stored / bias.stored
    peak_less = 1 - mobiletl.peak / bias.peak
    return [
        f"- MobileTL stores {less:.0%} less than exact bias-only on mobilenetv3_large_100 "
        f"({'met' if less >= MOBILETL_TARGET else 'NOT met'}, target >= {MOBILETL_TARGET:.0%}); "
        f"its measured step peak is {peak_less:.0%} lower"
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    rows = run_all(args, bench_memory, "methods: memory")
    print("\n" + detail(rows) + "\n")  # before the (long) sweep: nothing measured is lost
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"memory": [asdict(r) for r in rows]}, indent=2) + "\n")
    runs = sweep_accuracy(args)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"\n{args.resolution} px, batch {args.batch_size}, optimizer {args.optimizer}, {args.threads} "
        f"thread(s), CPU, engine layers, MB = 10^6 bytes; peak = the step's measured peak (profiler), "
        f"stored = activations saved for backward (measured)."
    )
    if runs:
        seeds = " ".join(str(s) for s in args.seeds)
        print(
            f"Accuracy: {DEMO_BACKBONE} (pretrained here, offline) on {args.dataset}, {args.steps} steps x "
            f"batch {args.sweep_batch_size}, Adam (lr {DEFAULT_LR:g}, full {LEARNING_RATES['full']:g}), "
            f"seeds {seeds}, validation %, mean ± half range."
            + (
                f" {args.smooth_backbone}: random init, {SMOOTH_RESOLUTION} px, same budget."
                if any(r.backbone != DEMO_BACKBONE for r in runs)
                else ""
            )
        )
    print(f"{minutes:.1f} min\n")
    print(table(rows, runs, args))
    print()
    print("\n".join(targets(rows)))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"memory": [asdict(r) for r in rows], "accuracy": [asdict(r) for r in runs]}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
