"""A training engine that stores only what TinyTL says backward needs.

Stock PyTorch keeps a conv's input even when its weight is frozen, BatchNorm's input even with frozen
statistics, and 32-bit tensors for ReLU-like activations; so bias-only training stores almost as much as
full fine-tuning. :func:`convert` swaps a model's layers, in place, for drop-in versions built on custom
autograd functions that keep only what their gradients need:

- conv with a frozen weight: nothing (input gradient needs only the weight, bias gradient only the output
  gradient);
- BatchNorm with frozen statistics: a per-channel scale and shift storing nothing, or its input when the
  scale trains (fused with the following activation, which is then recomputed);
- ReLU / ReLU6 / LeakyReLU / Hardsigmoid: a 1-bit packed mask, or nothing extra when a later layer stores
  their output in full anyway (found by ``convert(model, input_size=...)``); dropout: a 1-bit mask;
- max pooling: the bit-packed arg-max offset in its window (4 bits for 3x3); average pooling, reflect /
  replicate padding: nothing;
- a weight trained on part of its output channels (sparse update, :func:`split_weight`): its input,
  once, and the gradient rows of the trained channels only;
- everything else (SiLU, Hardswish, GELU, trainable convs / linears, GroupNorm, ...) stays stock, which
  already keeps only what is needed.

The fine-tuning modes convert by default (``prepare_model(...)``, ``Mode.apply(...)``; ``engine=False``
keeps stock layers), and so the adaptation loop trains on the engine unless told otherwise
(``AdaptConfig(engine=False)``, ``adapt --no-engine``). By hand::

    from tinytl_core.engine import convert, engine_enabled, revert
    report = convert(model, input_size=(3, 224, 224))  # after the mode (requires_grad, lite residuals)
    print(report)             # per-layer: what backward keeps
    with engine_enabled(model, False):
        ...                   # stock layers for this block, the engine again afterwards
    revert(model)             # back to stock layers

:func:`tinytl_core.memory.measure_stock_and_engine` measures one step with each on the same model.
"""

from tinytl_core.engine.convert import (
    EngineLayer,
    EngineReport,
    convert,
    describe,
    engine_enabled,
    is_converted,
    revert,
    stock_layers,
)
from tinytl_core.engine.layers import ENGINE_CLASSES, EngineModule
from tinytl_core.engine.partial import (  # registers the partial-update layers in ENGINE_CLASSES
    PartialConv2d,
    PartialLinear,
    PartialUpdateError,
    partial_rows,
    split_problem,
    split_weight,
)
from tinytl_core.engine.quantized import (
    QuantizationReport,
    WeightQuantization,
    model_weight_bytes,
    quantize_frozen_weights,
)
from tinytl_core.engine.standardized import EngineWSConv2d

__all__ = [
    "ENGINE_CLASSES",
    "EngineLayer",
    "EngineModule",
    "EngineReport",
    "EngineWSConv2d",
    "QuantizationReport",
    "WeightQuantization",
    "PartialConv2d",
    "PartialLinear",
    "PartialUpdateError",
    "convert",
    "describe",
    "engine_enabled",
    "is_converted",
    "model_weight_bytes",
    "quantize_frozen_weights",
    "partial_rows",
    "revert",
    "split_problem",
    "split_weight",
    "stock_layers",
]
