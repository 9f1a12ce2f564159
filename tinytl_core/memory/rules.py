"""TinyTL's cost model: what each layer *must* store for backward, and the paper's own accounting.

Necessary activations (TinyTL's rules, made exact where the paper simplifies)
-----------------------------------------------------------------------------
For ``y = a W + b`` the weight gradient ``dL/dW = a^T dL/dy`` needs the input ``a``; the bias gradient
``dL/db = dL/dy`` and the input gradient ``dL/da = dL/dy W^T`` do not. Per layer, in execution order:

1. **No gradient flows** -- when nothing at or before a layer trains (its input does not require grad
   and it has no trainable parameter), it stores nothing. So ``last`` stores only the classifier's input.
   (Decided from the traced tensors' ``requires_grad``: exact for branches, not just "below the first
   trainable layer in order".)
2. **Linear layers** (Linear, Conv, ConvTranspose): a trainable weight stores the input; a frozen weight
   stores nothing, whether the bias trains or not. A weight trained on part of its output channels (the
   sparse update's ratios 1/8, 1/4, 1/2) stores its input once, as a whole one does (each trained row
   reads every input channel of its group); only the trained rows have a gradient and optimizer state.
   Its forward and backward concatenate the two slices into a whole weight, a weight-sized temporary
   counted in the layer's working set (not stored).
   Weight standardisation (GroupNorm + WS, for batch size 1) changes nothing: a frozen standardised weight
   is a constant, computed once and held in place of the weight; a trainable one is standardised again in
   backward from the weight (the input only). A frozen weight stored as 8-bit codes is dequantised on the
   fly in forward and backward: nothing stored; its weight bytes are the codes and a 256-entry codebook.
3. **Normalisation with frozen statistics** (BatchNorm on running statistics) is a per-channel affine map:
   a trainable scale stores the input, a frozen scale stores nothing (a trainable shift needs nothing).
4. **Normalisation with statistics of its input** (BatchNorm with batch statistics, GroupNorm, LayerNorm,
   InstanceNorm, RMSNorm) stores its input whenever a gradient flows through it or its scale trains,
   *even with a frozen affine*: the gradient through the mean and variance needs the normalised input.
   With it come the statistics its kernel computed (BatchNorm: mean and inverse std, 2 x C floats), which
   backward reads too; they could be recomputed from the input, but every PyTorch kernel keeps them and
   they are tiny next to the input. The paper counts normalisation like a linear layer (nothing when
   frozen); this is where we differ.
5. **ReLU family** (ReLU, ReLU6, LeakyReLU, Hardtanh) and the piecewise-linear Hardsigmoid need a 1-bit
   mask per element. A ReLU-family mask is free when the same tensor (the activation's output) is stored
   in full by another layer, e.g. by the next conv with a trainable weight: the mask is read off it
   exactly (``y > 0`` iff ``x > 0``; ``0 < y < 6`` iff ``0 < x < 6``). Hardsigmoid's is not (its output
   rounds to 0 or 1 just inside ``(-3, 3)``), nor that of a LeakyReLU whose slope is not positive.
6. **Smooth activations** (SiLU/Swish, GELU, Hardswish, Mish, ELU, ...) store their input at its own
   precision (32 bits for fp32 models). Sigmoid and Tanh store their output instead (their gradients are
   ``y (1 - y)`` and ``1 - y^2``), which is free when another layer stores it anyway, e.g. the gate of a
   squeeze-excitation multiply. PReLU with a trainable slope stores its input. In the ``mobiletl`` mode
   (MobileTL, Chiang et al., AAAI 2023) Hardswish -- and, as an extension the paper did not cover, SiLU
   and GELU -- store a 1-bit mask of their input's sign instead: their backward is approximated as
   ``grad * (x > 0)``, so the gradients differ from the exact ones by design.
7. **Softmax** stores its output. **Max pooling** stores, per output element, the argmax position within
   its window: ``ceil(log2(window))`` bits. **Dropout** (p > 0, training) stores a 1-bit keep mask.
   Average pooling, upsampling, padding, flatten, identity store nothing (linear, shape-only).
8. **Anything else** -- an unknown leaf type, or the functional code of a module (residual add, attention
   matmuls, squeeze-excitation gating, the loss) -- counts as what stock PyTorch saves for it: every
   tensor its autograd nodes keep, also one an earlier layer saved first. Squeeze-excitation after a ReLU
   is the case in point: ``x * gate`` needs ``x`` in full (the gate's gradient is ``sum(g * x)``), although
   stock PyTorch saved ``x`` first for the ReLU; so ``x`` is stored by the multiply and the ReLU's mask
   is free (rule 5).
9. A tensor stored by several layers (a block input read by two convs) is counted once; lite residual
   modules are made of ordinary layers, so they count their own activations under the same rules.

Paper accounting (``accounting="paper"``, the public TinyTL profiler's conventions)
-----------------------------------------------------------------------------------
As the paper's code computes it (``profile_memory_cost`` in mit-han-lab/tinyml, ``tinytl/utils``):
memory = peak activation of one sample x batch size + parameters, with trainable parameters at 32 bits and
frozen ones at 8 bits (k-means quantised), no gradients or optimizer state, MB = 10^6 bytes. Activations
are 4 bytes.

- **P1. What is stored for backward.** Only linear, normalisation and activation layers count. Linear and
  normalisation layers store their input when their weight (scale) trains (normalisation treated like
  a linear layer). ReLU-family activations store a 1-bit mask and other activations their 32-bit input
  whenever a gradient flows into the backbone -- in every mode but ``last`` -- even at layers before
  the first trainable one (the profiler's one ``require_backward`` switch).
- **P2. Working set of a layer** (inference, in place where it can be): a linear layer holds its input and
  its output, a convolution its input and its output divided by its groups (a depthwise convolution
  writes channel by channel, so it needs one channel's output beside its input); normalisation and
  activation layers work in place over their input.
- **P3. Peak.** The largest, over those layers in execution order, of: the layer's working set +
  everything stored for backward so far + the input of the enclosing residual block, i.e. one that adds
  its input back (the identity shortcut, :func:`~tinytl_core.layer_kinds.adds_block_input`). A lite
  residual branch's input is not counted as a residual (the profiler counts only shortcut blocks).
  Stored tensors are not de-duplicated.

The paper's Table 2 runs the public script's network: the lite residual branches are inserted in every
method (frozen, so 8-bit, when the method does not train them; trained in ``full``) and sized for a
fixed input (128 px at the first block group), with GroupNorm; :func:`tinytl_core.paper.paper_table`
builds it so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from tinytl_core.engine.partial import TRAINED_ROWS
from tinytl_core.layer_kinds import LayerKind, Needs, activation_of, kind_of, mask_from_output, uses_sign_mask
from tinytl_core.layer_kinds import stats_from_input as _stats_from_input_of
from tinytl_core.tracing import Row, TensorRef

PAPER_ACTIVATION_BYTES = 4
MASK_BITS = 1


def classify(row: Row) -> LayerKind:
    """The rule family of a row's layer (:func:`tinytl_core.layer_kinds.kind_of`); functional code and
    the loss are OTHER."""
    return kind_of(row.module) if row.kind in ("layer", "module") else LayerKind.OTHER


@dataclass(frozen=True)
class Need:
    """One tensor a layer must keep. ``key`` = (storage, version) of the tensor it is (derived from).

    ``mask`` marks a ReLU-style mask that can be read off the full tensor with the same key, so it is free
    when anyone keeps that tensor; other small tensors (max-pool indices, dropout masks) have no key.
    """

    key: tuple[int, int] | None
    nbytes: int
    mask: bool = False


@dataclass(frozen=True)
class Verdict:
    """What a row must store and why."""

    needs: tuple[Need, ...]
    reason: str


def _full(t: TensorRef, why: str) -> Verdict:
    return Verdict((Need((t.key, t.version), t.nbytes),), why)


def _mask(t: TensorRef, bits: float, why: str, *, derivable: bool = True) -> Verdict:
    nbytes = math.ceil(t.numel * bits / 8)
    return Verdict((Need((t.key, t.version), nbytes, mask=True) if derivable else Need(None, nbytes),), why)


def _as_saved(row: Row, why: str) -> Verdict:
    # Everything the row's backward reads, also tensors an earlier row saved first (counted once overall).
    return Verdict(tuple(Need((s.key, s.version), s.nbytes) for s in row.saved_all), why)


def _trains(row: Row, name: str) -> bool:
    p = row.param(name)
    if p is None and name == "weight":  # a partial weight (sparse update) trains its first rows
        p = row.param(TRAINED_ROWS)
    return p is not None and p.trainable


def _stats_from_input(row: Row) -> bool:
    return _stats_from_input_of(row.module, row.batch_statistics)


def _window(module: nn.Module, row: Row) -> int:
    kernel = getattr(module, "kernel_size", None)
    if kernel is not None:
        dims = len(row.outputs[0].shape) - 2 if row.outputs else 2
        ks = (kernel,) * max(1, dims) if isinstance(kernel, int) else tuple(kernel)
        return max(1, math.prod(ks))
    if row.inputs and row.outputs:  # adaptive: the largest window is ceil(in / out) per spatial dim
        ins, outs = row.inputs[0].shape[2:], row.outputs[0].shape[-len(row.inputs[0].shape[2:]) :]
        return max(1, math.prod(math.ceil(i / max(1, o)) for i, o in zip(ins, outs)))
    return 1


def necessary(row: Row) -> Verdict:
    """TinyTL's rule for one row (see the module docstring)."""
    kind = classify(row)
    if row.kind == "loss":
        return _as_saved(row, "loss: as autograd saves it")
    if row.kind == "ops":
        return _as_saved(row, f"functional code of {row.type}: as autograd saves it")
    trainable = any(p.trainable for p in row.params)
    if not row.needs_input_grad and not trainable:
        return Verdict((), "no gradient flows here: nothing trains at or before this layer")
    x = row.inputs[0] if row.inputs else None
    y = row.outputs[0] if row.outputs else None
    label = row.type
    if kind is LayerKind.LINEAR:
        if _trains(row, "weight") and x is not None:
            return _full(x, "weight trainable: stores input")
        if _trains(row, "bias"):
            return Verdict((), f"frozen {label}: bias gradient needs no input")
        return Verdict((), f"frozen {label}: input gradient needs only the weight")
    if kind is LayerKind.NORM:
        if _stats_from_input(row):
            if (row.needs_input_grad or _trains(row, "weight")) and x is not None:
                stats = tuple(Need((s.key, s.version), s.nbytes) for s in row.saved_all if s.key != x.key)
                return Verdict(
                    _full(x, "").needs + stats,
                    "statistics of its input: backward needs the input (and its statistics) even if frozen",
                )
            return Verdict((), "statistics of its input, but only the shift trains: needs no input")
        if _trains(row, "weight") and x is not None:
            return _full(x, "frozen statistics, trainable scale: stores input")
        return Verdict((), "frozen statistics and scale: an affine map, needs no input")
    if kind is LayerKind.PRELU:
        if _trains(row, "weight") and x is not None:
            return _full(x, "PReLU slope trainable: stores input")
        kind = LayerKind.RELU
    if kind in (LayerKind.RELU, LayerKind.STEP) and y is not None:
        return _mask(y, MASK_BITS, f"{label}: 1-bit mask", derivable=mask_from_output(row.module))
    if kind is LayerKind.SMOOTH and y is not None and uses_sign_mask(row.module):
        return _mask(
            y, MASK_BITS, f"{label}: 1-bit sign mask (MobileTL, approximate gradient)", derivable=False
        )
    activation = activation_of(row.module)
    from_output = activation is not None and activation.needs is Needs.OUTPUT
    if kind is LayerKind.SMOOTH and y is not None and from_output:
        return _full(y, f"{label}: needs its {8 * y.nbytes // max(1, y.numel)}-bit output")
    if kind is LayerKind.SMOOTH and x is not None:
        return _full(x, f"{label}: needs its {8 * x.nbytes // max(1, x.numel)}-bit input")
    if kind is LayerKind.SOFTMAX and y is not None:
        return _full(y, f"{label}: needs its output")
    if kind is LayerKind.MAXPOOL and y is not None:
        bits = max(1, math.ceil(math.log2(_window(row.module, row))))
        return _mask(y, bits, f"max pool: {bits}-bit argmax index per output", derivable=False)
    if kind is LayerKind.DROPOUT and y is not None:
        p = getattr(row.module, "p", getattr(row.module, "drop_prob", 0.0))
        if not row.training or not p:
            return Verdict((), f"{label}: inactive (p=0 or eval), needs nothing")
        return _mask(y, MASK_BITS, f"{label}: 1-bit keep mask", derivable=False)
    if kind is LayerKind.SCALE:
        if any(p.trainable and p.local_name in ("gamma", "weight") for p in row.params) and x is not None:
            return _full(x, "layer scale trainable: stores input")
        return Verdict((), "frozen per-channel scale: needs no input")
    if kind is LayerKind.FREE:
        return Verdict((), f"{label}: linear or shape-only, needs nothing")
    if row.kind == "module":
        return _as_saved(row, f"own code of {label}: as autograd saves it")
    return _as_saved(row, f"{label}: no rule, as autograd saves it")


@dataclass(frozen=True)
class PaperCost:
    """The paper profiler's view of one row: bytes stored for backward and its working set."""

    counted: bool
    stored: int
    working: int
    reason: str


def paper(row: Row, *, backward: bool = True) -> PaperCost:
    """The public TinyTL profiler's rule for one row (P1, P2 in the module docstring). ``backward``: a
    gradient flows into the backbone (every mode but ``last``), so activations store their masks / inputs."""
    kind = classify(row)
    kind = {LayerKind.PRELU: LayerKind.RELU, LayerKind.STEP: LayerKind.SMOOTH}.get(kind, kind)
    if kind not in (LayerKind.LINEAR, LayerKind.NORM, LayerKind.RELU, LayerKind.SMOOTH) or not row.inputs:
        return PaperCost(False, 0, 0, "not counted by the paper's profiler")
    n_in = row.inputs[0].numel
    n_out = row.outputs[0].numel if row.outputs else n_in
    if kind is LayerKind.LINEAR:  # a conv's output divided by its groups (depthwise: one channel's)
        groups = getattr(row.module, "groups", 1)
        working = PAPER_ACTIVATION_BYTES * n_in + PAPER_ACTIVATION_BYTES * n_out // max(1, groups)
    else:  # normalisation and activations work in place
        working = PAPER_ACTIVATION_BYTES * n_in
    if kind in (LayerKind.LINEAR, LayerKind.NORM):
        if _trains(row, "weight"):
            return PaperCost(True, PAPER_ACTIVATION_BYTES * n_in, working, "weight trainable: stores input")
        return PaperCost(True, 0, working, "frozen weight: stores nothing")
    if not backward:
        return PaperCost(True, 0, working, f"{row.type}: no gradient flows into the backbone")
    if kind is LayerKind.RELU or (kind is LayerKind.SMOOTH and uses_sign_mask(row.module)):
        return PaperCost(True, math.ceil(n_in / 8), working, f"{row.type}: 1-bit mask")
    return PaperCost(True, PAPER_ACTIVATION_BYTES * n_in, working, f"{row.type}: 32-bit input")
