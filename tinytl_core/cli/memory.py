"""``python -m tinytl_core memory``: where training memory goes, per fine-tuning mode (modelled, measured)."""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from tqdm.auto import tqdm

from tinytl_core import limits as L
from tinytl_core.adapt import resolve_device
from tinytl_core.backbones import (
    check_backbone_name,
    default_backbone,
)
from tinytl_core.cli.args import bounded, check_output, check_resolution
from tinytl_core.comparisons import mode_reports, table_from_reports
from tinytl_core.memory import (
    ACCOUNTINGS,
    OPTIMIZER_STATES,
    format_modes,
    measure_stock_and_engine,
)
from tinytl_core.memory.report import MEMORY, PEAKS, MemoryReport
from tinytl_core.modes import MODES, prepare_model, resolve_modes
from tinytl_core.quantities import CUDA_WORKSPACES_NOTE


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``memory`` command."""
    p = sub.add_parser("memory", help="training memory per mode: weights, gradients+optimizer, activations")
    p.add_argument(
        "--model",
        default=default_backbone(),
        help="shipped or timm architecture (default: %(default)s, the demo backbone, offline)",
    )
    p.add_argument(
        "--resolution",
        type=bounded(L.RESOLUTION, zero=True),
        default=None,
        help="input size in pixels (default or 0: the model's own, e.g. 64 for the demo backbone)",
    )
    p.add_argument("--batch-size", type=bounded(L.BATCH_SIZE), default=8, help="samples per training step")
    p.add_argument("--mode", default="all", help=f"'all' or a comma-separated list of: {', '.join(MODES)}")
    p.add_argument(
        "--optimizer",
        default="adam",
        choices=list(OPTIMIZER_STATES),
        help="none = plain SGD, sgd = with momentum, adam/adamw = two moments",
    )
    p.add_argument(
        "--accounting",
        default="complete",
        choices=list(ACCOUNTINGS),
        help="complete (weights, grads+optimizer, activations, transient) or the paper's",
    )
    p.add_argument("--group-norm", action="store_true", help="replace BatchNorm by GroupNorm (as the paper)")
    p.add_argument(
        "--measure",
        action="store_true",
        help="also run real training steps per mode on the CPU (or --device) and record what "
        "autograd saves, with stock PyTorch layers and with the training engine's",
    )
    p.add_argument("--device", default=None, help="device for --measure (default: cuda if any, else cpu)")
    p.add_argument("--csv", default=None, metavar="FILE", help="write every mode's per-layer table to FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the per-mode totals table; optionally measure and write the per-layer CSV."""
    check_backbone_name(args.model)  # every argument before the (possibly slow) analysis
    resolve_modes(args.mode)
    resolution = args.resolution or None
    check_resolution(args.model, resolution)
    check_output(args.csv, "--csv")
    if args.device is not None and not args.measure:  # would do nothing: modelling needs no device
        raise ValueError("--device is where --measure runs its steps: give --measure too")
    device = None
    if args.measure:
        device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    reports = mode_reports(
        args.model,
        resolution=resolution,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        accounting=args.accounting,
        modes=args.mode,
        group_norm=args.group_norm,
    )
    table = table_from_reports(reports)
    layers = {name: r.layers for name, r in reports.items() if isinstance(r, MemoryReport)}
    if args.measure:
        stock, engine, peaks, errors = (
            {},
            {},
            {PEAKS.peak_measured_stock_bytes: {}, PEAKS.peak_measured_engine_bytes: {}},
            [],
        )
        for name in tqdm(list(layers), desc="measuring stock and engine", unit="mode"):
            report = reports[name]
            prepared = prepare_model(
                args.model,
                name,
                resolution=resolution,
                group_norm=args.group_norm,
                device=device,
                engine=False,
            )
            both = measure_stock_and_engine(
                prepared.model,
                input_size=report.totals.input_size,
                batch_size=args.batch_size,
                optimizer=args.optimizer,
                per_layer=args.csv is not None,
                modelled=report if args.accounting == "complete" else None,
            )
            stock[name], engine[name] = both.stock_bytes, both.engine_bytes
            peaks[PEAKS.peak_measured_stock_bytes][name] = both.stock.step_peak
            engine_peak = None if both.engine is None else both.engine.step_peak
            peaks[PEAKS.peak_measured_engine_bytes][name] = engine_peak
            if both.engine is None:
                errors.append(f"{name}: the engine could not run this model ({both.engine_error})")
            layers[name] = both.layer_table(layers[name])
            del prepared
        table[MEMORY.activations_measured_stock_bytes] = table["mode"].map(stock)
        table[MEMORY.activations_measured_engine_bytes] = table["mode"].map(engine)
        for column, values in peaks.items():
            table[column] = table["mode"].map(values)
        for line in errors:
            print(f"note: {line}")
    first = next((r for r in reports.values() if isinstance(r, MemoryReport)), None)
    if first is not None:
        c, h, w = first.totals.input_size
        print(
            f"{args.model}, {c}x{h}x{w}, batch {args.batch_size}, optimizer {args.optimizer}, "
            f"{args.accounting} accounting"
        )
    print(format_modes(table))
    if args.measure:
        print(
            "act. necessary: TinyTL's rules (model); act. stock: what stock PyTorch saves (model); "
            "measured: one real step with stock PyTorch layers and with the training engine's; "
            "total modelled: the modelled step peak; peak measured: the step's peak (PyTorch's profiler, "
            "or torch.cuda.max_memory_allocated on CUDA), what the OS or CUDA shows. " + CUDA_WORKSPACES_NOTE
        )
    if args.csv:
        frames = [df.assign(mode=name)[["mode", *df.columns]] for name, df in layers.items()]
        pd.concat(frames, ignore_index=True).to_csv(args.csv, index=False)
        print(f"per-layer table written to {args.csv}")
    return 0
