"""The sidebar's Settings (one source of defaults for every page) and the Adapt page's run checks."""

import pandas as pd
import pytest

from tinytl_core.backbones import DEMO_BACKBONE, data_config
from tinytl_core.ui.checks import run_problems
from tinytl_core.ui.settings import KEYS, Settings


def test_defaults_are_the_demo_backbone_at_its_own_resolution():
    s = Settings.defaults()
    assert s.backbone == DEMO_BACKBONE
    assert s.resolution == data_config(DEMO_BACKBONE).resolution == 64
    assert (s.batch_size, s.pretrained) == (8, True)


def test_from_state_fills_what_the_sidebar_has_not_set():
    assert Settings.from_state({}) == Settings.defaults()
    s = Settings.from_state({"backbone": "resnet18", "batch_size": "4", "session_id": "abc"})
    assert (s.backbone, s.resolution, s.batch_size, s.session_id) == ("resnet18", 224, 4, "abc")
    assert set(KEYS) == {"backbone", "resolution", "batch_size", "pretrained", "session_id", "budget_bytes",
                         "budget_in_flash"}  # fmt: skip


def _table(**over):
    row = {"mode": "bias", "applicable": True, "reason": "", "total_stock_bytes": 1_000}
    rows = [row, {**row, "mode": "lite_residual", **over}]
    return pd.DataFrame(rows)


def _problems(**kwargs):
    args = dict(
        backbone="resnet18",
        resolution=64,
        batch_size=8,
        modes=["bias"],
        dataset_ready=True,
        resolution_problem=None,
        mode_table=_table,
        device="cpu",
    )
    return run_problems(**{**args, **kwargs})


def test_a_valid_run_has_no_problems():
    assert _problems() == []


def test_each_problem_is_reported_with_what_to_do():
    assert _problems(modes=[]) == ["Choose at least one mode."]
    assert "Upload a valid .zip" in _problems(dataset_ready=False)[0]
    assert _problems(resolution_problem="too small") == ["too small"]
    not_applicable = _problems(
        modes=["bias", "lite_residual"], mode_table=lambda: _table(applicable=False, reason="no blocks found")
    )
    assert not_applicable == [
        "TinyTL-L (lite residual) does not apply to resnet18: no blocks found. Deselect it."
    ]


def test_model_errors_and_memory_are_problems_too():
    def broken():
        raise ValueError("cannot trace")

    assert _problems(mode_table=broken) == ["Cannot model resnet18 at 64 px, batch 8: cannot trace"]
    huge = _problems(mode_table=lambda: _table().assign(total_stock_bytes=10**18))
    assert len(huge) == 1 and "Lower the batch size" in huge[0]


@pytest.mark.parametrize("modes", [["bias"], ["bias", "lite_residual"]])
def test_the_table_is_not_built_when_the_form_is_incomplete(modes):
    def never():
        raise AssertionError("modelled although the form was incomplete")

    assert _problems(modes=modes, dataset_ready=False, mode_table=never)


def test_setup_problems_refuse_before_queueing(tinytl_home):
    """What fails only once the model is built (batch 1 with BatchNorm at 32 px) is said before the run
    is queued, per mode; a mode that works says nothing."""
    from tinytl_core.adapt import AdaptConfig
    from tinytl_core.ui.checks import setup_problems

    configs = [AdaptConfig(mode=m, batch_size=1, resolution=32) for m in ("bias", "full")]
    problems = setup_problems(configs)
    assert len(problems) == 1 and problems[0].startswith("Full fine-tuning: batch size 1 is too small")
    assert setup_problems([AdaptConfig(mode="full", batch_size=2, resolution=32)]) == []
