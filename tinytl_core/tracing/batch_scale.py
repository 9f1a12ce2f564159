"""One ``meta`` trace at a prime batch size stands for the same model at any batch size.

A training forward's tensors are either batch-sized (activations, their masks, the loss's targets: every
size a multiple of the batch) or fixed (weights, normalisation statistics, the loss). Traced at a prime
batch ``p`` larger than any other size in the model, a tensor is batch-sized exactly when ``p`` divides
its size, and ``p`` then divides exactly one of its dimensions (``p`` is prime); :func:`scale_batch`
rewrites those to another batch size. The result is what a trace at that batch size would record: same
rows, same storages, sizes rescaled. A trace where this cannot be told apart (a size divisible by
``p**2``, or a fixed dimension divisible by ``p``) raises :class:`BatchScaleError`; trace each batch size
then. Tracing on ``meta`` costs the same at any batch size, so one trace serves every batch size.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from tinytl_core.tracing.records import Row, TensorRef, Trace
from tinytl_core.tracing.saved import SavedTensor

SMALLEST_PRIME = 1031
"""Above every spatial size the planner allows (1024 px plus a stem's padding), so a prime batch from
here on divides no image dimension."""


class BatchScaleError(ValueError):
    """The trace's sizes do not tell batch-sized tensors from fixed ones (trace each batch size)."""


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def prime_batch(model: nn.Module, *fixed: int) -> int:
    """The smallest prime >= :data:`SMALLEST_PRIME` dividing no dimension of the model's parameters and
    buffers, nor any of ``fixed`` (e.g. the number of classes): the batch size to trace at."""
    sizes = {int(d) for t in (*model.parameters(), *model.buffers()) for d in t.shape} | set(fixed)
    p = SMALLEST_PRIME
    while not _is_prime(p) or any(d and d % p == 0 for d in sizes):
        p += 1
    return p


class _Scaler:
    def __init__(self, traced: int, batch: int) -> None:
        self.traced, self.batch = traced, batch
        self.done: dict[int, TensorRef] = {}  # id of a traced ref -> its rewrite (rows share refs)

    def nbytes(self, n: int) -> int:
        if n % self.traced:
            return n
        if n % (self.traced * self.traced) == 0:
            raise BatchScaleError(f"a size of {n} bytes is a multiple of {self.traced}**2")
        return n // self.traced * self.batch

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        hits = [i for i, d in enumerate(shape) if d and d % self.traced == 0]
        if len(hits) > 1:
            raise BatchScaleError(f"shape {shape} has several dimensions sized by the batch")
        if not hits:
            return shape
        i = hits[0]
        return (*shape[:i], shape[i] // self.traced * self.batch, *shape[i + 1 :])

    def ref(self, t: TensorRef) -> TensorRef:
        out = self.done.get(id(t))
        if out is None:
            out = TensorRef(
                t.key, t.version, self.shape(t.shape), t.dtype, self.nbytes(t.nbytes), t.requires_grad
            )
            self.done[id(t)] = out
        return out

    def refs(self, refs: list[TensorRef]) -> list[TensorRef]:
        return [self.ref(t) for t in refs]

    def saved(self, s: SavedTensor) -> SavedTensor:
        return replace(s, shape=self.shape(s.shape), nbytes=self.nbytes(s.nbytes))

    def row(self, row: Row, saved: dict[int, SavedTensor]) -> Row:
        return replace(
            row,
            inputs=self.refs(row.inputs),
            outputs=self.refs(row.outputs),
            pending=self.refs(row.pending),
            held=self.refs(row.held),
            residual=self.refs(row.residual),
            saved=[saved[id(s)] for s in row.saved],
            saved_all=[saved[id(s)] for s in row.saved_all],
        )


def scale_batch(trace: Trace, traced: int, batch: int) -> Trace:
    """``trace``, taken at the prime batch size ``traced`` (:func:`prime_batch`), rewritten to ``batch``.

    Raises :class:`BatchScaleError` when a size is ambiguous (see the module docstring)."""
    if batch < 1:
        raise ValueError(f"batch size must be >= 1, got {batch}")
    scaler = _Scaler(traced, batch)
    saved = {id(s): scaler.saved(s) for s in (*trace.saved, *trace.records)}
    for row in trace.rows:
        for s in (*row.saved, *row.saved_all):
            if id(s) not in saved:
                saved[id(s)] = scaler.saved(s)
    output_shape = None if trace.output_shape is None else scaler.shape(trace.output_shape)
    return replace(
        trace,
        rows=[scaler.row(r, saved) for r in trace.rows],
        saved=[saved[id(s)] for s in trace.saved],
        records=[saved[id(s)] for s in trace.records],
        output_shape=output_shape,
    )
