"""Does the training engine store only what TinyTL says is necessary, and how fast is it?

For each backbone and fine-tuning mode, in one run on the same model:

- activations saved for backward, *measured* in a real training step (saved-tensor hooks,
  :func:`tinytl_core.memory.measure_stock_and_engine`): stock PyTorch layers vs the engine
  (:func:`tinytl_core.engine.convert`);
- TinyTL's *necessary* bytes, modelled by :func:`tinytl_core.memory.analyze` (the Memory Explorer's
  figure);
- total training memory: weights + gradients + optimizer state (modelled) + measured activations;
- the step time (forward, backward, optimizer step) of the engine vs stock: interleaved, best of repeats
  (on a shared machine other work only ever slows a step down, so the minimum is the stable estimate).

    python benchmarks/engine.py                   # 4 backbones x 6 modes, 224 px, batch 8 (long on 2 cores)
    python benchmarks/engine.py --quick           # 64 px, batch 2, mobilenetv2_100 + resnet18
    python benchmarks/engine.py --backbones mobilenetv2_100 --modes bias lite_residual+bias --out e.json

Prints a markdown table and checks the targets: engine within 5 % of necessary in every mode, total memory
of ``lite_residual+bias`` (engine) >= 6x below stock ``full`` on mobilenetv2_100, engine step time <= 1.3x
stock. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinytl_core.engine import convert, engine_enabled
from tinytl_core.memory import analyze, measure_stock_and_engine
from tinytl_core.modes import MODES, prepare_model
from tinytl_core.quantities import MB

BACKBONES: tuple[str, ...] = ("mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "resnet50")
QUICK_BACKBONES: tuple[str, ...] = ("mobilenetv2_100", "resnet18")
NECESSARY_TOLERANCE = 0.05
TOTAL_TARGET = 6.0  # stock full / engine lite_residual+bias, mobilenetv2_100
TIME_TARGET = 1.3
T = TypeVar("T")


@dataclass(frozen=True)
class Row:
    """One (backbone, mode) of the benchmark; bytes and seconds."""

    backbone: str
    mode: str
    stock_bytes: int
    engine_bytes: int
    necessary_bytes: int
    weights_bytes: int
    grads_optimizer_bytes: int
    stock_step_s: float
    engine_step_s: float

    @property
    def stock_total(self) -> int:
        return self.weights_bytes + self.grads_optimizer_bytes + self.stock_bytes

    @property
    def engine_total(self) -> int:
        return self.weights_bytes + self.grads_optimizer_bytes + self.engine_bytes

    @property
    def vs_necessary(self) -> float:
        return self.engine_bytes / max(1, self.necessary_bytes)

    @property
    def time_ratio(self) -> float:
        return self.engine_step_s / self.stock_step_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbones", nargs="+", help=f"default: {' '.join(BACKBONES)}")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--resolution", type=int, help="input size in pixels (default 224, --quick 64)")
    p.add_argument("--batch-size", type=int, help="default 8 (--quick 2)")
    p.add_argument("--optimizer", default="adam", choices=["none", "sgd", "adam", "adamw"])
    p.add_argument("--repeats", type=int, help="timed steps per variant (default 5, --quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes: 64 px, batch 2, two backbones")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    args.backbones = args.backbones or list(QUICK_BACKBONES if args.quick else BACKBONES)
    args.resolution = args.resolution or (64 if args.quick else 224)
    args.batch_size = args.batch_size or (2 if args.quick else 8)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if min(args.resolution, args.batch_size, args.repeats, args.threads) < 1:
        raise SystemExit("error: --resolution, --batch-size, --repeats and --threads must be >= 1")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them to their end
        torch.cuda.synchronize(device)


def _timed_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, opt) -> float:
    _sync(x.device)
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), target).backward()
    opt.step()
    _sync(x.device)
    return time.perf_counter() - start


def step_times(
    model: torch.nn.Module, size: tuple[int, int, int], batch: int, repeats: int
) -> tuple[float, float]:
    """Best step time of the stock layers and of the (already converted) engine, interleaved so that a
    slow phase of a shared machine hits both alike. The optimizer runs at learning rate 0."""
    device = next(model.parameters()).device
    x = torch.randn(batch, *size, device=device)
    target = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.0)
    model.train()
    stock, engine = [], []
    for i in range(repeats + 1):  # the first round warms up
        with engine_enabled(model, enabled=False):
            s = _timed_step(model, x, target, opt)
        e = _timed_step(model, x, target, opt)
        if i:
            stock.append(s)
            engine.append(e)
    opt.zero_grad(set_to_none=True)
    return min(stock), min(engine)


def model_and_measure(backbone: str, mode: str, args: argparse.Namespace, **prepare):
    """``(model, input size, modelled report, measured stock and engine steps)`` of one (backbone, mode):
    the model prepared with ``prepare`` (``prepare_model``'s options), seeded (shared by ``peak.py``)."""
    torch.manual_seed(0)
    size, batch = (3, args.resolution, args.resolution), args.batch_size
    model = prepare_model(backbone, mode, resolution=args.resolution, device=args.device, **prepare).model
    modelled = analyze(model, input_size=size, batch_size=batch, optimizer=args.optimizer)
    both = measure_stock_and_engine(
        model, input_size=size, batch_size=batch, optimizer=args.optimizer, per_layer=False, modelled=modelled
    )
    if both.engine is None:
        raise RuntimeError(f"{backbone} / {mode}: {both.engine_error}")
    return model, size, modelled, both


def bench_one(backbone: str, mode: str, args: argparse.Namespace) -> Row:
    """Measure one (backbone, mode)."""
    model, size, modelled, both = model_and_measure(backbone, mode, args, engine=False)
    convert(model, input_size=size)  # as the modes convert: activations share outputs stored in full
    stock_s, engine_s = step_times(model, size, args.batch_size, args.repeats)
    t = modelled.totals
    return Row(
        backbone,
        mode,
        both.stock_bytes,
        both.engine.saved_bytes,
        int(t.activations_necessary_bytes),
        int(t.weights_bytes),
        int(t.grads_optimizer_bytes),
        stock_s,
        engine_s,
    )


def table(rows: list[Row]) -> str:
    """Markdown table of the rows."""
    head = (
        "| backbone | mode | stock act. MB | engine act. MB | nec MB | engine/nec "
        "| stock/engine | total stock MB | total engine MB | step stock s | step engine s | time ratio |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.backbone} | {r.mode} | {r.stock_bytes / MB:.1f} | {r.engine_bytes / MB:.1f} | "
            f"{r.necessary_bytes / MB:.1f} | {r.vs_necessary:.3f} | "
            f"{r.stock_bytes / max(1, r.engine_bytes):.1f}x | {r.stock_total / MB:.1f} | "
            f"{r.engine_total / MB:.1f} | {r.stock_step_s:.3f} | {r.engine_step_s:.3f} | {r.time_ratio:.2f} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    """One line per target: the measured figure and whether it is met."""
    lines = []
    worst = max(rows, key=lambda r: abs(r.vs_necessary - 1))
    ok = abs(worst.vs_necessary - 1) <= NECESSARY_TOLERANCE
    lines.append(
        f"- engine within {NECESSARY_TOLERANCE:.0%} of necessary in every mode: "
        f"{'met' if ok else 'NOT met'} (worst {worst.backbone} / {worst.mode}: "
        f"{worst.vs_necessary:.3f})"
    )
    by_key = {(r.backbone, r.mode): r for r in rows}
    full, lrb = by_key.get(("mobilenetv2_100", "full")), by_key.get(("mobilenetv2_100", "lite_residual+bias"))
    if full and lrb:
        ratio = full.stock_total / lrb.engine_total
        lines.append(
            f"- total memory, mobilenetv2_100 stock full / engine lite_residual+bias: {ratio:.1f}x "
            f"({'met' if ratio >= TOTAL_TARGET else 'NOT met'}, target >= {TOTAL_TARGET:.0f}x)"
        )
    slowest = max(rows, key=lambda r: r.time_ratio)
    met = "met" if slowest.time_ratio <= TIME_TARGET else "NOT met"
    median = statistics.median(r.time_ratio for r in rows)
    lines.append(
        f"- engine step time <= {TIME_TARGET}x stock: {met} (worst {slowest.backbone} / "
        f"{slowest.mode}: {slowest.time_ratio:.2f}x; median over rows {median:.2f}x)"
    )
    return lines


def run_all(
    args: argparse.Namespace, bench: Callable[[str, str, argparse.Namespace], T], desc: str
) -> list[T]:
    """``bench(backbone, mode, args)`` for every backbone x mode of ``args``, with a progress bar (shared
    by ``benchmarks/peak.py``)."""
    torch.set_num_threads(args.threads)
    jobs = [(b, m) for b in args.backbones for m in args.modes]
    return [bench(b, m, args) for b, m in tqdm(jobs, desc=desc, unit="mode", dynamic_ncols=True)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run_all(args, bench_one, "engine benchmark")
    print(
        f"\n{args.resolution} px, batch {args.batch_size}, optimizer {args.optimizer}, "
        f"{args.threads} thread(s), step time: best of {args.repeats}\n"
    )
    print(table(rows))
    print()
    if (args.resolution, args.batch_size) != (224, 8):
        print(
            "(the targets are set for 224 px, batch 8: at small sizes weights and per-call overhead weigh "
            "more)"
        )
    print("\n".join(targets(rows)))
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
