"""Counting what PyTorch autograd really saves for backward (stock PyTorch, or any custom engine).

:class:`SavedTensorCounter` installs ``torch.autograd.graph.saved_tensors_hooks``: the pack hook runs once
per tensor an autograd node keeps for backward -- built-in ops and custom ``torch.autograd.Function``
subclasses that use ``ctx.save_for_backward`` alike, whatever the dtype (a bit-packed ``uint8`` mask
counts its real bytes). Each storage is counted once (a ReLU's output and the next conv's input are one
buffer) at its full size, and storages of parameters and buffers count as weights, not activations
(autograd often saves a weight or a view such as ``weight.t()``).

Two views of the same saves: :attr:`SavedTensorCounter.saved` has each storage once, attributed to the
layer that saved it *first* (what memory it costs, and where stock PyTorch pays for it);
:attr:`SavedTensorCounter.records` has every (layer, stored tensor) pair, so a rule can see that a later
layer needs a tensor an earlier one saved first (squeeze-excitation's ``x * gate`` needs ``x``, which a
stock ReLU before it saved already).

Storages are told apart by their ``StorageImpl`` address (``untyped_storage()._cdata``): on the ``meta``
device every ``data_ptr()`` is 0 but storages are still distinct objects. The counter keeps a reference
to every storage it saw until :meth:`SavedTensorCounter.release`, so no address is reused meanwhile.
Tensors stashed on ``ctx`` as plain attributes bypass the hooks and are invisible here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


def storage_of(tensor: torch.Tensor) -> torch.UntypedStorage | None:
    """The storage behind ``tensor``, or None for tensors without one (sparse, nested, some subclasses)."""
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def storage_key(tensor: torch.Tensor) -> int:
    """Identity of the memory block behind ``tensor`` (works on ``meta`` tensors too)."""
    storage = storage_of(tensor)
    return storage._cdata if storage is not None else id(tensor)


def storage_nbytes(tensor: torch.Tensor) -> int:
    """Bytes of the whole storage behind ``tensor`` (a view keeps all of it alive)."""
    storage = storage_of(tensor)
    return int(storage.nbytes()) if storage is not None else tensor_nbytes(tensor)


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes of the elements of ``tensor`` itself: ``numel * element_size``."""
    return tensor.numel() * tensor.element_size()


def weight_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    """Storage keys of parameters and buffers: saved tensors living there are weights, not activations."""
    return {storage_key(t) for t in tensors if t is not None}


@dataclass(frozen=True)
class SavedTensor:
    """One storage saved for backward, as first seen."""

    key: int
    version: int  # the tensor's version counter when saved (in-place ops bump it)
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    owner: int  # index given by the ``owner`` callback (the running layer)
    event: int  # value of the ``clock`` callback when saved (orders saves among layer calls)


class SavedTensorCounter:
    """Context manager recording every storage autograd saves while it is active.

    Args:
        weights: parameters and buffers of the model; their storages are excluded.
        owner: returns the index of the layer running when a tensor is saved (attribution).
        clock: returns an increasing event number (to order saves among other events).
    """

    def __init__(
        self,
        weights: Iterable[torch.Tensor],
        owner: Callable[[], int] = lambda: -1,
        clock: Callable[[], int] = lambda: 0,
    ) -> None:
        self._weights = weight_keys(weights)
        self._owner = owner
        self._clock = clock
        self._keep: list[torch.UntypedStorage | torch.Tensor] = []
        self._seen: set[int] = set()
        self.saved: list[SavedTensor] = []  # activations: first sighting of each storage, in order
        self.records: list[SavedTensor] = []  # every (owner, storage, version) saved, first time each
        self._recorded: set[tuple[int, int, int]] = set()
        self.weight_saves = 0  # how many saved tensors were parameters/buffers (or views of them)
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        if key in self._weights:
            self.weight_saves += 1
            return tensor
        owner = self._owner()
        record = (owner, key, tensor._version)
        if record in self._recorded:
            return tensor
        self._recorded.add(record)
        saved = SavedTensor(
            key,
            tensor._version,
            storage_nbytes(tensor),
            tensor.dtype,
            tuple(tensor.shape),
            owner,
            self._clock(),
        )
        self.records.append(saved)
        if key not in self._seen:
            self._seen.add(key)
            self._keep.append(storage_of(tensor) or tensor)
            self.saved.append(saved)
        return tensor

    @property
    def keys(self) -> set[int]:
        """Storage keys of the saved activations."""
        return set(self._seen)

    @property
    def total_bytes(self) -> int:
        """Bytes of all distinct saved activation storages."""
        return sum(s.nbytes for s in self.saved)

    def bytes_by_owner(self) -> dict[int, int]:
        """Saved activation bytes per owner index."""
        out: dict[int, int] = {}
        for s in self.saved:
            out[s.owner] = out.get(s.owner, 0) + s.nbytes
        return out

    def release(self) -> None:
        """Drop the references that pinned seen storages (call before backward on real devices)."""
        self._keep.clear()

    def __enter__(self) -> SavedTensorCounter:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
