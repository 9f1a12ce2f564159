"""One trace at a prime batch size (and resolution), rewritten to another size, is the trace taken there.

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
from tinytl_core.tracing.scaling import (
    SMALLEST_PRIME,
    ScalableTrace,
    ScalingError,
    prime_batch,
    resolution_primes,
)

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
    traced = ScalableTrace(trace_model(model, size, prime), (prime,), batch_prime=prime)
    for batch in (1, 2, 5) if group_norm else (2, 5):
        direct = trace_model(model, size, batch)
        scaled = traced.at((batch,))
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
    with pytest.raises(ScalingError):
        ScalableTrace(trace, (prime,), batch_prime=prime).at((2,))
    linear = ScalableTrace(trace_model(nn.Conv2d(3, 4, 3), (3, 8, 8), prime), (prime,), batch_prime=prime)
    with pytest.raises(ValueError):
        linear.at((0,))


def test_a_profile_falls_back_to_tracing_each_batch(monkeypatch):
    """Where one trace cannot serve every batch size, the profile traces each (same figures)."""
    args = ("demo_mobilenetv2_050", 32, "lite_residual+bias")
    expected = planner_profile.build_profile(*args, group_norm=False)

    def refuse(*_args, **_kwargs):
        raise ScalingError("ambiguous")

    from tinytl_core.memory import analysis  # the profiles' traces come from its BatchAnalysis

    traced = []
    real_trace = analysis.trace_model
    monkeypatch.setattr(analysis, "ScalableTrace", refuse)
    monkeypatch.setattr(analysis, "trace_model", lambda m, s, b: traced.append(b) or real_trace(m, s, b))
    assert planner_profile.build_profile(*args, group_norm=False) == expected
    assert traced[1:] == list(planner_profile.LINEAR_BATCHES)


SHARED = [  # CNNs whose architecture does not depend on the input size: one pair of traces, every size
    ("demo_mobilenetv2_050", "full"),
    ("demo_mobilenetv2_050", "sparse"),
    ("mobilenetv3_small_100", "mobiletl"),  # hard-swish, squeeze-excitation
    ("resnet18", "bias"),
    ("convnext_atto", "bn+last"),  # LayerNorm, a 4x4 stride-4 stem
]


@pytest.mark.parametrize("backbone, mode", SHARED)
@pytest.mark.parametrize("group_norm", [False, True])
def test_profiles_from_two_traces_equal_one_trace_per_resolution(backbone, mode, group_norm):
    resolutions = [32, 64, 96, 160]
    assert planner_profile._shared_resolutions(backbone, mode, resolutions) == resolutions
    shared = planner_profile.build_profiles(backbone, resolutions, mode, group_norm=group_norm)
    direct = [planner_profile.build_profile(backbone, r, mode, group_norm=group_norm) for r in resolutions]
    assert shared == direct
    assert all(p.applicable for p in shared) or (mode, group_norm) == ("sparse", True)  # GN: WSConv2d


def test_sizes_that_do_not_scale_with_the_input_fall_back(monkeypatch):
    """A convolution without padding makes a feature map ``H - 2``, not a multiple of the input: the two
    traces disagree, and each resolution is traced on its own (same figures)."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    q1, q2 = resolution_primes(model, 10)
    first, second = (trace_model(model, (3, 32 * q, 32 * q), 2) for q in (q1, q2))
    with pytest.raises(ScalingError):
        ScalableTrace(first, (q1,), check=second, check_primes=(q2,))
    # the planner's path: a timm model padding like TensorFlow ("SAME", a size off by the kernel)
    traced = []
    real = planner_profile.build_profile
    monkeypatch.setattr(
        planner_profile, "build_profile", lambda *a, **k: traced.append(a[1]) or real(*a, **k)
    )
    profiles = planner_profile.build_profiles(
        "tf_mobilenetv3_small_minimal_100", [64, 96, 128], "bias", group_norm=True
    )
    assert traced == [64, 96, 128]
    assert profiles == [
        real("tf_mobilenetv3_small_minimal_100", r, "bias", group_norm=True) for r in (64, 96, 128)
    ]


def test_what_shares_traces():
    shared = planner_profile._shared_resolutions
    assert shared("resnet18", "bias", [96, 128, 160, 100]) == [96, 128, 160]  # multiples of 32 only
    assert shared("resnet18", "bias", [96, 128]) == []  # two traces for two sizes would not pay
    assert shared("resnet18", "lite_residual", [96, 128, 160]) == []  # branches sized by the input
    assert shared("vit_tiny_patch16_224", "bias", [96, 128, 160]) == []  # built for its input size
    tasks = planner_profile._tasks(
        [("resnet18", r, m, False, 10) for m in ("bias", "lite_residual") for r in (96, 128, 160, 100)]
    )
    assert [[r for _, r, *_ in t] for t in tasks] == [[96, 128, 160], [100], [96], [128], [160], [100]]
