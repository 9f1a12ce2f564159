"""The TinyTL paper's Table 2 memory column, reproduced by the memory model (and checked by the engine).

Table 2 of the paper (Cai et al., NeurIPS 2020) gives the training memory of each method on its own
backbone, ProxylessNAS-Mobile (:mod:`tinytl_core.backbones.proxyless`), at batch 8 and 224 px (320 px for
one TinyTL-L+B row). Those numbers come from the public script (``tinytl_fgvc_train.py`` and
``profile_memory_cost`` in mit-han-lab/tinyml), whose conventions the *paper* accounting follows (rules
P1-P3 in :mod:`tinytl_core.memory.rules`). :func:`paper_table` rebuilds the script's network for each
method and accounts it:

- the backbone with lite residual branches inserted for **every** method (the script inserts them before
  loading its ImageNet weights, whatever the method): frozen, hence counted at 8 bits, where the method
  does not train them; trained in ``full``; sized as the script sizes them, whatever the input (its
  ``max_resolution = 128`` at the first block group: the kernels our sizing picks for a 256 px input);
- GroupNorm in place of BatchNorm (the script's ``replace_bn_with_gn``, 8 channels per group);
- the classifier of the script's default dataset (Flowers102: 102 classes).

All seven rows then come out within 1% of the paper (``python benchmarks/paper.py``). What it took, and
how much each part moves the rows (batch 8):

- **the inference peak of a frozen backbone** (P2), by far the largest: the profiler lets normalisation
  and activations work in place (their input only) and counts a convolution's output divided by its
  groups (a depthwise convolution writes channel by channel). Counting every layer's input plus its whole
  output instead put FT-Last and TinyTL-B at 42 MB (paper: 31, 32);
- **the network of the script**, not of the method: frozen 8-bit branches in FT-Last, TinyTL-B and
  FT-Norm+Last (+1.8 MB of weights; the branches' norms train in FT-Norm+Last: 183 -> 193 MB), trained
  branches in FT-Full (their 32-bit weights and stored inputs: 367 -> 391 MB);
- **branch kernels sized for 128 px**: at 320 px this tool's own sizing picks 5x5 kernels in the last
  stages, +4.7 MB of weights (69 MB instead of the paper's 65, 7% off);
- **masks only when a gradient enters the backbone** (P1): FT-Last stores none (-0.8 MB);
- **residuals only for shortcut blocks** (P3): the input a branch reads after a block without shortcut is
  not counted (-0.7 MB on the TinyTL-L rows). Physically it is alive: the *complete* accounting counts it.

What the paper's accounting leaves out, and the engine's step peak column shows: fp32 weights of the
frozen backbone (the 8-bit codes are real only with quantised weights), gradients and Adam state of what
trains, and the gradients alive during backward; and that frozen GroupNorm needs its input for backward
(the paper counts it as an affine map; this tool's modes keep BatchNorm on running statistics instead).

Beside each row, the step's peak of the same method as this tool trains it (the training engine, Adam,
fp32 weights, BatchNorm on running statistics where the backbone is frozen, branches only where the mode
has them): modelled by the complete accounting (fast, on the ``meta`` device) or measured on one real
step (:func:`tinytl_core.memory.measure`; seconds per row at 224 px on a CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum

import pandas as pd
import torch

from tinytl_core.backbones import create_backbone
from tinytl_core.backbones.proxyless import PROXYLESS_MOBILE
from tinytl_core.lite_residual import LiteResidualConfig, attach_lite_residuals
from tinytl_core.memory import MB, analyze, measure
from tinytl_core.modes import get_mode, prepare_model

PAPER_BATCH_SIZE = 8
"""Table 2's batch size."""

PAPER_NUM_CLASSES = 102
"""Classes of the head the table is computed with: the public script's default dataset, Flowers102."""

PAPER_BRANCH_SIZING_PX = 256
"""Input size whose feature maps size the lite residual kernels as the public code does (it fixes
``max_resolution = 128`` for the first block group's input, i.e. a 256 px image's)."""

TOLERANCE = 0.05
"""How close each reproduced row must be to the paper's figure (5%)."""


@dataclass(frozen=True)
class PaperMethod:
    """One row of Table 2: the paper's name, this tool's mode, the input size and the paper's memory."""

    method: str
    mode: str
    resolution: int
    paper_mb: float


TABLE2: tuple[PaperMethod, ...] = (
    PaperMethod("FT-Last", "last", 224, 31),
    PaperMethod("TinyTL-B", "bias", 224, 32),
    PaperMethod("TinyTL-L", "lite_residual", 224, 37),
    PaperMethod("TinyTL-L+B", "lite_residual+bias", 224, 37),
    PaperMethod("TinyTL-L+B @320", "lite_residual+bias", 320, 65),
    PaperMethod("FT-Norm+Last", "bn+last", 224, 192),
    PaperMethod("FT-Full", "full", 224, 391),
)
"""Table 2 of the paper (ProxylessNAS-Mobile, batch 8): memory in MB (10^6 bytes), as published."""


def select_methods(names: list[str] | None) -> tuple[PaperMethod, ...]:
    """The :data:`TABLE2` rows called ``names`` (the paper's method names), in the order given, each once;
    all of them for None or an empty list. ValueError naming the valid ones for an unknown name."""
    if not names:
        return TABLE2
    known = {r.method: r for r in TABLE2}
    names = [n.strip() for n in names if n.strip()]
    if not names:  # only blank names given ('--methods ""')
        raise ValueError(f"no method given; choose from {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return tuple(known[n] for n in dict.fromkeys(names))  # each once (a repeated name, one row)


class StepPeak(str, Enum):
    """How :func:`paper_table` fills the engine's step-peak column."""

    NONE = "none"  # leave it out
    MODELLED = "modelled"  # complete accounting on the meta device (fast)
    MEASURED = "measured"  # one profiled real step per row (seconds each at 224 px on a CPU)


@dataclass(frozen=True)
class PaperRow:
    """One reproduced row: the paper's memory, ours in the paper accounting (weights + peak activation x
    batch), their ratio, and the engine's step peak of the same mode (``step_peak_kind`` says whether it
    is modelled or measured; None when not asked for)."""

    method: str
    mode: str
    resolution: int
    paper_mb: float
    ours_mb: float
    weights_mb: float
    activations_mb: float
    step_peak_mb: float | None = None
    step_peak_kind: str = StepPeak.NONE.value

    @property
    def ratio(self) -> float:
        """Ours / paper."""
        return self.ours_mb / self.paper_mb

    @property
    def within_tolerance(self) -> bool:
        """Whether ours is within :data:`TOLERANCE` of the paper's figure."""
        return abs(self.ratio - 1.0) <= TOLERANCE


def paper_network(
    mode: str, resolution: int, *, num_classes: int = PAPER_NUM_CLASSES, device: str = "meta"
) -> torch.nn.Module:
    """The public script's network for ``mode`` (see the module docstring): ProxylessNAS-Mobile with lite
    residual branches in every mode, GroupNorm, ``num_classes`` outputs, the mode's parameters trainable;
    stock layers (the accounting traces stock layers), randomly initialised on ``device`` (default
    ``meta``: shapes only)."""
    model, _ = create_backbone(PROXYLESS_MOBILE, num_classes, device=device)
    sizing = (3, PAPER_BRANCH_SIZING_PX, PAPER_BRANCH_SIZING_PX)
    attach_lite_residuals(model, sizing, LiteResidualConfig(group_norm=True))
    # With the branches in place the mode only sets what trains (and swaps BatchNorm for GroupNorm).
    get_mode(mode).apply(model, input_size=(3, resolution, resolution), group_norm=True, engine=False)
    return model


def _step_peak(row: PaperMethod, kind: StepPeak, batch_size: int, num_classes: int) -> float | None:
    """The engine's step peak (MB) of ``row``'s mode as this tool trains it."""
    if kind is StepPeak.NONE:
        return None
    size = (3, row.resolution, row.resolution)
    if kind is StepPeak.MODELLED:
        prepared = prepare_model(
            PROXYLESS_MOBILE,
            row.mode,
            num_classes=num_classes,
            resolution=row.resolution,
            device="meta",
            engine=False,
        )
        report = analyze(prepared.model, input_size=size, batch_size=batch_size, optimizer="adam")
        return report.totals.total_modelled_bytes / MB
    torch.manual_seed(0)
    prepared = prepare_model(PROXYLESS_MOBILE, row.mode, num_classes=num_classes, resolution=row.resolution)
    measured = measure(
        prepared.model, input_size=size, batch_size=batch_size, optimizer="adam", per_layer=False
    )
    return None if measured.step_peak is None else measured.step_peak / MB


def paper_table(
    *,
    step_peak: StepPeak | str = StepPeak.MODELLED,
    rows: tuple[PaperMethod, ...] = TABLE2,
    batch_size: int = PAPER_BATCH_SIZE,
    num_classes: int = PAPER_NUM_CLASSES,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[PaperRow]:
    """Reproduce Table 2's memory column (see the module docstring): one :class:`PaperRow` per method.

    Args:
        step_peak: the engine's step-peak column: ``modelled`` (default, about a second per row),
            ``measured`` (one real profiled step per row: several seconds each at 224 px on a CPU) or
            ``none``.
        rows: which rows of :data:`TABLE2` to compute.
        batch_size: samples per step (the paper: 8).
        num_classes: classes of the head (the paper's script default: 102).
        progress: called as ``progress(done, total, method)`` after each row.
    """
    kind = StepPeak(step_peak)
    out: list[PaperRow] = []
    for i, row in enumerate(rows):
        size = (3, row.resolution, row.resolution)
        model = paper_network(row.mode, row.resolution, num_classes=num_classes)
        totals = analyze(model, input_size=size, batch_size=batch_size, accounting="paper").totals
        out.append(
            PaperRow(
                method=row.method,
                mode=row.mode,
                resolution=row.resolution,
                paper_mb=float(row.paper_mb),
                ours_mb=totals.total_modelled_bytes / MB,
                weights_mb=totals.weights_bytes / MB,
                activations_mb=totals.activations_necessary_bytes / MB,
                step_peak_mb=_step_peak(row, kind, batch_size, num_classes),
                step_peak_kind=kind.value,
            )
        )
        if progress is not None:
            progress(i + 1, len(rows), row.method)
    return out


def paper_frame(rows: list[PaperRow]) -> pd.DataFrame:
    """The reproduced table as a DataFrame (one column per :class:`PaperRow` field, plus ``ratio``)."""
    frame = pd.DataFrame([{f.name: getattr(r, f.name) for f in fields(PaperRow)} for r in rows])
    frame["ratio"] = [r.ratio for r in rows]
    return frame


def format_paper_table(rows: list[PaperRow]) -> str:
    """The reproduced table as Markdown (MB = 10^6 bytes), as the benchmark and the README print it."""
    kind = next((r.step_peak_kind for r in rows if r.step_peak_mb is not None), None)
    head = "| method | px | paper MB | ours MB (weights + act.) | ours / paper |"
    rule = "|---|---:|---:|---:|---:|"
    if kind is not None:
        head += f" engine step peak MB ({kind}) |"
        rule += "---:|"
    lines = [head, rule]
    for r in rows:
        line = (
            f"| {r.method} | {r.resolution} | {r.paper_mb:.0f} | {r.ours_mb:.1f} ({r.weights_mb:.1f} + "
            f"{r.activations_mb:.1f}) | {r.ratio:.3f} |"
        )
        if kind is not None:
            line += f" {r.step_peak_mb:.1f} |" if r.step_peak_mb is not None else " — |"
        lines.append(line)
    return "\n".join(lines)
