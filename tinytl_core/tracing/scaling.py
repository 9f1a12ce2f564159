"""One ``meta`` trace at prime sizes stands for the same model at other batch sizes and resolutions.

A training forward's tensors are either batch-sized (activations, their masks, the loss's targets: every
size a multiple of the batch) or fixed (weights, normalisation statistics, the loss). Traced at a prime
batch ``p`` that divides no fixed size (:func:`prime_batch`), a tensor is batch-sized exactly when ``p``
divides its size, and ``p`` then divides exactly one of its dimensions; :class:`ScalableTrace` writes another
batch size in its place. The result is what a trace at that batch size records: same rows, same storages,
sizes rescaled. A size divisible by ``p**2`` (not linear in the batch) raises :class:`ScalingError`.

Resolutions work the same way for a CNN whose architecture does not depend on its input size, at
resolutions ``step * m`` (``step`` = 32, the usual total stride): every feature map is then ``m`` times a
fixed size, so every dimension is ``m**j * r``. Two traces at ``step * q1`` and ``step * q2`` (primes
dividing no fixed size) must give every dimension as ``q1**j * r`` and ``q2**j * r`` with the same ``j`` and
``r``; anything else (a size off by a padding, a stride beyond ``step``, another structure) raises
:class:`ScalingError` and the caller traces each resolution. Tracing on ``meta`` costs the same at any
size, so one or two traces serve every batch size and resolution.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from tinytl_core.tracing.records import Row, TensorRef, Trace
from tinytl_core.tracing.saved import SavedTensor

SMALLEST_PRIME = 1031
"""Above every spatial size the planner allows (1024 px plus a stem's padding), so a prime batch from
here on divides no image dimension."""
RESOLUTION_STEP = 32
"""Resolutions ``RESOLUTION_STEP * m`` can be rewritten from traces at ``RESOLUTION_STEP * prime``."""
SMALLEST_RESOLUTION_PRIME = 11
"""Above every kernel size and stride, so a feature map's side ``m * (step / stride)`` is told apart."""


class ScalingError(ValueError):
    """The traces' sizes do not tell what scales from what is fixed (trace each size then)."""


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def _fixed_sizes(model: nn.Module, fixed: tuple[int, ...]) -> set[int]:
    return {int(d) for t in (*model.parameters(), *model.buffers()) for d in t.shape} | set(fixed)


def _next_prime(start: int, sizes: set[int], taken: tuple[int, ...] = ()) -> int:
    p = start
    while not _is_prime(p) or p in taken or any(d and d % p == 0 for d in sizes):
        p += 1
    return p


def prime_batch(model: nn.Module, *fixed: int) -> int:
    """The smallest prime >= :data:`SMALLEST_PRIME` dividing no dimension of the model's parameters and
    buffers, nor any of ``fixed`` (e.g. the number of classes): the batch size to trace at."""
    return _next_prime(SMALLEST_PRIME, _fixed_sizes(model, fixed))


def resolution_primes(model: nn.Module, *fixed: int) -> tuple[int, int]:
    """Two primes >= :data:`SMALLEST_RESOLUTION_PRIME` dividing no dimension of the model's parameters and
    buffers nor any of ``fixed``: trace at ``RESOLUTION_STEP`` times each (the second is
    :class:`ScalableTrace`'s ``check``)."""
    sizes = _fixed_sizes(model, fixed)
    first = _next_prime(SMALLEST_RESOLUTION_PRIME, sizes)
    return first, _next_prime(first + 1, sizes)


def _split(n: int, primes: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """``n`` as (the power of each prime in it, what is left)."""
    powers = []
    for p in primes:
        k = 0
        while n and n % p == 0:
            n //= p
            k += 1
        powers.append(k)
    return tuple(powers), n


_Size = int | tuple[tuple[int, ...], int]
"""A size: an int when no prime divides it, else (powers of the primes, what is left)."""


def _row_copy(row: Row, **changes: object) -> Row:
    new = object.__new__(Row)  # a field-for-field copy: dataclasses.replace re-runs __init__ (slow)
    new.__dict__.update(row.__dict__)
    new.__dict__.update(changes)
    return new


class ScalableTrace:
    """A trace taken at prime sizes, ready to be rewritten to other values of them (:meth:`at`).

    ``primes``: the prime sizes traced at (e.g. the batch size and the resolution's multiple of
    :data:`RESOLUTION_STEP`); ``batch_prime``: which one is the batch size (every size must be linear in
    it). ``check``: the same model traced with ``check_primes`` in place of ``primes`` (in order); every
    size must split the same way in both (see the module docstring). Raises :class:`ScalingError`
    otherwise. Splitting every size once makes each rewrite a few multiplications per tensor.
    """

    def __init__(
        self,
        trace: Trace,
        primes: tuple[int, ...],
        *,
        batch_prime: int | None = None,
        check: Trace | None = None,
        check_primes: tuple[int, ...] | None = None,
    ) -> None:
        if check is not None and (check_primes is None or len(check_primes) != len(primes)):
            raise ValueError("a check trace needs one check prime per prime")
        self.trace, self.primes = trace, tuple(primes)
        self.check_primes = check_primes if check is not None else None
        self.batch_index = self.primes.index(batch_prime) if batch_prime in self.primes else None
        self.refs: dict[int, tuple[TensorRef, tuple[_Size, ...], _Size]] = {}
        self.saved: dict[int, tuple[SavedTensor, tuple[_Size, ...], _Size]] = {}
        if check is not None and (len(check.rows) != len(trace.rows) or len(check.saved) != len(trace.saved)):
            raise ScalingError("the traces differ in structure")
        for i, row in enumerate(trace.rows):
            self._row(row, None if check is None else check.rows[i])
        for i, s in enumerate(trace.saved):
            self._saved(s, None if check is None else check.saved[i])
        for s in trace.records:
            self._saved(s, None)
        other = None if check is None else check.output_shape
        self.output_shape = None if trace.output_shape is None else self._shape(trace.output_shape, other)

    def _size(self, n: int, other: int | None, *, nbytes: bool = False) -> _Size:
        powers, rest = _split(n, self.primes)
        if self.check_primes is not None and other is not None:
            if (powers, rest) != _split(other, self.check_primes):
                raise ScalingError(f"a size does not scale with the input ({n} and {other})")
        if nbytes and self.batch_index is not None and powers[self.batch_index] > 1:
            raise ScalingError(f"a size of {n} bytes is not linear in the batch size")
        return (powers, rest) if any(powers) else n

    def _shape(self, shape: tuple[int, ...], other: tuple[int, ...] | None) -> tuple[_Size, ...]:
        if other is not None and len(other) != len(shape):
            raise ScalingError(f"shapes {shape} and {other} differ in rank")
        dims = tuple(self._size(d, None if other is None else other[i]) for i, d in enumerate(shape))
        if self.batch_index is not None:
            if sum(d[0][self.batch_index] for d in dims if isinstance(d, tuple)) > 1:
                raise ScalingError(f"shape {shape} has several dimensions sized by the batch")
        return dims

    def _ref(self, t: TensorRef, other: TensorRef | None) -> None:
        if id(t) not in self.refs:
            shape = self._shape(t.shape, None if other is None else other.shape)
            nbytes = self._size(t.nbytes, None if other is None else other.nbytes, nbytes=True)
            self.refs[id(t)] = (t, shape, nbytes)

    def _saved(self, s: SavedTensor, other: SavedTensor | None) -> None:
        if other is not None and (other.owner, other.dtype) != (s.owner, s.dtype):
            raise ScalingError("the traces save different tensors")
        if id(s) not in self.saved:
            shape = self._shape(s.shape, None if other is None else other.shape)
            nbytes = self._size(s.nbytes, None if other is None else other.nbytes, nbytes=True)
            self.saved[id(s)] = (s, shape, nbytes)

    def _row(self, row: Row, other: Row | None) -> None:
        if other is not None and (other.name, other.call, other.kind) != (row.name, row.call, row.kind):
            raise ScalingError("the traces differ in structure")
        for name in ("inputs", "outputs", "pending", "held", "residual"):
            mine, theirs = getattr(row, name), None if other is None else getattr(other, name)
            if theirs is not None and len(theirs) != len(mine):
                raise ScalingError("the traces differ in structure")
            for i, t in enumerate(mine):
                self._ref(t, None if theirs is None else theirs[i])
        for name in ("saved", "saved_all"):
            mine, theirs = getattr(row, name), None if other is None else getattr(other, name)
            if theirs is not None and len(theirs) != len(mine):
                raise ScalingError("the traces save different tensors")
            for i, s in enumerate(mine):
                self._saved(s, None if theirs is None else theirs[i])

    def at(self, values: tuple[int, ...]) -> Trace:
        """The trace with ``values`` (in the order of ``primes``) in place of the primes."""
        if len(values) != len(self.primes) or any(v < 1 for v in values):
            raise ValueError(f"need {len(self.primes)} sizes >= 1, got {values}")

        def size(n: _Size) -> int:
            if isinstance(n, int):
                return n
            powers, out = n
            for value, k in zip(values, powers):
                if k:
                    out *= value**k
            return out

        refs = {
            key: TensorRef(
                t.key, t.version, tuple(size(d) for d in shape), t.dtype, size(nbytes), t.requires_grad
            )
            for key, (t, shape, nbytes) in self.refs.items()
        }
        saved = {
            key: SavedTensor(
                s.key, s.version, size(nbytes), s.dtype, tuple(size(d) for d in shape), s.owner, s.event
            )
            for key, (s, shape, nbytes) in self.saved.items()
        }
        rows = [
            _row_copy(
                r,
                inputs=[refs[id(t)] for t in r.inputs],
                outputs=[refs[id(t)] for t in r.outputs],
                pending=[refs[id(t)] for t in r.pending],
                held=[refs[id(t)] for t in r.held],
                residual=[refs[id(t)] for t in r.residual],
                saved=[saved[id(s)] for s in r.saved],
                saved_all=[saved[id(s)] for s in r.saved_all],
            )
            for r in self.trace.rows
        ]
        output_shape = None if self.output_shape is None else tuple(size(d) for d in self.output_shape)
        return replace(
            self.trace,
            rows=rows,
            saved=[saved[id(s)] for s in self.trace.saved],
            records=[saved[id(s)] for s in self.trace.records],
            output_shape=output_shape,
        )
