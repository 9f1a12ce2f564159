"""The step's measured peak (tinytl_core.memory.timeline): PyTorch's private memory-profiler API as we use
it, the peak of a known allocation, and the timeline chart."""

import importlib

import pytest
import torch

from tinytl_core.memory import measure
from tinytl_core.memory.timeline import PHASES, PRIVATE_API, Category, phase, profile_step
from tinytl_core.modes import prepare_model
from tinytl_core.ui.step_chart import step_timeline_figure, timeline_frame


def _resolve(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("path", PRIVATE_API)
def test_private_profiler_api_is_still_there(path):
    # If a torch upgrade renames any of these, this fails first: update tinytl_core/memory/timeline.py.
    assert _resolve(path) is not None


def test_profiler_categories_match_ours():
    from torch.profiler import _memory_profiler

    assert {c.name for c in _memory_profiler.Category} <= {c.name for c in Category}
    assert {a.name for a in _memory_profiler.Action} == {
        "PREEXISTING",
        "CREATE",
        "INCREMENT_VERSION",
        "DESTROY",
    }


def test_peak_of_a_known_allocation():
    n = 4_000_000  # 16 MB of float32, alive together with a second 16 MB tensor at one instant

    def step():
        with phase("forward"):
            a = torch.ones(n)
            b = a * 2
            del a
        with phase("backward"):
            c = b + 1
            del b, c

    timeline = profile_step(step, torch.device("cpu"))
    assert timeline.peak_bytes - timeline.start_bytes >= 2 * 4 * n
    assert timeline.peak_bytes - timeline.start_bytes < 2 * 4 * n + 1_000_000
    assert timeline.peak_phase in ("forward", "backward")
    assert set(timeline.phases) == {"forward", "backward"}
    assert all(isinstance(c, Category) for b in timeline.bytes for c in b)


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase"):
        phase("warmup")


def test_measure_reports_the_step_peak():
    model = prepare_model("resnet18", "bias", resolution=32).model
    m = measure(model, input_size=(3, 32, 32), batch_size=2)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert m.step_peak == m.peak_bytes and m.peak_bytes > weights + m.saved_bytes
    assert m.peak_phase in PHASES
    quick = measure(model, input_size=(3, 32, 32), batch_size=2, profile=False)
    assert quick.timeline is None and quick.step_peak is None and quick.saved_bytes == m.saved_bytes


def test_timeline_chart_keeps_the_peak():
    model = prepare_model("resnet18", "bias", resolution=32).model
    m = measure(model, input_size=(3, 32, 32), batch_size=2, per_layer=False)
    frame = timeline_frame(m.timeline, max_points=10)
    totals = frame.groupby("ms")["MB"].sum()
    assert totals.max() * 1e6 == pytest.approx(m.peak_bytes)
    assert frame["ms"].nunique() <= 10
    fig = step_timeline_figure({"engine": m.timeline}, modelled={"engine": m.peak_bytes}, title="t")
    assert any("peak" in (t.text or [""])[0] for t in fig.data if t.mode == "markers+text")
