"""Memory model: where training memory goes (parameters vs activations), per layer and mode.

- :func:`analyze` -- per-layer table and totals from shapes traced on the ``meta`` device (no allocation).
- :func:`measure` -- one real training step: the bytes autograd actually saves, per layer.
- :func:`measure_stock_and_engine` -- one real step with stock layers and one with the training engine's.
- :func:`training_memory_figures` -- modelled and measured figures a training run records.

The rules (TinyTL's cost model and the paper's accounting) are in :mod:`tinytl_core.memory.rules`; what a
layer is, in :mod:`tinytl_core.layer_kinds`; per-mode comparisons of a backbone, in
:mod:`tinytl_core.comparisons` (above the modes).
"""

from tinytl_core.memory.accounting import ACCOUNTINGS
from tinytl_core.memory.analysis import analyze, training_memory_figures
from tinytl_core.memory.measure import Measurement, MemoryLimitError, measure, memory_problem
from tinytl_core.memory.report import MB, MemoryReport, ReportTotals, format_modes
from tinytl_core.memory.stock_vs_engine import StockAndEngine, measure_stock_and_engine
from tinytl_core.tracing import OPTIMIZER_HELP, OPTIMIZER_STATES

__all__ = [
    "ACCOUNTINGS",
    "MB",
    "OPTIMIZER_HELP",
    "OPTIMIZER_STATES",
    "Measurement",
    "MemoryLimitError",
    "MemoryReport",
    "ReportTotals",
    "StockAndEngine",
    "analyze",
    "format_modes",
    "measure",
    "measure_stock_and_engine",
    "memory_problem",
    "training_memory_figures",
]
