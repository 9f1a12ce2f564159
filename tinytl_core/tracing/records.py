"""What a trace records: tensors by storage, parameters, one row per layer call, and the whole trace.

These plain records are shared by the memory model (which accounts them) and the training engine (which
reads them to find outputs that a later layer stores in full); they hold shapes and storage identities,
never tensor data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tinytl_core.layer_kinds import quantizable_weight
from tinytl_core.tracing.saved import SavedTensor, storage_key


@dataclass(frozen=True)
class TensorRef:
    """What the model needs to know about a tensor: which storage (and version), shape, bytes."""

    key: int
    version: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    requires_grad: bool

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorRef:
        return cls(
            storage_key(tensor),
            tensor._version,
            tuple(tensor.shape),
            tensor.dtype,
            tensor.numel() * tensor.element_size(),
            tensor.requires_grad,
        )

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class ParamRef:
    """A parameter a row owns: qualified name, size, element size, whether it trains, and whether it is a
    weight the engine can store as 8-bit codes when frozen (``layer_kinds.quantizable_weight``)."""

    name: str
    local_name: str
    numel: int
    element_size: int
    trainable: bool
    quantizable: bool = False

    @property
    def nbytes(self) -> int:
        return self.numel * self.element_size


@dataclass
class Row:
    """One row of the per-layer table (see the module docstring for the kinds)."""

    name: str
    type: str
    kind: str
    call: int
    module: nn.Module | None
    inputs: list[TensorRef] = field(default_factory=list)
    outputs: list[TensorRef] = field(default_factory=list)
    params: list[ParamRef] = field(default_factory=list)
    start: int = 0
    end: int = 0
    anchor: int = 0
    batch_statistics: bool = False
    training: bool = False
    saved: list[SavedTensor] = field(default_factory=list)  # storages first saved here (stock bytes)
    saved_all: list[SavedTensor] = field(default_factory=list)  # everything its backward keeps
    pending: list[TensorRef] = field(default_factory=list)  # enclosing blocks' inputs needed later
    held: list[TensorRef] = field(default_factory=list)  # every enclosing call's inputs (frames hold them)
    residual: list[TensorRef] = field(default_factory=list)  # inputs of enclosing residual blocks, pending

    @property
    def needs_input_grad(self) -> bool:
        """True when a gradient must flow back through this row (something upstream trains)."""
        return any(t.requires_grad for t in self.inputs)

    @property
    def input_bytes(self) -> int:
        return _distinct_bytes(self.inputs)

    @property
    def output_bytes(self) -> int:
        return _distinct_bytes(self.outputs)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the pending residual inputs (live while this row runs, though not its own)."""
        return _distinct_bytes(self.pending)

    @property
    def residual_bytes(self) -> int:
        """Bytes of the pending inputs of enclosing residual blocks
        (:func:`tinytl_core.layer_kinds.adds_block_input`): the paper accounting's residual."""
        return _distinct_bytes(self.residual)

    @property
    def live(self) -> list[TensorRef]:
        """Tensors alive while this row runs: its inputs, its outputs and every enclosing call's inputs
        (the Python frames of the enclosing modules hold them, whether used again or not)."""
        return [*self.inputs, *self.outputs, *self.held]

    @property
    def saved_bytes(self) -> int:
        return sum(s.nbytes for s in self.saved)

    def param(self, local_name: str) -> ParamRef | None:
        """The row's parameter called ``local_name`` (e.g. ``"weight"``), if any."""
        return next((p for p in self.params if p.local_name == local_name), None)


@dataclass
class Trace:
    """Result of :func:`run_traced`."""

    rows: list[Row]
    saved: list[SavedTensor]
    weight_saves: int
    params: list[ParamRef]
    buffer_bytes: int
    output_shape: tuple[int, ...] | None
    records: list[SavedTensor] = field(default_factory=list)  # every (row, stored tensor) pair
    last_use: dict[int, int] = field(default_factory=dict)  # storage key -> event of its last forward use

    @property
    def saved_bytes(self) -> int:
        return sum(s.nbytes for s in self.saved)


def _distinct_bytes(refs: list[TensorRef]) -> int:
    seen: dict[int, int] = {}
    for r in refs:
        seen[r.key] = max(seen.get(r.key, 0), r.nbytes)
    return sum(seen.values())


def param_refs(model: nn.Module) -> list[ParamRef]:
    """Every parameter of ``model`` once (tied parameters once), in registration order."""
    quantizable = {
        id(m.weight) for m in model.modules() if quantizable_weight(m) and "weight" in m._parameters
    }
    return [
        ParamRef(
            name, name.rsplit(".", 1)[-1], p.numel(), p.element_size(), p.requires_grad, id(p) in quantizable
        )
        for name, p in model.named_parameters()
    ]
