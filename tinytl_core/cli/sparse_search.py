"""``python -m tinytl_core sparse-search``: propose a sparse-update scheme under a memory budget."""

from __future__ import annotations

import argparse
import shlex
from fractions import Fraction
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tinytl_core import limits as L
from tinytl_core.adapt import OPTIMIZERS
from tinytl_core.backbones import default_backbone
from tinytl_core.cli.args import add_image_caps, bounded, check_output, check_resolution
from tinytl_core.data import check_dataset_name, dataset_display_name
from tinytl_core.planner.budget import parse_budget
from tinytl_core.quantities import format_bytes
from tinytl_core.sparse_scheme import parse_ratio
from tinytl_core.sparse_search import (
    Candidates,
    Metric,
    SearchConfig,
    analyse_contributions,
    format_gain,
    select_greedy,
)
from tinytl_core.sparse_search.search import modelled_peak

MIN_CLASSES = L.CLASSES.low
"""The fewest classes a dataset has: the classifier alone at it is the least any scheme can peak at."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sparse-search`` command."""
    d = SearchConfig(backbone="")
    p = sub.add_parser(
        "sparse-search",
        help="propose a sparse-update scheme under a memory budget (contribution analysis + greedy)",
        description="Train the classifier alone and each option alone (biases of the last k blocks, one "
        "layer's weight at an update ratio) in short runs, model each option's memory, then pick options "
        "by accuracy gained per byte while the modelled step peak of the whole scheme fits the budget. "
        "Writes the scheme as JSON for `adapt --mode sparse --sparse-scheme FILE`.",
    )
    p.add_argument("--model", "--backbone", dest="model", default=None, help="timm backbone (default: demo)")
    p.add_argument("--dataset", default=d.dataset, help="dataset name, folder or .zip (default: %(default)s)")
    p.add_argument(
        "--budget",
        required=True,
        help="modelled step peak the scheme must fit, e.g. 30MB, 512KB, 1.5GB (a bare number is MB)",
    )
    p.add_argument(
        "--resolution",
        type=bounded(L.RESOLUTION),
        default=None,
        help="input size in pixels (default: model's)",
    )
    p.add_argument("--batch-size", type=bounded(L.TRAINING_BATCH_SIZE), default=d.batch_size)
    p.add_argument(
        "--steps",
        type=bounded(L.STEPS),
        default=d.steps,
        help="steps of each short run (default: %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=bounded(L.LEARNING_RATE),
        default=3e-3,
        help="learning rate of the short runs (default: %(default)g)",
    )
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="memory and runs")
    p.add_argument("--seed", type=bounded(L.SEED), default=d.seed)
    p.add_argument("--layers", type=bounded(L.LAYERS), default=d.layers, help="last weight layers searched")
    p.add_argument(
        "--candidates",
        choices=[c.value for c in Candidates],
        default=d.candidates.value,
        help="which weight layers count: all, or pointwise (1x1 convs and linear: reaches further back "
        "for the same --layers) (default: %(default)s)",
    )
    p.add_argument(
        "--metric",
        choices=[m.value for m in Metric],
        default=d.metric.value,
        help="gain of an option: validation loss dropped (smooth) or accuracy gained (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=bounded(L.REPEATS),
        default=d.repeats,
        help="short runs per option (seeds --seed, --seed+1, ...), averaged (default: %(default)s)",
    )
    p.add_argument(
        "--no-fill",
        dest="fill",
        action="store_false",
        help="do not raise the chosen layers' update ratios into the budget left after greedy selection",
    )
    p.add_argument(
        "--ratios",
        default="1/4,1",
        help="update ratios tried per layer, from 1/8,1/4,1/2,1 (default: %(default)s)",
    )
    p.add_argument(
        "--bias-fractions", default="0.25,0.5,1", help="fractions of the blocks whose biases are tried"
    )
    add_image_caps(p)
    p.add_argument("--frozen-weight-bits", type=int, choices=(8, 32), default=32, help="frozen weights' bits")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random init")
    p.add_argument(
        "--out", default="sparse_scheme.json", help="where to write the scheme (default: %(default)s)"
    )
    p.add_argument("--threads", type=bounded(L.THREADS), default=None, help="torch CPU threads")
    p.set_defaults(func=run)


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(Fraction(v.strip())) for v in text.split(",") if v.strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(
            f"--bias-fractions must be numbers in (0, 1] separated by commas, got {text!r}"
        ) from None
    if not values:
        raise ValueError("--bias-fractions is empty")
    return values


def train_command(config: SearchConfig, scheme_file: Path) -> str:
    """The ``adapt`` command that trains the chosen scheme at every setting the search modelled its peak
    at (resolution, batch size, optimizer, frozen-weight bits): without them it trained at the model's own
    resolution, over the budget the scheme was chosen for."""
    words = ["python", "-m", "tinytl_core", "adapt", "--model", config.backbone, "--mode", "sparse"]
    words += ["--sparse-scheme", str(scheme_file), "--dataset", str(config.dataset)]
    if config.resolution:
        words += ["--resolution", str(config.resolution)]
    words += ["--batch-size", str(config.batch_size), "--optimizer", config.optimizer]
    if config.frozen_weight_bits != 32:
        words += ["--frozen-weight-bits", str(config.frozen_weight_bits)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Analyse, select, print the table and the scheme, write the JSON. Arguments are checked first."""
    budget = parse_budget(args.budget)
    config = SearchConfig(
        backbone=args.model or default_backbone(),
        dataset=args.dataset,
        resolution=args.resolution,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        repeats=args.repeats,
        metric=Metric(args.metric),
        candidates=Candidates(args.candidates),
        layers=args.layers,
        ratios=tuple(sorted({parse_ratio(r) for r in args.ratios.split(",") if r.strip()})),
        bias_fractions=_fractions(args.bias_fractions),
        shots=args.shots,
        val_cap=args.val_cap,
        pretrained=args.pretrained,
        frozen_weight_bits=args.frozen_weight_bits,
        device=args.device,
    )
    config.validate()
    check_dataset_name(args.dataset)
    check_resolution(config.backbone, args.resolution)
    check_output(args.out, "--out")
    floor = modelled_peak(config, None, MIN_CLASSES)  # the least any scheme can peak at (2 classes)
    if floor > budget:  # before the dataset loads and the short runs train
        raise ValueError(
            f"no scheme fits {format_bytes(budget)}: the classifier alone peaks at {format_bytes(floor)} or "
            "more (modelled); raise the budget or lower the batch size or the resolution"
        )
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{config.backbone} on {dataset_display_name(config.dataset)}, budget {format_bytes(budget)}")
    bar = tqdm(total=1, desc="contribution analysis", unit="run")

    def progress(done: int, total: int, what: str) -> None:
        bar.total, bar.n = total, done
        bar.set_postfix_str(what)
        bar.refresh()

    try:
        analysis = analyse_contributions(config, progress=progress)
    finally:
        bar.close()
    print(
        f"classifier alone: val acc {100 * analysis.baseline_accuracy:.1f}%, "
        f"modelled peak {format_bytes(analysis.baseline_bytes)}"
    )
    width = max([len(c.option.label) for c in analysis.contributions] + [6])
    print(
        f"{'option':<{width}}  {'acc alone':>9}  {'loss':>6}  {'gain':>9}  {'peak':>10}  {'cost':>10}  "
        f"{'gain/MB':>8}"
    )
    for c in analysis.contributions:
        per_mb = c.gain / max(c.cost_bytes / 1e6, 1e-6) * (100 if config.metric is Metric.ACCURACY else 1)
        print(
            f"{c.option.label:<{width}}  {100 * c.accuracy:>8.1f}%  {c.loss:>6.3f}  "
            f"{format_gain(c.gain, config.metric):>9}  {format_bytes(c.peak_bytes):>10}  "
            f"{format_bytes(c.cost_bytes):>10}  {per_mb:>8.3g}"
        )
    selection = select_greedy(analysis, budget, fill=args.fill)
    for line in selection.log:
        print(f"  {line}")
    if selection.scheme is None:
        raise ValueError(
            f"no scheme fits {format_bytes(budget)}: the classifier alone peaks at "
            f"{format_bytes(analysis.baseline_bytes)} (modelled); raise the budget or lower the batch size"
        )
    out.write_text(selection.scheme.to_json() + "\n", encoding="utf-8")
    print(
        f"chosen: {selection.scheme.describe()}\n"
        f"modelled peak {format_bytes(selection.peak_bytes)} of {format_bytes(budget)}, expected gain "
        f"{format_gain(selection.expected_gain, config.metric)} over the classifier alone (gains added)\n"
        f"wrote {out}; train it: {train_command(config, out)}"
    )
    return 0
