"""Bit-packed boolean masks: 1 bit per element, stored as ``uint8``.

ReLU-like gradients only need to know, per element, whether the input was in the active region. A
``bool`` tensor spends a byte on that; packing 8 flags per byte brings it to the 1 bit TinyTL counts.
"""

from __future__ import annotations

import torch

# Multiplying 8 little-endian 0/1 bytes (read as one int64) by this constant gathers byte i's flag into
# bit 56 + i without carries (all partial products land on distinct bit positions), so one multiply and
# one shift pack 8 flags. int64 overflow wraps, which discards the unused high partial products.
_GATHER = 0x0102040810204080
_LUTS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def packed_numel(numel: int) -> int:
    """Bytes a packed mask of ``numel`` flags occupies (``ceil(numel / 8)``)."""
    return (numel + 7) // 8


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a ``bool`` tensor into a flat ``uint8`` tensor with 8 flags per byte (bit i = element i)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"pack_bits expects a bool tensor, got {mask.dtype}")
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 64  # whole int64 words of 8 bytes each, i.e. 64 flags
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.uint8).view(torch.int64)
    packed = (words * _GATHER).bitwise_right_shift_(56).to(torch.uint8)
    # Trim the padding with a copy: a slice would keep (and be measured at) the padded storage.
    return packed[: packed_numel(mask.numel())].clone() if pad else packed


def _lut(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """256 x 8 table: row b holds the 8 flags of byte b as 0/1 values of ``dtype``."""
    key = (device, dtype)
    if key not in _LUTS:
        byte = torch.arange(256, device=device).unsqueeze(1)
        _LUTS[key] = ((byte >> torch.arange(8, device=device)) & 1).to(dtype)
    return _LUTS[key]


def unpack_bits(
    packed: torch.Tensor, shape: torch.Size | tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a tensor of ``shape`` holding 1 where the flag was set, else 0.

    ``dtype`` is the floating type of the gradient it will multiply: a float 0/1 multiplier is much faster
    on CPU than masking with a ``bool`` tensor, and ``g * 1`` / ``g * 0`` are exact.
    """
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_bits expects a uint8 tensor, got {packed.dtype}")
    numel = 1
    for size in shape:
        numel *= size
    # (one gather through an int32 copy of the packed bytes: twice as fast as shifting and masking them)
    flags = _lut(packed.device, dtype).index_select(0, packed.int()).reshape(-1)
    return flags[:numel].view(shape)


def pack_uint(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack small unsigned integers (each ``< 2**bits``, ``bits`` in 1, 2, 4, 8) into a flat ``uint8``
    tensor, ``8 // bits`` values per byte, value i in bits ``[i * bits, (i + 1) * bits)`` of its byte."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8, got {bits}")
    flat = values.to(torch.uint8).reshape(-1)  # narrow first: a strided input is copied as bytes
    if bits == 8:
        return flat
    if bits == 1:
        return pack_bits(flat.bool())
    per = 8 // bits
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    cols = flat.view(-1, per)
    packed = cols[:, 0].clone()
    for i in range(1, per):
        packed |= cols[:, i] << (i * bits)
    return packed


def unpack_uint(packed: torch.Tensor, numel: int, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_uint`: the first ``numel`` values, as a flat ``uint8`` tensor."""
    if bits == 8:
        return packed[:numel]
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    values = (packed.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(-1)[:numel]


def bits_for(count: int) -> int:
    """Smallest of 1, 2, 4, 8 bits that can tell ``count`` values apart (``count <= 256``)."""
    if not 1 <= count <= 256:
        raise ValueError(f"count must be in 1..256, got {count}")
    return next(b for b in (1, 2, 4, 8) if count <= 1 << b)
