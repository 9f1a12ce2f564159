"""Is offline transfer real? The shipped demo backbone vs the same architecture from random init.

For each built-in target dataset, each mode (``last``, ``bias``, ``lite_residual+bias``, ``full``) and each
seed, one short adaptation (:func:`tinytl_core.adapt.adapt`, same budget for every run) starts once from
the demo backbone pretrained on the synthetic source task and once from random init. Expected, as in the
paper: pretrained >> random for ``last``; ``lite_residual+bias`` well above ``last`` and close to ``full``.

    python benchmarks/transfer.py                       # all built-in sets, seeds 0 1, a few minutes
    python benchmarks/transfer.py --datasets shapes --seeds 0 --steps 60 --out transfer.json

Prints a markdown table of validation accuracy (mean over seeds, +- half the range when several) and
optionally writes every run as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tinytl_core.adapt import AdaptConfig, adapt
from tinytl_core.backbones import DEMO_BACKBONE, LOCAL_BACKBONES
from tinytl_core.data import list_datasets, load_dataset
from tinytl_core.quantities import RunStatus

MODES: tuple[str, ...] = ("last", "bias", "lite_residual+bias", "full")
# Adam learning rate per mode, the same for both starting points: frozen-backbone modes take a larger
# step (few parameters, as in the paper's scripts), full fine-tuning a smaller one.
LEARNING_RATES: dict[str, float] = {"last": 3e-3, "bias": 3e-3, "lite_residual+bias": 3e-3, "full": 1e-3}
INITS: tuple[str, ...] = ("pretrained", "random")


@dataclass(frozen=True)
class Run:
    """One adaptation of the benchmark."""

    dataset: str
    mode: str
    init: str
    seed: int
    val_acc: float
    n_trainable: int
    seconds: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    builtin = [d.name for d in list_datasets(kind="builtin")]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbone", default=DEMO_BACKBONE, choices=list(LOCAL_BACKBONES))
    p.add_argument("--datasets", nargs="+", default=builtin, choices=builtin)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=120, help="optimisation steps per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, help="also write every run as JSON here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.threads < 1:
        raise SystemExit("error: --steps, --batch-size and --threads must be >= 1")
    return args


def run_benchmark(args: argparse.Namespace) -> list[Run]:
    """Every (dataset, mode, init, seed) adaptation; raises if the demo checkpoint did not load."""
    runs: list[Run] = []
    total = len(args.datasets) * len(args.modes) * len(INITS) * len(args.seeds)
    with tqdm(total=total, desc="transfer", unit="run", dynamic_ncols=True) as bar:
        for dataset in args.datasets:
            data = load_dataset(dataset, progress=True)  # loaded once, transforms reset by every run
            for mode in args.modes:
                for init in INITS:
                    for seed in args.seeds:
                        config = AdaptConfig(
                            backbone=args.backbone,
                            mode=mode,
                            dataset=dataset,
                            steps=args.steps,
                            batch_size=args.batch_size,
                            lr=LEARNING_RATES[mode],
                            seed=seed,
                            pretrained=init == "pretrained",
                            record_memory=False,
                            device="cpu",
                        )
                        result = adapt(config, data=data)
                        if result.status != RunStatus.FINISHED:
                            raise RuntimeError(f"{dataset} {mode} {init} seed {seed}: {result.message}")
                        if init == "pretrained" and not result.pretrained_loaded:
                            raise RuntimeError(f"the demo checkpoint did not load: {result.backbone_message}")
                        runs.append(
                            Run(
                                dataset,
                                mode,
                                init,
                                seed,
                                float(result.final_val_acc),
                                result.n_trainable,
                                result.total_time_s,
                            )
                        )
                        bar.set_postfix_str(f"{dataset} {mode} {init}: {100 * result.final_val_acc:.1f}%")
                        bar.update(1)
    return runs


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _cell(values: list[float]) -> str:
    mean = 100 * _mean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * (max(values) - min(values)) / 2:.1f}"


def table(runs: list[Run]) -> str:
    """Markdown table: one row per (dataset, mode), validation accuracy (%) per starting point."""
    lines = [
        "| dataset | mode | trainable params | pretrained demo | random init | gain |",
        "|---|---|---:|---:|---:|---:|",
    ]
    keys = dict.fromkeys((r.dataset, r.mode) for r in runs)
    for dataset, mode in keys:
        acc = {
            init: [r.val_acc for r in runs if (r.dataset, r.mode, r.init) == (dataset, mode, init)]
            for init in INITS
        }
        params = next(r.n_trainable for r in runs if (r.dataset, r.mode) == (dataset, mode))
        gain = 100 * (_mean(acc["pretrained"]) - _mean(acc["random"]))
        lines.append(
            f"| {dataset} | {mode} | {params:,} | {_cell(acc['pretrained'])} | "
            f"{_cell(acc['random'])} | {gain:+.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = run_benchmark(args)
    minutes = (time.perf_counter() - start) / 60
    seeds = " ".join(str(s) for s in args.seeds)
    card = LOCAL_BACKBONES[args.backbone].card() or {}
    source = card.get("source_accuracy", {})
    if source:
        print(
            f"\n{args.backbone}: {card['architecture']} at {card['resolution']} px, pretrained for "
            f"{card['training']['steps']} steps on {card['source_task']['num_classes']} synthetic classes "
            f"(held-out top-1 {100 * source['top1']:.1f}%, shape {100 * source['shape']:.1f}%)"
        )
    print(
        f"\n{args.backbone}: {args.steps} steps x batch {args.batch_size}, Adam (lr per mode "
        f"{', '.join(f'{m} {LEARNING_RATES[m]:g}' for m in args.modes)}), cosine, label smoothing 0.1, "
        f"seeds {seeds}; validation accuracy %, mean ± half range over seeds; {minutes:.1f} min on CPU\n"
    )
    print(table(runs))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "runs": [r.__dict__ for r in runs],
                },
                indent=2,
            )
            + "\n"
        )
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
