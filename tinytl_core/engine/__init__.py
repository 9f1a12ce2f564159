"""A training engine that stores only what TinyTL says backward needs.

Stock PyTorch keeps a conv's input even when its weight is frozen, BatchNorm's input even with frozen
statistics, and 32-bit tensors for ReLU-like activations; so bias-only training stores almost as much as
full fine-tuning. :func:`convert` swaps a model's layers, in place, for drop-in versions built on custom
autograd functions that keep only what their gradients need:

- conv with a frozen weight: nothing (input gradient needs only the weight, bias gradient only the output
  gradient);
- BatchNorm with frozen statistics: a per-channel scale and shift storing nothing, or its input when the
  scale trains (fused with the following activation, which is then recomputed);
- ReLU / ReLU6 / LeakyReLU / Hardsigmoid: a 1-bit packed mask; dropout: a 1-bit mask;
- max pooling: a 1-byte arg-max offset per output; average pooling: nothing;
- everything else (SiLU, Hardswish, GELU, trainable convs / linears, GroupNorm, ...) stays stock, which
  already keeps only what is needed.

Usage::

    from tinytl_core.engine import convert, revert
    report = convert(model)   # after the mode set requires_grad / attached lite residual branches
    print(report)             # per-layer: what backward keeps
    revert(model)             # back to stock layers
"""

from tinytl_core.engine.convert import (
    EngineLayer,
    EngineReport,
    convert,
    describe,
    engine_enabled,
    is_converted,
    revert,
)
from tinytl_core.engine.layers import ENGINE_CLASSES, EngineModule

__all__ = [
    "ENGINE_CLASSES",
    "EngineLayer",
    "EngineModule",
    "EngineReport",
    "convert",
    "describe",
    "engine_enabled",
    "is_converted",
    "revert",
]
