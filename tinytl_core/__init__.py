"""TinyTL Lab core library: see and measure why on-device learning is bound by activation memory.

Modules (one concern each):

- :mod:`tinytl_core.backbones` -- timm catalog, model creation with a bounded pretrained-weights fallback.
- :mod:`tinytl_core.modes` -- the fine-tuning modes registry (full, last, bn+last, bias, lite_residual, ...).
- :mod:`tinytl_core.lite_residual` -- TinyTL's lite residual side branches and where to attach them.
- :mod:`tinytl_core.norms` -- frozen-statistics normalisation and the BatchNorm -> GroupNorm switch.
- :mod:`tinytl_core.cli` -- ``python -m tinytl_core ...``.
"""

__version__ = "0.1.0"
