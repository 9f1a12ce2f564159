"""The number a user checks: the peak memory of one training step, stock PyTorch vs the training engine.

For each backbone and fine-tuning mode, in one run on the same model:

- the step's *measured* peak -- weights, optimizer state, input, stored activations, gradients and
  temporaries alive at once -- from PyTorch's profiler memory timeline (:mod:`tinytl_core.memory.timeline`;
  on CUDA ``torch.cuda.max_memory_allocated``), with stock PyTorch layers and with the engine's
  (:func:`tinytl_core.memory.measure_stock_and_engine`), and the phase it happens in;
- the *modelled* peak of :func:`tinytl_core.memory.analyze` for each (``total_stock_bytes`` and
  ``total_modelled_bytes``) and its error against the measured one;
- the step time of the engine vs stock (interleaved, best of repeats, as in ``benchmarks/engine.py``).

    python benchmarks/peak.py                      # 4 backbones x 6 modes, 224 px, batch 8 (long on 2 cores)
    python benchmarks/peak.py --backbones mobilenetv2_100 --modes full bias lite_residual+bias

Prints a markdown table and the targets: engine ``bias`` and ``lite_residual+bias`` at least 6x below stock
``full`` on mobilenetv2_100 (224 px, batch 8, Adam); modelled within 10% of measured in every row; engine
step time <= 1.3x stock. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import BACKBONES, TIME_TARGET, model_and_measure, run_all, step_times  # the sibling script

from tinytl_core.modes import MODES
from tinytl_core.quantities import MB

PEAK_TARGET = 6.0  # stock full / engine bias and lite_residual+bias, mobilenetv2_100
MODEL_TOLERANCE = 0.10


@dataclass(frozen=True)
class Row:
    """One (backbone, mode): measured and modelled step peaks (bytes), phases, step times (s)."""

    backbone: str
    mode: str
    stock_peak: int
    engine_peak: int
    stock_phase: str
    engine_phase: str
    stock_modelled: int
    engine_modelled: int
    stock_step_s: float
    engine_step_s: float

    @property
    def stock_error(self) -> float:
        return self.stock_modelled / self.stock_peak - 1

    @property
    def engine_error(self) -> float:
        return self.engine_modelled / self.engine_peak - 1

    @property
    def time_ratio(self) -> float:
        return self.engine_step_s / self.stock_step_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--optimizer", default="adam", choices=["none", "sgd", "adam", "adamw"])
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the peak: max_memory_allocated)")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if min(args.resolution, args.batch_size, args.repeats, args.threads) < 1:
        raise SystemExit("error: --resolution, --batch-size, --repeats and --threads must be >= 1")
    return args


def bench_one(backbone: str, mode: str, args: argparse.Namespace) -> Row:
    """Measure one (backbone, mode): the model as the modes build it (engine, channels-last)."""
    model, size, modelled, both = model_and_measure(backbone, mode, args, pretrained=False)
    stock_s, engine_s = step_times(model, size, args.batch_size, args.repeats)
    t = modelled.totals

    def peak(m) -> int:
        return int(m.peak_cuda_bytes if m.peak_cuda_bytes is not None else m.peak_bytes)

    return Row(
        backbone,
        mode,
        peak(both.stock),
        peak(both.engine),
        both.stock.peak_phase,
        both.engine.peak_phase,
        int(t.total_stock_bytes),
        int(t.total_modelled_bytes),
        stock_s,
        engine_s,
    )


def table(rows: list[Row]) -> str:
    """Markdown table of the rows."""
    full = {r.backbone: r.stock_peak for r in rows if r.mode == "full"}
    head = (
        "| backbone | mode | stock peak MB | engine peak MB | stock full / engine "
        "| modelled stock MB (err) | modelled engine MB (err) | peak phase stock / engine "
        "| step time engine / stock |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ratio = f"{full[r.backbone] / r.engine_peak:.1f}x" if r.backbone in full else "–"
        lines.append(
            f"| {r.backbone} | {r.mode} | {r.stock_peak / MB:.1f} | {r.engine_peak / MB:.1f} | {ratio} | "
            f"{r.stock_modelled / MB:.1f} ({r.stock_error:+.0%}) | {r.engine_modelled / MB:.1f} "
            f"({r.engine_error:+.0%}) | {r.stock_phase} / {r.engine_phase} | {r.time_ratio:.2f} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    """One line per target: the measured figure and whether it is met."""
    lines = []
    by_key = {(r.backbone, r.mode): r for r in rows}
    full = by_key.get(("mobilenetv2_100", "full"))
    for mode in ("bias", "lite_residual+bias"):
        row = by_key.get(("mobilenetv2_100", mode))
        if full and row:
            ratio = full.stock_peak / row.engine_peak
            lines.append(
                f"- measured step peak, mobilenetv2_100 stock full / engine {mode}: {ratio:.2f}x "
                f"({'met' if ratio >= PEAK_TARGET else 'NOT met'}, target >= {PEAK_TARGET:.0f}x)"
            )
    errors = [
        (e, r, which) for r in rows for e, which in ((r.stock_error, "stock"), (r.engine_error, "engine"))
    ]
    worst, row, which = max(errors, key=lambda e: abs(e[0]))  # signed: modelled above (+) or below (-)
    inside = sum(abs(e) <= MODEL_TOLERANCE for e, _, _ in errors)
    lines.append(
        f"- modelled peak within {MODEL_TOLERANCE:.0%} of measured: {inside} of {len(errors)} "
        f"({'met' if inside == len(errors) else 'NOT met'}; worst {row.backbone} / {row.mode} "
        f"{which}: {worst:+.0%})"
    )
    slowest = max(rows, key=lambda r: r.time_ratio)
    median = statistics.median(r.time_ratio for r in rows)
    lines.append(
        f"- engine step time <= {TIME_TARGET}x stock: "
        f"{'met' if slowest.time_ratio <= TIME_TARGET else 'NOT met'} (worst {slowest.backbone} / "
        f"{slowest.mode}: {slowest.time_ratio:.2f}x; median {median:.2f}x)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run_all(args, bench_one, "peak benchmark")
    print(
        f"\n{args.resolution} px, batch {args.batch_size}, optimizer {args.optimizer}, "
        f"{args.threads} thread(s), device {args.device}, MB = 10^6 bytes\n"
    )
    print(table(rows))
    print()
    print("\n".join(targets(rows)))
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
