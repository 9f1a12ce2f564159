"""Sparse update under a budget vs full fine-tuning: accuracy on digits and the measured step peak.

The issue's target: a sparse-update scheme chosen under a budget reaches within 2 points of ``full`` on
``digits`` with the demo backbone, at no more than a third of ``full``'s measured step peak.

1. Contribution analysis (:func:`tinytl_core.sparse_search.analyse_contributions`): the classifier alone
   and each option alone in a short run; each option's modelled cost.
2. Greedy selection (:func:`tinytl_core.sparse_search.select_greedy`) under a budget of a third of
   ``full``'s modelled step peak (``--budget-fraction``).
3. ``full`` and the chosen scheme trained for ``--steps`` (seeds ``--seeds``), and one training step of
   each measured with PyTorch's profiler (:func:`tinytl_core.memory.measure`, the engine's layers).

    python benchmarks/sparse.py                    # ~25 min on 2 busy cores
    python benchmarks/sparse.py --quick            # a smoke run (tiny settings, numbers meaningless)

Prints the contributions, the chosen scheme and the comparison table; ``--out FILE`` writes all as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tinytl_core.adapt import AdaptConfig, adapt
from tinytl_core.backbones import DEMO_BACKBONE
from tinytl_core.data import load_dataset
from tinytl_core.memory import analyze, measure
from tinytl_core.modes import prepare_model
from tinytl_core.quantities import format_mb
from tinytl_core.sparse_scheme import SparseScheme, parse_ratio
from tinytl_core.sparse_search import SearchConfig, analyse_contributions, select_greedy

# Adam learning rates as in benchmarks/transfer.py: few trainable parameters take a larger step.
LR_FULL, LR_SPARSE = 1e-3, 3e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbone", default=DEMO_BACKBONE)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=300, help="steps of the final full / sparse runs")
    p.add_argument("--search-steps", type=int, default=40, help="steps of each contribution run")
    p.add_argument("--layers", type=int, default=6, help="last weight layers searched")
    p.add_argument("--ratios", default="1/4,1", help="update ratios tried per layer")
    p.add_argument(
        "--search-val-cap", type=int, default=None, help="validation images per class in the search"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget-fraction", type=float, default=1 / 3, help="budget: this x full's modelled peak")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    p.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.search_steps, args.layers, args.seeds = 4, 2, 2, [0]
    return args


def train(args: argparse.Namespace, mode: str, scheme: SparseScheme | None, seed: int, data) -> float:
    """Validation accuracy (%) of one run."""
    result = adapt(
        AdaptConfig.from_dict(  # --backbone, --dataset, --steps, --batch-size: the configuration's fields
            {
                **vars(args),
                "mode": mode,
                "lr": LR_FULL if mode == "full" else LR_SPARSE,
                "seed": seed,
                "record_memory": False,
                "sparse_scheme": scheme.to_dict() if scheme is not None else None,
            }
        ),
        data=data,
    )
    return 100.0 * float(result.final_val_acc or 0.0)


def measured_peak(args: argparse.Namespace, mode: str, scheme: SparseScheme | None, num_classes: int) -> int:
    """The measured step peak (profiler, CPU, engine layers) of one training step."""
    p = prepare_model(args.backbone, mode, num_classes=num_classes, pretrained=True, sparse_scheme=scheme)
    return int(measure(p.model, input_size=p.data.input_size, batch_size=args.batch_size).peak_bytes)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    config = SearchConfig(
        args.backbone,
        dataset=args.dataset,
        batch_size=args.batch_size,
        steps=args.search_steps,
        lr=LR_SPARSE,
        layers=args.layers,
        ratios=tuple(parse_ratio(r) for r in args.ratios.split(",")),
        bias_fractions=(0.5, 1.0),
        val_cap=args.search_val_cap,
    )
    data = load_dataset(args.dataset)
    full_modelled = modelled_peak_full(config, data.num_classes)
    budget = int(full_modelled * args.budget_fraction)
    bar = tqdm(total=1, desc="contribution analysis", unit="run")

    def progress(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(what)
        bar.refresh()

    analysis = analyse_contributions(config, progress=progress)
    bar.close()
    print(
        f"\nclassifier alone: {100 * analysis.baseline_accuracy:.1f}%, "
        f"{format_mb(analysis.baseline_bytes)} MB"
    )
    print(
        "| option | accuracy alone % | gain (points) | modelled peak MB | cost MB |\n"
        "|---|---:|---:|---:|---:|"
    )
    for c in analysis.contributions:
        print(
            f"| {c.option.label} | {100 * c.accuracy:.1f} | {100 * c.gain:+.1f} | "
            f"{format_mb(c.peak_bytes, 2)} | {format_mb(c.cost_bytes, 2)} |"
        )
    selection = select_greedy(analysis, budget)
    print(
        f"\nbudget {format_mb(budget, 2)} MB (x{args.budget_fraction:.3f} of full's modelled "
        f"{format_mb(full_modelled, 2)} MB)"
    )
    print("\n".join(selection.log))
    if selection.scheme is None:
        raise SystemExit("no scheme chosen")
    scheme = selection.scheme
    print(f"chosen: {scheme.describe()}\n{scheme.to_json()}")

    rows = {}
    for mode, sch in (("full", None), ("sparse", scheme)):
        accs = [train(args, mode, sch, seed, data) for seed in tqdm(args.seeds, desc=f"train {mode}")]
        peak = measured_peak(args, mode, sch, data.num_classes)
        rows[mode] = {"accuracy": accs, "peak_bytes": peak}
    full_acc = statistics.mean(rows["full"]["accuracy"])
    sparse_acc = statistics.mean(rows["sparse"]["accuracy"])
    ratio = rows["sparse"]["peak_bytes"] / rows["full"]["peak_bytes"]
    print(
        f"\n{args.backbone} on {args.dataset}, {args.steps} steps x batch {args.batch_size}, "
        f"seeds {args.seeds}\n| method | val acc % (per seed) | mean | step peak MB | peak / full |\n"
        "|---|---|---:|---:|---:|"
    )
    for mode in ("full", "sparse"):
        r = rows[mode]
        per = " / ".join(f"{a:.1f}" for a in r["accuracy"])
        print(
            f"| {mode} | {per} | {statistics.mean(r['accuracy']):.1f} | {format_mb(r['peak_bytes'], 1)} | "
            f"{r['peak_bytes'] / rows['full']['peak_bytes']:.2f} |"
        )
    gap = full_acc - sparse_acc
    print(
        f"\ntarget: within 2 points of full ({gap:+.1f} points behind: {'met' if gap <= 2 else 'NOT met'}), "
        f"peak <= 1/3 of full's ({ratio:.2f}: {'met' if ratio <= 1 / 3 else 'NOT met'}); "
        f"{time.perf_counter() - t0:.0f} s"
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "budget_bytes": budget,
                    "full_modelled_bytes": full_modelled,
                    "baseline_accuracy": analysis.baseline_accuracy,
                    "contributions": [
                        {
                            "option": c.option.label,
                            "accuracy": c.accuracy,
                            "gain": c.gain,
                            "peak_bytes": c.peak_bytes,
                        }
                        for c in analysis.contributions
                    ],
                    "scheme": scheme.to_dict(),
                    "selection_peak_bytes": selection.peak_bytes,
                    "runs": rows,
                },
                indent=2,
            )
        )


def modelled_peak_full(config: SearchConfig, num_classes: int) -> int:
    """Modelled step peak of full fine-tuning at the search's settings (the budget's reference)."""
    p = prepare_model(config.backbone, "full", num_classes=num_classes, device="meta", engine=False)
    return int(
        analyze(
            p.model, input_size=p.data.input_size, batch_size=config.batch_size
        ).totals.total_modelled_bytes
    )


if __name__ == "__main__":
    main()
