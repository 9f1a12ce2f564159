"""How many timm architectures can the memory model analyse? (issue 3; target: at least 97%)

Builds every architecture of ``timm.list_models()`` on the ``meta`` device (no weights, no memory) and runs
the modelled analysis (:func:`tinytl_core.memory.analyze`, complete accounting, full fine-tuning) at its
default input size, batch size 1. Prints the fraction analysed without error and the total time, and
writes each failure (name, stage, error) to a file as it happens, so a background run can be watched:

    python benchmarks/coverage.py                                # every architecture (tens of minutes)
    python benchmarks/coverage.py --sample 200 --seed 0          # a random sample
    python benchmarks/coverage.py --limit 50 --filter 'resnet*'  # the first 50 matching names
    nohup python benchmarks/coverage.py --failures fails.tsv > coverage.log 2>&1 &

Measured here (timm 1.0.31, torch 2.14, one thread on a shared 2-core CPU): 1371 of 1371 architectures
analysed without error, 1521 s in all (1.1 s each; the slowest, sequencer2d_l, 14 s).

A model that cannot be built on ``meta`` counts as a failure too (stage ``build``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from pathlib import Path

import timm
import torch
from tqdm.auto import tqdm

from tinytl_core.backbones import data_config
from tinytl_core.memory import analyze
from tinytl_core.paths import cache_dir


def select(names: list[str], *, limit: int | None, sample: int | None, seed: int) -> list[str]:
    """``names`` reduced to a random sample (sorted) and/or the first ``limit`` ones."""
    if sample is not None and sample < len(names):
        names = sorted(random.Random(seed).sample(names, sample))
    return names[:limit] if limit is not None else names


def analyse_one(name: str, batch_size: int) -> tuple[str, str, float]:
    """(stage, error, seconds): stage ``ok``, ``build`` or ``analyze``."""
    start = time.perf_counter()
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=10)
        input_size = data_config(model).input_size
    except Exception as exc:
        return "build", f"{type(exc).__name__}: {exc}", time.perf_counter() - start
    try:
        analyze(model, input_size=input_size, batch_size=batch_size)
    except Exception as exc:
        cause = exc.__cause__ or exc
        return "analyze", f"{type(cause).__name__}: {cause}", time.perf_counter() - start
    return "ok", "", time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filter", default="", help="fnmatch pattern for timm.list_models (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="analyse at most N architectures")
    parser.add_argument("--sample", type=int, default=None, help="analyse a random sample of N architectures")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--failures",
        default=None,
        help="file for the failures (TSV; default: coverage_failures.tsv in the data folder)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    every = timm.list_models(args.filter or "")
    names = select(every, limit=args.limit, sample=args.sample, seed=args.seed)
    if not names:
        raise SystemExit(f"no architecture matches {args.filter!r}")
    failures_path = Path(args.failures or cache_dir("benchmarks") / "coverage_failures.tsv")
    ok = 0
    slowest: list[tuple[float, str]] = []
    start = time.perf_counter()
    with failures_path.open("w") as failures, tqdm(names, unit="model", mininterval=5.0) as bar:
        failures.write("name\tstage\terror\n")
        for name in bar:
            stage, error, seconds = analyse_one(name, args.batch_size)
            slowest = sorted([*slowest, (seconds, name)], reverse=True)[:5]
            if stage == "ok":
                ok += 1
            else:
                failures.write(f"{name}\t{stage}\t{' '.join(error.split())[:500]}\n")
                failures.flush()
            bar.set_postfix(ok=ok, failed=bar.n + 1 - ok)
    total = time.perf_counter() - start
    scope = f"{len(names)} of {len(every)} architectures" + (
        f" (random sample, seed {args.seed})" if args.sample is not None else ""
    )
    print(f"analysed without error: {ok}/{len(names)} = {ok / len(names):.1%} of {scope}")
    print(f"total time: {total:.0f} s ({total / len(names):.2f} s per architecture, batch {args.batch_size})")
    print("slowest: " + ", ".join(f"{n} {s:.1f} s" for s, n in slowest))
    print(f"failures written to {failures_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
