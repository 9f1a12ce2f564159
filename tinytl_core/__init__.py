"""TinyTL Lab core library: see and measure why on-device learning is bound by activation memory.

Packages and modules, one concern each, in layers (a module imports only from layers below it; the
contract is in ``pyproject.toml`` and ``lint-imports`` checks it), top to bottom:

- :mod:`~tinytl_core.cli` (one module per command), :mod:`~tinytl_core.ui` (the app's logic, no Streamlit);
- :mod:`~tinytl_core.adapt` (the adaptation loop), :mod:`~tinytl_core.comparisons` (per-mode memory of a
  backbone), :mod:`~tinytl_core.reports` (small tables);
- :mod:`~tinytl_core.modes` -- the fine-tuning modes registry (full, last, bn+last, bias, lite_residual, ...);
- :mod:`~tinytl_core.memory` -- the memory model: rules, accountings, analysis, measurement;
- :mod:`~tinytl_core.engine` (memory-lean training layers), :mod:`~tinytl_core.lite_residual`;
- :mod:`~tinytl_core.norms` -- frozen-statistics normalisation and the BatchNorm -> GroupNorm switch;
- :mod:`~tinytl_core.tracing` -- trace records, saved-tensor counting, the meta-device tracer;
- :mod:`~tinytl_core.layer_kinds` -- one table of what a layer is and what its backward needs;
- :mod:`~tinytl_core.backbones`, :mod:`~tinytl_core.data`, :mod:`~tinytl_core.results`;
- :mod:`~tinytl_core.paths`, :mod:`~tinytl_core.quantities` (each figure's label and unit as dataclass field
  metadata, the MB formatter, run statuses, a run's memory figures).
"""

__version__ = "0.1.0"
