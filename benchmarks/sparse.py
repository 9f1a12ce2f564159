"""Sparse update under a budget vs full fine-tuning: accuracy on digits and the measured step peak.

The issue's target: a sparse-update scheme chosen under a budget reaches within 2 points of ``full`` on
``digits`` with the demo backbone, at no more than a third of ``full``'s measured step peak.

1. ``full``'s step peak measured with PyTorch's profiler (:func:`tinytl_core.memory.measure`, the engine's
   layers); the budget is a third of it (``--budget-fraction``; ``--budget-of modelled``: of its modelled
   peak instead).
2. Contribution analysis (:func:`tinytl_core.sparse_search.analyse_contributions`): the classifier alone
   and each option in short runs (``--search-repeats`` seeds averaged, gain in ``--metric``); each
   option's modelled cost.
3. Greedy selection (:func:`tinytl_core.sparse_search.select_greedy`) of the modelled step peak under the
   budget, then the chosen layers' ratios raised while the scheme fits.
4. ``full`` and the chosen scheme trained for the same ``--steps`` with the same cosine schedule, each at
   every learning rate of its grid (``--lr-full``, ``--lr-sparse``) and every seed of ``--seeds``; each
   mode is reported at the learning rate with its best mean accuracy (every run is printed); the scheme's
   step peak measured like ``full``'s.

    python benchmarks/sparse.py                    # ~30 min on 2 busy cores
    python benchmarks/sparse.py --scheme benchmarks/sparse_scheme_digits.json   # step 4 only
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
from tinytl_core.sparse_scheme import SparseScheme, parse_ratio, read_scheme
from tinytl_core.sparse_search import (
    Candidates,
    ContributionAnalysis,
    Metric,
    SearchConfig,
    Selection,
    analyse_contributions,
    format_gain,
    modelled_peak,
    select_greedy,
)

# Adam learning rates as in benchmarks/transfer.py: few trainable parameters take a larger step.
LR_FULL, LR_SPARSE = 1e-3, 3e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbone", default=DEMO_BACKBONE)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=500, help="steps of the final full / sparse runs")
    p.add_argument("--search-steps", type=int, default=40, help="steps of each contribution run")
    p.add_argument("--layers", type=int, default=30, help="last weight layers searched")
    p.add_argument("--candidates", choices=[c.value for c in Candidates], default="pointwise")
    p.add_argument("--metric", choices=[m.value for m in Metric], default="loss", help="contribution gain")
    p.add_argument("--search-repeats", type=int, default=2, help="seeds averaged per contribution run")
    p.add_argument("--no-fill", dest="fill", action="store_false", help="no ratio upgrades after greedy")
    p.add_argument("--lr-full", nargs="+", type=float, default=[LR_FULL], help="learning rates of full")
    p.add_argument("--lr-sparse", nargs="+", type=float, default=[LR_SPARSE], help="and of the scheme")
    p.add_argument("--ratios", default="1", help="update ratios tried per layer")
    p.add_argument(
        "--search-val-cap", type=int, default=None, help="validation images per class in the search"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget-fraction", type=float, default=1 / 3, help="budget: this x full's peak")
    p.add_argument(
        "--budget-of", choices=("measured", "modelled"), default="measured", help="which peak of full"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    p.add_argument(
        "--scheme", type=Path, help="a scheme JSON chosen before (e.g. by this script): skip the search"
    )
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    p.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.search_steps, args.layers, args.seeds = 4, 2, 2, [0]
        args.search_repeats, args.lr_full, args.lr_sparse = 1, args.lr_full[:1], args.lr_sparse[:1]
    return args


def train(
    args: argparse.Namespace, mode: str, scheme: SparseScheme | None, seed: int, lr: float, data
) -> float:
    """Validation accuracy (%) of one run."""
    result = adapt(
        AdaptConfig.from_dict(  # --backbone, --dataset, --steps, --batch-size: the configuration's fields
            {
                **vars(args),
                "mode": mode,
                "lr": lr,
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
        repeats=args.search_repeats,
        metric=Metric(args.metric),
        candidates=Candidates(args.candidates),
    )
    config.validate()
    data = load_dataset(args.dataset)
    full_modelled = modelled_peak_full(config, data.num_classes)
    full_measured = measured_peak(args, "full", None, data.num_classes)
    reference = full_measured if args.budget_of == "measured" else full_modelled
    budget = int(reference * args.budget_fraction)
    print(
        f"full: step peak measured {format_mb(full_measured, 2)} MB, modelled {format_mb(full_modelled, 2)} "
        f"MB; budget {format_mb(budget, 2)} MB (x{args.budget_fraction:.3f} of the {args.budget_of} peak)"
    )
    if args.scheme:
        scheme = read_scheme(args.scheme)
        modelled = modelled_peak(config, scheme, data.num_classes)
        print(f"scheme {args.scheme.name} (modelled peak {format_mb(modelled, 2)} MB): {scheme.describe()}")
        if modelled > budget:
            raise SystemExit("the scheme's modelled peak exceeds the budget")
        analysis, selection = None, None
    else:
        analysis, selection = search(args, config, budget)
        scheme = selection.scheme
    compare(args, data, scheme, budget, full_modelled, full_measured, analysis, selection, t0)


def search(
    args: argparse.Namespace, config: SearchConfig, budget: int
) -> tuple[ContributionAnalysis, Selection]:
    """Steps 2-3: contribution analysis and greedy selection under ``budget``; prints both."""
    bar = tqdm(total=1, desc="contribution analysis", unit="option")

    def progress(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(what)
        bar.refresh()

    analysis = analyse_contributions(config, progress=progress)
    bar.close()
    print(
        f"\nclassifier alone: {100 * analysis.baseline_accuracy:.1f}%, loss {analysis.baseline_loss:.3f}, "
        f"{format_mb(analysis.baseline_bytes)} MB"
    )
    print(
        f"| option | accuracy % | loss | gain ({config.metric.value}) | modelled peak MB | cost MB |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for c in analysis.contributions:
        print(
            f"| {c.option.label} | {100 * c.accuracy:.1f} | {c.loss:.3f} | "
            f"{format_gain(c.gain, config.metric)} | {format_mb(c.peak_bytes, 2)} | "
            f"{format_mb(c.cost_bytes, 2)} |"
        )
    selection = select_greedy(analysis, budget, fill=args.fill)
    print("\n".join(selection.log))
    if selection.scheme is None:
        raise SystemExit("no scheme chosen")
    print(f"chosen (modelled peak {format_mb(selection.peak_bytes, 2)} MB): {selection.scheme.describe()}")
    print(selection.scheme.to_json())
    return analysis, selection


def compare(
    args: argparse.Namespace,
    data,
    scheme: SparseScheme,
    budget: int,
    full_modelled: int,
    full_measured: int,
    analysis: ContributionAnalysis | None,
    selection: Selection | None,
    t0: float,
) -> None:
    """Step 4: full and the scheme over their learning-rate grids and seeds; the table and the targets."""
    grids = {"full": (None, args.lr_full), "sparse": (scheme, args.lr_sparse)}
    runs: dict[str, dict[float, list[float]]] = {}
    total = sum(len(lrs) for _, lrs in grids.values()) * len(args.seeds)
    with tqdm(total=total, desc="final runs", unit="run") as bar:
        for mode, (sch, lrs) in grids.items():
            runs[mode] = {}
            for lr in lrs:
                runs[mode][lr] = []
                for seed in args.seeds:
                    bar.set_postfix_str(f"{mode} lr {lr:g} seed {seed}")
                    runs[mode][lr].append(train(args, mode, sch, seed, lr, data))
                    bar.update()
    peaks = {"full": full_measured, "sparse": measured_peak(args, "sparse", scheme, data.num_classes)}
    print(
        f"\n{args.backbone} on {args.dataset}, {args.steps} steps x batch {args.batch_size} (cosine), "
        f"seeds {args.seeds}\n| method | lr | val acc % (per seed) | mean | step peak MB | peak / full |\n"
        "|---|---:|---|---:|---:|---:|"
    )
    best = {}
    for mode in grids:
        best[mode] = max(runs[mode], key=lambda lr: statistics.mean(runs[mode][lr]))
        for lr, accs in runs[mode].items():
            mark = " (best)" if lr == best[mode] and len(runs[mode]) > 1 else ""
            print(
                f"| {mode} | {lr:g}{mark} | {' / '.join(f'{a:.1f}' for a in accs)} | "
                f"{statistics.mean(accs):.1f} | {format_mb(peaks[mode], 1)} | "
                f"{peaks[mode] / peaks['full']:.2f} |"
            )
    full_acc = statistics.mean(runs["full"][best["full"]])
    sparse_acc = statistics.mean(runs["sparse"][best["sparse"]])
    ratio = peaks["sparse"] / peaks["full"]
    gap = full_acc - sparse_acc
    print(
        f"\ntarget: within 2 points of full ({gap:+.1f} points behind: {'met' if gap <= 2 else 'NOT met'}), "
        f"measured peak <= 1/3 of full's ({ratio:.3f}: {'met' if ratio <= 1 / 3 else 'NOT met'}); "
        f"{time.perf_counter() - t0:.0f} s"
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "budget_bytes": budget,
                    "full_modelled_bytes": full_modelled,
                    "full_measured_bytes": full_measured,
                    "baseline_accuracy": analysis.baseline_accuracy if analysis else None,
                    "baseline_loss": analysis.baseline_loss if analysis else None,
                    "contributions": [
                        {
                            "option": c.option.label,
                            "accuracy": c.accuracy,
                            "loss": c.loss,
                            "gain": c.gain,
                            "peak_bytes": c.peak_bytes,
                        }
                        for c in (analysis.contributions if analysis else [])
                    ],
                    "selection_log": list(selection.log) if selection else [],
                    "scheme": scheme.to_dict(),
                    "selection_peak_bytes": selection.peak_bytes if selection else None,
                    "runs": {m: {str(lr): a for lr, a in r.items()} for m, r in runs.items()},
                    "best_lr": best,
                    "measured_peak_bytes": peaks,
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
