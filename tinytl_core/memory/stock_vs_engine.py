"""One model, two real training steps: what stock PyTorch layers save for backward and what the training
engine's layers save, side by side (the CLI's, the app's and the adaptation loop's measured figures).

Both steps run on the very same model (same weights, mode and input), so the two figures differ only by
the layers: :func:`tinytl_core.engine.engine_enabled` switches them for the duration of one step and then
restores whatever the model was (stock or converted).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from torch import nn

from tinytl_core.engine import engine_enabled
from tinytl_core.memory.measure import Measurement, measure
from tinytl_core.memory.report import MEMORY, MemoryReport, merge_measured

STOCK_COLUMN = MEMORY.activations_measured_stock_bytes
ENGINE_COLUMN = MEMORY.activations_measured_engine_bytes


@dataclass
class StockAndEngine:
    """A training step measured with stock layers and with the engine's.

    ``engine`` is None when the engine could not run the model (``engine_error`` says why): the stock
    figure stands on its own.
    """

    stock: Measurement
    engine: Measurement | None
    engine_error: str = ""

    @property
    def stock_bytes(self) -> int:
        """Activation bytes stock PyTorch saved for backward."""
        return self.stock.saved_bytes

    @property
    def engine_bytes(self) -> int | None:
        """Activation bytes the engine saved for backward (None without an engine measurement)."""
        return None if self.engine is None else self.engine.saved_bytes

    def layer_table(self, layers: pd.DataFrame) -> pd.DataFrame:
        """``layers`` (an :func:`~tinytl_core.memory.analyze` table, with its necessary bytes) plus the
        measured ``activations_measured_stock_bytes`` and ``activations_measured_engine_bytes`` per layer,
        where the measurements were taken per layer. Each storage is counted on the layer that saved it
        first, so a per-layer column can differ from the necessary one while the totals agree."""
        table = layers
        for column, m in ((STOCK_COLUMN, self.stock), (ENGINE_COLUMN, self.engine)):
            if m is not None and m.per_layer is not None:
                table = merge_measured(table, m.per_layer, column)
        return table


def measure_stock_and_engine(
    model: nn.Module,
    *,
    input_size: tuple[int, int, int],
    batch_size: int,
    optimizer: str = "adam",
    per_layer: bool = True,
    modelled: MemoryReport | None = None,
    profile: bool | tuple[bool, bool] = (True, True),
) -> StockAndEngine:
    """Measure one real training step of ``model`` with stock PyTorch layers, then with the engine's.

    ``profile``: whether the stock and the engine measurement also profile the step for its peak (one more
    step each; see :func:`~tinytl_core.memory.measure`); one bool for both.

    The model may be stock or already converted; it is left as it was. The engine step converts with
    ``input_size`` (activations share outputs that later layers store in full). ``modelled`` (a
    complete-accounting :func:`~tinytl_core.memory.analyze` report of this model at this size) saves a
    second analysis for the memory check, which uses the stock figures for both steps.

    Raises:
        MemoryLimitError: the stock step does not fit in the available memory (before allocating).
        ValueError: a ``meta`` model or nothing to train (see :func:`~tinytl_core.memory.measure`).
    """
    if isinstance(profile, bool):
        profile = (profile, profile)
    kwargs = {
        "input_size": input_size,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "per_layer": per_layer,
        "modelled": modelled,
    }
    with engine_enabled(model, False):
        stock = measure(model, **kwargs, profile=profile[0])
    try:
        with engine_enabled(model, True, input_size=input_size, channels_last=True):
            engine = measure(model, **kwargs, profile=profile[1])
    except Exception as exc:  # a bonus figure: a model the engine cannot run keeps its stock figure
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return StockAndEngine(stock, None, f"{type(exc).__name__}: {first_line}")
    return StockAndEngine(stock, engine)
