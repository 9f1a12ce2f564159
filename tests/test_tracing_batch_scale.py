"""One trace at a prime batch size, rewritten to another batch size, is the trace taken at that size.

The class: every kind of tensor a training forward records (activations, masks, batch statistics, saved
views, residual inputs, attention, the loss's targets), on every kind of model the planner profiles.
"""

from __future__ import annotations

import pytest
from torch import nn

from tinytl_core.memory import accounting as acc
from tinytl_core.modes import prepare_model
from tinytl_core.planner import profile as planner_profile
from tinytl_core.tracing import Trace, trace_model
from tinytl_core.tracing.batch_scale import SMALLEST_PRIME, BatchScaleError, prime_batch, scale_batch

CASES = [  # (backbone, mode, group norm, resolution): CNNs with BN/GN, SE blocks, lite residual, attention
    ("demo_mobilenetv2_050", "full", False, 32),
    ("demo_mobilenetv2_050", "bias", True, 32),
    ("demo_mobilenetv2_050", "lite_residual+bias", False, 32),
    ("demo_mobilenetv2_050", "mobiletl", False, 32),
    ("demo_mobilenetv2_050", "sparse", False, 32),
    ("efficientnet_b0", "bn+last", False, 64),
    ("resnet18", "lite_residual", False, 64),
    ("convnext_atto", "full", False, 64),
    ("vit_tiny_patch16_224", "bias", False, 32),
]


def _sizes(trace: Trace) -> list:
    """Everything the memory model reads of a trace's tensors, without storage identities."""
    rows = [
        (
            r.name,
            r.call,
            r.kind,
            [(t.shape, t.nbytes, t.requires_grad) for t in r.inputs],
            [(t.shape, t.nbytes) for t in r.outputs],
            [(t.shape, t.nbytes) for t in (*r.pending, *r.held, *r.residual)],
            [(s.shape, s.nbytes, s.dtype) for s in (*r.saved, *r.saved_all)],
        )
        for r in trace.rows
    ]
    return [rows, [(s.shape, s.nbytes) for s in trace.saved], trace.output_shape]


@pytest.mark.parametrize("backbone, mode, group_norm, resolution", CASES)
def test_rewritten_trace_equals_a_trace_at_that_batch(backbone, mode, group_norm, resolution):
    model = prepare_model(
        backbone, mode, resolution=resolution, group_norm=group_norm, device="meta", engine=False
    ).model
    size = (3, resolution, resolution)
    prime = prime_batch(model, 10, *size)
    traced = trace_model(model, size, prime)
    for batch in (1, 2, 5) if group_norm else (2, 5):
        direct = trace_model(model, size, batch)
        scaled = scale_batch(traced, prime, batch)
        assert _sizes(scaled) == _sizes(direct)
        a, b = (acc.peak_terms(t, acc.necessary_rows(t)) for t in (scaled, direct))
        assert (a.engine, a.stock) == (b.engine, b.stock)


def test_the_prime_divides_no_fixed_size():
    model = nn.Sequential(nn.Linear(SMALLEST_PRIME, 8), nn.Linear(8, 1033 * 2))  # 1031 and 1033 taken
    assert prime_batch(model, 10) == 1039
    assert prime_batch(nn.Linear(4, 4), 1039 * 3) == SMALLEST_PRIME
    assert prime_batch(nn.Linear(4, 4), SMALLEST_PRIME) == 1033


def test_ambiguous_sizes_are_refused():
    prime = SMALLEST_PRIME

    class Square(nn.Module):  # an output sized batch x batch: not linear in the batch
        def forward(self, x):
            return x.flatten(1) @ x.flatten(1).T

    trace = trace_model(nn.Sequential(nn.Conv2d(3, 4, 3), Square()), (3, 8, 8), prime)
    with pytest.raises(BatchScaleError):
        scale_batch(trace, prime, 2)
    with pytest.raises(ValueError):
        scale_batch(trace, prime, 0)


def test_a_profile_falls_back_to_tracing_each_batch(monkeypatch):
    """Where one trace cannot serve every batch size, the profile traces each (same figures)."""
    args = ("demo_mobilenetv2_050", 32, "lite_residual+bias")
    expected = planner_profile.build_profile(*args, group_norm=False)

    def refuse(*_args, **_kwargs):
        raise BatchScaleError("ambiguous")

    traced = []
    real_trace = planner_profile.trace_model
    monkeypatch.setattr(planner_profile, "scale_batch", refuse)
    monkeypatch.setattr(
        planner_profile, "trace_model", lambda m, s, b: traced.append(b) or real_trace(m, s, b)
    )
    assert planner_profile.build_profile(*args, group_norm=False) == expected
    assert traced[1:] == list(planner_profile.LINEAR_BATCHES)
