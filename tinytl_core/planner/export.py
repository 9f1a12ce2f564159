"""A training plan for one configuration, as JSON another tool or a device build can read: backbone,
mode, resolution, batch, which parameters train, which layers run on the engine and what each stores for
backward, and the modelled step peak."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from tinytl_core import limits as L
from tinytl_core.engine import describe
from tinytl_core.memory import analyze
from tinytl_core.memory.report import TOTALS
from tinytl_core.modes import prepare_model
from tinytl_core.planner.plan import PlanError
from tinytl_core.quantities import MB

PLAN_FORMAT = "tinytl-training-plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanRequest:
    """The configuration a training plan is written for (a row of a plan, or typed by hand)."""

    backbone: str
    mode: str
    resolution: int
    batch_size: int
    optimizer: str = "adam"
    frozen_weight_bits: int = 32
    engine: bool = True
    num_classes: int = 10

    @property
    def group_norm(self) -> bool:
        """Batch 1 trains with GroupNorm (as the planner plans it)."""
        return self.batch_size == 1


def training_plan(request: PlanRequest) -> dict[str, Any]:
    """The training plan of ``request`` (a JSON-able dict; bytes are integers, MB = 10^6).

    Built on the ``meta`` device (nothing allocated): the mode is applied, the model converted to the
    engine (unless ``engine`` is False) and analysed with :func:`tinytl_core.memory.analyze`, so the
    modelled peak equals the planner's figure for the same configuration.
    """
    # the planner's own ranges (tinytl_core.limits), so a plan exports only what the planner can plan
    for value, limit in (
        (request.resolution, L.RESOLUTION),
        (request.batch_size, L.BATCH_SIZE),
        (request.frozen_weight_bits, L.FROZEN_WEIGHT_BITS),
        (request.num_classes, L.CLASSES),
    ):
        problem = limit.problem(value)
        if problem is not None:
            raise PlanError(problem)
    try:
        prepared = prepare_model(
            request.backbone,
            request.mode,
            num_classes=request.num_classes,
            resolution=request.resolution,
            group_norm=request.group_norm,
            device="meta",
            engine=request.engine,
        )
        report = analyze(
            prepared.model,
            input_size=prepared.data.input_size,
            batch_size=request.batch_size,
            optimizer=request.optimizer,
            frozen_weight_bits=request.frozen_weight_bits,
        )
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    t = report.totals
    peak = t.total_modelled_bytes if request.engine else t.total_stock_bytes
    params = dict(prepared.model.named_parameters())
    engine_layers = [
        {"layer": layer.name, "type": layer.stock_type, "stores": layer.stores}
        for layer in describe(prepared.model).layers
        if layer.converted
    ]
    stored_column = TOTALS.activations_necessary_bytes if request.engine else TOTALS.activations_stock_bytes
    stored = report.layers[report.layers[stored_column] > 0]
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "created_with": {"torch": torch.__version__, "timm": timm.__version__},
        "backbone": request.backbone,
        "mode": request.mode,
        "resolution": request.resolution,
        "input_size": list(prepared.data.input_size),
        "batch_size": request.batch_size,
        "group_norm": request.group_norm,
        "num_classes": request.num_classes,
        "optimizer": request.optimizer,
        "frozen_weight_bits": request.frozen_weight_bits,
        "layers": "engine" if request.engine else "stock PyTorch",
        "memory": {
            "modelled_step_peak_bytes": int(peak),
            "modelled_step_peak_mb": round(peak / MB, 3),
            "weights_bytes": int(t.weights_bytes),
            "grads_optimizer_bytes": int(t.grads_optimizer_bytes),
            "activations_stored_bytes": int(
                t.activations_necessary_bytes if request.engine else t.activations_stock_bytes
            ),
            "note": "modelled by tinytl_core.memory (complete accounting, MB = 10^6 bytes)",
        },
        "trainable_parameters": [
            {"name": name, "numel": int(params[name].numel()), "shape": list(params[name].shape)}
            for name in prepared.result.trainable
        ],
        "n_trainable": int(prepared.result.n_trainable),
        "n_params": int(prepared.result.n_total),
        "engine_layers": engine_layers,
        "stored_for_backward": [
            {
                "layer": r["layer"],
                "call": int(r["call"]),
                "type": r["type"],
                "bytes": int(r[stored_column]),
                "why": r["necessary_reason"] if request.engine else "stock PyTorch autograd",
            }
            for _, r in stored.iterrows()
        ],
    }


def write_training_plan(request: PlanRequest, path: str | Path) -> Path:
    """Write :func:`training_plan` of ``request`` to ``path`` as indented JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(training_plan(request), indent=2) + "\n")
    return path
