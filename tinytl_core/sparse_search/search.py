"""Propose a sparse-update scheme: contribution analysis, then greedy selection under a memory budget.

As in Lin et al. (NeurIPS 2022), each option's *contribution* is what it adds in a short run of
:func:`tinytl_core.adapt.adapt` on the chosen dataset (the same seeds and data order for every option): a
bias option's over the classifier alone, a weight option's over the largest bias option (the paper
measures weights on top of a bias update, where a lone weight's gain is mostly noise). What it adds is the
drop in validation loss (:attr:`Metric.LOSS`, the default: a short run's accuracy on a few hundred images
moves in steps of a few points, its loss varies smoothly) or the accuracy gained (:attr:`Metric.ACCURACY`),
averaged over ``repeats`` seeds. Its *cost* is the
memory the memory model says it adds over the same reference (the modelled step peak,
:func:`tinytl_core.memory.analyze`). Options are the biases of the last ``k`` blocks (a few ``k``) and
the weights of the last layers at each update ratio. Gains are taken as additive (the paper's
assumption); costs are not, so every addition is checked on the modelled peak of the whole scheme before
it is kept:

1. start from the classifier alone;
2. among options that add accuracy (an option for a layer or for the biases replaces the one chosen
   before it), take the one with the most gain per added byte, as estimated from its own cost;
3. keep it if the modelled peak of the scheme with it fits the budget, else drop it; repeat until nothing
   that adds accuracy is left;
4. fill what is left of the budget: raise the update ratio of each chosen layer one step
   (1/8 -> 1/4 -> 1/2 -> 1; layers with the most gain per byte first) while the whole scheme still fits
   (more rows of a layer that helped; an unmeasured ratio counts the gain of the largest measured one
   below it).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from fractions import Fraction

from tinytl_core.adapt import AdaptConfig, adapt
from tinytl_core.data import load_dataset
from tinytl_core.lite_residual import find_blocks
from tinytl_core.memory import analyze
from tinytl_core.modes import get_mode, prepare_model, sparse_mode
from tinytl_core.quantities import format_bytes
from tinytl_core.sparse_scheme import (
    RATIOS,
    SparseScheme,
    WeightUpdate,
    format_ratio_text,
    pointwise_layers,
    weight_layers,
)

__all__ = [
    "Candidates",
    "Contribution",
    "ContributionAnalysis",
    "Metric",
    "Option",
    "SearchConfig",
    "Selection",
    "analyse_contributions",
    "candidate_options",
    "format_gain",
    "modelled_peak",
    "select_greedy",
]


class Metric(str, Enum):
    """What a contribution run's gain is measured in."""

    LOSS = "loss"  # validation loss dropped (nats): smooth, so short runs rank options reliably
    ACCURACY = "accuracy"  # validation accuracy gained (a fraction): the paper's, coarse on small sets


def format_gain(gain: float, metric: Metric) -> str:
    """``+4.5 points`` (accuracy, a fraction) or ``+0.120 nats`` (loss dropped)."""
    if metric is Metric.ACCURACY:
        return f"{100 * gain:+.1f} points"
    return f"{gain:+.3f} nats"


class Candidates(str, Enum):
    """Which weight layers the search considers (the last ``SearchConfig.layers`` of them)."""

    ALL = "all"  # every convolution and linear layer
    POINTWISE = "pointwise"  # 1x1 convolutions and linear layers (the paper's choice), reaching further back


@dataclass(frozen=True)
class Option:
    """One choice of the search: the biases of the last ``bias_blocks`` blocks, or ``layer``'s weight at
    ``ratio`` of its output channels."""

    bias_blocks: int = 0
    layer: str = ""
    ratio: Fraction = Fraction(0)

    @property
    def label(self) -> str:
        """``bias: last 8 blocks`` or ``blocks.6.0.conv_pwl @ 1/4``."""
        if self.layer:
            return f"{self.layer} @ {format_ratio_text(self.ratio)}"
        return f"bias: last {self.bias_blocks} blocks"

    def added_to(self, scheme: SparseScheme) -> SparseScheme:
        """``scheme`` with this option (replacing what the scheme had for the same layer, or its biases)."""
        if not self.layer:
            return replace(scheme, bias_blocks=self.bias_blocks)
        kept = tuple(u for u in scheme.weights if u.layer != self.layer)
        return replace(scheme, weights=(*kept, WeightUpdate(self.layer, self.ratio)))

    def replaced_in(self, scheme: SparseScheme) -> Option | None:
        """The option of ``scheme`` this one would replace (None: it adds a new layer or the first biases)."""
        if not self.layer:
            return Option(bias_blocks=scheme.bias_blocks) if scheme.bias_blocks else None
        found = next((u for u in scheme.weights if u.layer == self.layer), None)
        return Option(layer=found.layer, ratio=found.ratio) if found is not None else None


@dataclass(frozen=True)
class SearchConfig:
    """What to search over and how to measure contributions (short runs of :func:`adapt`).

    ``layers``: how many of the model's last weight layers (convolutions and linear layers, the classifier
    left out; with ``candidates`` POINTWISE only 1x1 convolutions and linear layers) are candidates;
    ``ratios``: the update ratios tried for each; ``bias_fractions``: fractions of the blocks whose biases
    are tried. ``steps``/``batch_size``/``lr``: each short run, repeated with seeds ``seed`` ..
    ``seed + repeats - 1`` and averaged; ``metric``: what a gain is measured in. The memory model
    counts at ``batch_size`` and ``resolution`` with ``optimizer``, frozen weights at
    ``frozen_weight_bits``.
    """

    backbone: str
    dataset: str = "digits"
    resolution: int | None = None
    batch_size: int = 32
    steps: int = 40
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    layers: int = 6
    ratios: tuple[Fraction, ...] = (Fraction(1, 4), Fraction(1))
    bias_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    shots: int | None = None
    val_cap: int | None = None
    pretrained: bool = True
    frozen_weight_bits: int = 32
    device: str = "auto"
    repeats: int = 1
    metric: Metric = Metric.LOSS
    candidates: Candidates = Candidates.ALL

    def adapt_config(self, mode: str, scheme: SparseScheme | None = None) -> AdaptConfig:
        """One short run of these settings (the fields both configurations share), in ``mode`` with
        ``scheme``; no memory recorded."""
        values = {**asdict(self), "mode": mode, "record_memory": False}
        return AdaptConfig.from_dict(
            {**values, "sparse_scheme": scheme.to_dict() if scheme is not None else None}
        )

    def validate(self) -> None:
        """ValueError for settings that cannot work (cheap: nothing is loaded)."""
        self.adapt_config("last").validate()
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0, got {self.layers}")
        if not self.ratios and self.layers:
            raise ValueError("give at least one update ratio")
        for ratio in self.ratios:
            if ratio not in RATIOS:
                raise ValueError(f"ratios must be among {', '.join(map(format_ratio_text, RATIOS))}")
        if any(not 0 < f <= 1 for f in self.bias_fractions):
            raise ValueError("bias fractions must be in (0, 1]")
        if self.frozen_weight_bits not in (8, 32):
            raise ValueError(f"frozen weight bits must be 8 or 32, got {self.frozen_weight_bits}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats must be a whole number >= 1, got {self.repeats!r}")
        if not isinstance(self.metric, Metric):
            raise ValueError(f"metric must be one of {', '.join(m.value for m in Metric)}")
        if not isinstance(self.candidates, Candidates):
            raise ValueError(f"candidates must be one of {', '.join(c.value for c in Candidates)}")


@dataclass(frozen=True)
class Contribution:
    """One option's short runs: accuracy and loss (means over the repeats), gain (in the search's
    :class:`Metric`) and memory cost over its reference (the classifier alone for biases; the largest bias
    option for weights, trained together with it)."""

    option: Option
    accuracy: float
    gain: float
    peak_bytes: int  # modelled step peak of the run (the option, with its reference)
    cost_bytes: int  # that, less the reference's
    loss: float = math.nan


@dataclass
class ContributionAnalysis:
    """The baseline (classifier only) and every option's contribution."""

    config: SearchConfig
    baseline_accuracy: float
    baseline_bytes: int
    num_classes: int
    contributions: list[Contribution] = field(default_factory=list)
    baseline_loss: float = math.nan

    def gain_of(self, scheme: SparseScheme) -> float:
        """The scheme's expected gain: the sum of its options' gains. A layer at a ratio not analysed counts
        the gain of the largest analysed ratio below it (0 if none; more rows of a layer are assumed not to
        hurt), biases not analysed count 0."""
        gains = {c.option: c.gain for c in self.contributions}
        total = gains.get(Option(bias_blocks=scheme.bias_blocks), 0.0) if scheme.bias_blocks else 0.0
        for u in scheme.weights:
            measured = [r for r in RATIOS if r <= u.ratio and Option(layer=u.layer, ratio=r) in gains]
            total += gains[Option(layer=u.layer, ratio=measured[-1])] if measured else 0.0
        return total


@dataclass(frozen=True)
class Selection:
    """The chosen scheme, its modelled peak and expected gain, and what the greedy search did."""

    scheme: SparseScheme | None  # None: nothing that adds accuracy fits
    peak_bytes: int
    expected_gain: float
    budget_bytes: int
    log: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes


def candidate_options(config: SearchConfig, model) -> list[Option]:
    """The options of the search on ``model``: biases of the last ``ceil(f * blocks)`` blocks for each
    fraction, and each of the last ``config.layers`` weight layers (of ``config.candidates``) at each
    ratio."""
    n_blocks = len(find_blocks(model))
    counts = sorted({max(1, math.ceil(f * n_blocks)) for f in config.bias_fractions}) if n_blocks else []
    pool = pointwise_layers(model) if config.candidates is Candidates.POINTWISE else weight_layers(model)
    layers = pool[-config.layers :] if config.layers else []
    return [Option(bias_blocks=k) for k in counts] + [
        Option(layer=name, ratio=r) for name in layers for r in sorted(set(config.ratios))
    ]


def modelled_peak(config: SearchConfig, scheme: SparseScheme | None, num_classes: int) -> int:
    """Modelled step peak (complete accounting) of training ``scheme`` (None: the classifier alone) at the
    search's resolution, batch, optimizer and frozen-weight bits; on the ``meta`` device."""
    mode = sparse_mode(scheme) if scheme is not None else get_mode("last")
    prepared = prepare_model(
        config.backbone,
        mode,
        num_classes=num_classes,
        resolution=config.resolution,
        device="meta",
        engine=False,  # what is stored follows the rules, not the layers: skip the engine's trace
    )
    report = analyze(
        prepared.model,
        input_size=prepared.data.input_size,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        frozen_weight_bits=config.frozen_weight_bits,
    )
    return int(report.totals.total_modelled_bytes)


Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)``: called before each step of a slow search."""


def analyse_contributions(
    config: SearchConfig,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    options: Sequence[Option] | None = None,
) -> ContributionAnalysis:
    """Train the classifier alone and each option alone (short runs), and model each one's memory.

    ``options`` defaults to :func:`candidate_options`. Raises ValueError for bad settings (before
    anything slow), the dataset's and the backbone's errors, and ``KeyboardInterrupt``-free cancellation:
    a set ``cancel`` stops after the current run with what was analysed so far.
    """
    config.validate()
    report = progress or (lambda done, total, what: None)
    data = load_dataset(config.dataset, shots=config.shots, val_cap=config.val_cap)
    meta = prepare_model(
        config.backbone, "last", num_classes=data.num_classes, resolution=config.resolution, device="meta"
    )
    options = list(options) if options is not None else candidate_options(config, meta.model)
    total = 1 + len(options)
    report(0, total, "classifier alone")
    baseline, baseline_loss = _runs(config, "last", None, data)
    analysis = ContributionAnalysis(
        config,
        baseline,
        modelled_peak(config, None, data.num_classes),
        data.num_classes,
        baseline_loss=baseline_loss,
    )
    # Bias options first: the largest one is the reference of the weight options.
    options.sort(key=lambda o: (bool(o.layer), o.bias_blocks))
    biases = [o for o in options if not o.layer]
    reference = SparseScheme(biases[-1].bias_blocks) if biases else SparseScheme()
    ref = (baseline, baseline_loss, analysis.baseline_bytes)
    for i, option in enumerate(options, start=1):
        if cancel is not None and cancel.is_set():
            break
        report(i, total, option.label)
        scheme = option.added_to(reference if option.layer else SparseScheme())
        accuracy, loss = _runs(config, "sparse", scheme, data)
        peak = modelled_peak(config, scheme, data.num_classes)
        over = ref if option.layer else (baseline, baseline_loss, analysis.baseline_bytes)
        gain = over[1] - loss if config.metric is Metric.LOSS else accuracy - over[0]
        analysis.contributions.append(Contribution(option, accuracy, gain, peak, peak - over[2], loss))
        if not option.layer and scheme == reference:
            ref = (accuracy, loss, peak)
    report(total, total, "done")
    return analysis


def _runs(config: SearchConfig, mode: str, scheme: SparseScheme | None, data) -> tuple[float, float]:
    """Validation accuracy and loss after short runs (not stored), averaged over the config's repeats."""
    accuracies, losses = [], []
    for seed in range(config.seed, config.seed + config.repeats):
        result = adapt(replace(config.adapt_config(mode, scheme), seed=seed), data=data)
        if result.final_val_acc is None or result.final_val_loss is None:
            raise RuntimeError(
                f"the short run for {mode} ended without an accuracy ({result.status}: {result.message})"
            )
        accuracies.append(float(result.final_val_acc))
        losses.append(float(result.final_val_loss))
    return sum(accuracies) / len(accuracies), sum(losses) / len(losses)


def select_greedy(
    analysis: ContributionAnalysis,
    budget_bytes: int,
    *,
    peak_of: Callable[[SparseScheme], int] | None = None,
    fill: bool = True,
) -> Selection:
    """Greedy selection under ``budget_bytes`` of modelled step peak (see the module docstring); ``fill``
    then raises the chosen layers' update ratios while the scheme fits (step 4).

    ``peak_of`` models a whole scheme's peak (default :func:`modelled_peak` with the analysis' settings).
    """
    if budget_bytes <= 0:
        raise ValueError(f"the budget must be positive, got {budget_bytes} bytes")
    peak_of = peak_of or (lambda s: modelled_peak(analysis.config, s, analysis.num_classes))
    cost = {c.option: c.cost_bytes for c in analysis.contributions}
    gain = {c.option: c.gain for c in analysis.contributions}
    scheme, peak, log = SparseScheme(), analysis.baseline_bytes, []
    if peak > budget_bytes:
        log.append(f"even the classifier alone ({format_bytes(peak)} modelled) exceeds the budget")
        return Selection(None, peak, 0.0, budget_bytes, tuple(log))
    rejected: set[Option] = set()
    while True:
        best, best_score = None, -math.inf
        for option in gain:
            if option in rejected or gain[option] <= 0:
                continue
            before = option.replaced_in(scheme)
            if before == option:
                continue
            added_gain = gain[option] - (gain.get(before, 0.0) if before else 0.0)
            if added_gain <= 0:
                continue
            added_cost = cost[option] - (cost.get(before, 0) if before else 0)
            if peak + max(added_cost, 0) > budget_bytes:
                continue
            score = added_gain / max(added_cost, 1)
            if score > best_score:
                best, best_score = option, score
        if best is None:
            break
        candidate = best.added_to(scheme)
        candidate_peak = peak_of(candidate)
        if candidate_peak > budget_bytes:
            rejected.add(best)
            log.append(f"skip {best.label}: the scheme would peak at {format_bytes(candidate_peak)}")
            continue
        scheme, peak = candidate, candidate_peak
        log.append(
            f"take {best.label}: {format_gain(gain[best], analysis.config.metric)} alone, "
            f"scheme peaks at {format_bytes(peak)}"
        )
    if not scheme.weights and not scheme.bias_blocks:
        log.append("no option that adds accuracy fits the budget")
        return Selection(None, analysis.baseline_bytes, 0.0, budget_bytes, tuple(log))
    if fill:
        scheme, peak = _fill_ratios(scheme, peak, budget_bytes, gain, cost, peak_of, log)
    return Selection(scheme, peak, analysis.gain_of(scheme), budget_bytes, tuple(log))


def _fill_ratios(
    scheme: SparseScheme,
    peak: int,
    budget_bytes: int,
    gain: dict[Option, float],
    cost: dict[Option, int],
    peak_of: Callable[[SparseScheme], int],
    log: list[str],
) -> tuple[SparseScheme, int]:
    """Step 4: raise chosen layers' ratios one step at a time (most gain per byte first) while the whole
    scheme fits; a layer that does not fit at its next ratio stays where it is."""

    def per_byte(u: WeightUpdate) -> float:  # of the layer's largest measured option up to its ratio
        measured = [r for r in RATIOS if r <= u.ratio and Option(layer=u.layer, ratio=r) in gain]
        option = Option(layer=u.layer, ratio=measured[-1]) if measured else None
        return gain[option] / max(cost[option], 1) if option is not None else 0.0

    stuck: set[str] = set()
    while True:
        order = sorted((u for u in scheme.weights if u.ratio < 1 and u.layer not in stuck), key=per_byte)
        if not order:
            return scheme, peak
        update = order[-1]
        higher = RATIOS[RATIOS.index(update.ratio) + 1]
        candidate = Option(layer=update.layer, ratio=higher).added_to(scheme)
        candidate_peak = peak_of(candidate)
        if candidate_peak > budget_bytes:
            stuck.add(update.layer)
            continue
        log.append(
            f"fill: {update.layer} {format_ratio_text(update.ratio)} -> {format_ratio_text(higher)}, "
            f"scheme peaks at {format_bytes(candidate_peak)}"
        )
        scheme, peak = candidate, candidate_peak
