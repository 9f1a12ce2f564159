"""Tracing: the machinery the memory model and the training engine share (below both of them).

- :mod:`~tinytl_core.tracing.records` -- tensor and parameter records, one row per layer call, the trace;
- :mod:`~tinytl_core.tracing.saved` -- counting what autograd saves for backward (each storage once);
- :mod:`~tinytl_core.tracing.tracer` -- one instrumented forward, on ``meta`` (shapes only) or for real;
- :mod:`~tinytl_core.tracing.shims` -- where the ``meta`` kernels differ from the CPU's, follow the CPU;
  fast ``meta`` kernels for ops PyTorch decomposes in Python (registered on import: ``meta`` only);
- :mod:`~tinytl_core.tracing.step` -- the "one step" helpers: input checks, device, loss, optimizers.
"""

from tinytl_core.tracing.records import ParamRef, Row, TensorRef, Trace, param_refs
from tinytl_core.tracing.saved import SavedTensor, SavedTensorCounter
from tinytl_core.tracing.shims import enable_fast_meta_kernels
from tinytl_core.tracing.step import (
    OPTIMIZER_HELP,
    OPTIMIZER_STATES,
    available_memory,
    check_input,
    default_loss,
    make_optimizer,
    model_device,
    model_dtype,
    optimizer_states,
    preserved_state,
)
from tinytl_core.tracing.tracer import run_traced, trace_model

enable_fast_meta_kernels()  # shape-only work (model preparation and traces on meta) several times faster

__all__ = [
    "OPTIMIZER_HELP",
    "OPTIMIZER_STATES",
    "ParamRef",
    "Row",
    "SavedTensor",
    "SavedTensorCounter",
    "TensorRef",
    "Trace",
    "available_memory",
    "check_input",
    "default_loss",
    "make_optimizer",
    "model_device",
    "model_dtype",
    "optimizer_states",
    "param_refs",
    "preserved_state",
    "run_traced",
    "trace_model",
]
