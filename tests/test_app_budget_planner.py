"""The Budget planner page under AppTest: a budget, a plan, what fits (chart, table, CSV), the answer when
nothing fits, a bad budget refused in place, "train it" queues a job, and the budget drawn on Home."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tinytl_core.jobs import JobQueue

APP = str(Path(__file__).resolve().parents[1] / "app.py")
DEMO = "demo_mobilenetv2_050"


@pytest.fixture
def app(tinytl_home, monkeypatch):
    monkeypatch.setenv("TINYTL_PLANNER_CACHE", "0")  # the test's own profiles (the shared one is per process)
    at = AppTest.from_file(APP, default_timeout=240)
    for key, value in {"backbone": DEMO, "resolution": 32, "batch_size": 2, "pretrained": False}.items():
        at.session_state[key] = value
    at.switch_page("app_pages/budget_planner.py").run()
    assert not at.exception, at.exception
    return at


def plan_with(at: AppTest, budget: str) -> AppTest:
    at.text_input(key="pl_custom").set_value(budget)
    at.multiselect(key="pl_modes").set_value(["bias", "full"])
    at.slider(key="pl_batches").set_value((2, 4))  # BatchNorm profiles only (GroupNorm: unit tests)
    at.button[0].click()  # the form's Plan button
    at.run()
    assert not at.exception, at.exception
    return at


def test_plan_fits_and_trains(app):
    at = plan_with(app, "4 MB")
    assert not at.error, [e.value for e in at.error]
    assert [m.value for m in at.metric][1] == "6"  # 2 modes x 3 batches at 32 px
    assert at.session_state["budget_bytes"] == 4_000_000
    tables = at.dataframe
    assert len(tables) == 2 and len(tables[1].value) > 0  # per backbone x mode, what fits
    assert "bias" in set(tables[1].value["mode"])
    assert "not measured yet" in set(tables[1].value["accuracy"])
    at.toggle(key="pl_paper").set_value(True).run()  # the paper's layer needs an accuracy axis: said so
    assert not at.exception, at.exception
    assert any("need an accuracy axis" in c.value for c in at.caption)
    at.selectbox(key="pl_train_set").set_value("digits")
    at.button(key="pl_train").click().run()
    assert not at.exception, at.exception
    assert any("Queued as job" in s.value for s in at.success)
    (job,) = JobQueue().list_jobs()
    assert job.config.dataset == "digits" and job.config.backbone == DEMO and job.config.resolution == 32
    assert (job.config.weight_bits, job.config.engine) == (32, True)  # what the plan counted
    at.switch_page("app_pages/home.py").run()  # the budget is drawn on Home's chart
    assert not at.exception, at.exception
    assert "budget 4.00 MB" in str(at.get("plotly_chart")[0].proto.spec)


def test_nothing_fits_and_bad_budgets(app):
    at = plan_with(app, "100 KB")
    assert any("Nothing fits 100 KB" in e.value and "over" in e.value for e in at.error)
    at.text_input(key="pl_custom").set_value("12 parsecs").run()
    assert any("unknown unit" in e.value.lower() for e in at.error)
    assert not at.exception
    at.text_input(key="pl_custom").set_value("-3 MB").run()
    assert any("positive" in e.value for e in at.error)
    # a rejected entry says which budget the other charts still draw
    assert any("charts keep 100 KB" in e.value for e in at.error)
    at.text_input(key="pl_custom").set_value("abc").run()  # two sentences, not run together
    assert any("'0.5 GB'. The Home and Memory Explorer charts keep" in e.value for e in at.error), [
        e.value for e in at.error
    ]
    at.text_input(key="pl_custom").set_value("1e300 GB").run()
    assert any("larger than any device" in e.value for e in at.error) and not at.exception
    assert at.session_state["budget_bytes"] == 100_000


def test_train_it_trains_what_was_planned():
    """Every setting the plan counted reaches the run: optimizer, frozen-weight bits, engine; bits a run
    cannot use are refused with what to do."""
    from tinytl_core.planner.plan import SearchSpace
    from tinytl_core.ui.planner_view import train_config

    row = {"backbone": DEMO, "mode": "bias", "batch_size": 1, "resolution": 32}
    space = SearchSpace(backbones=(DEMO,), optimizer="sgd", frozen_weight_bits=8, engine=False)
    config = train_config(row, "digits", space=space, pretrained=False)
    assert (config.optimizer, config.weight_bits, config.engine, config.group_norm) == ("sgd", 8, False, True)
    with pytest.raises(ValueError, match="at 4 bits; a training run keeps them at 8"):
        train_config(
            row, "digits", space=SearchSpace(backbones=(DEMO,), frozen_weight_bits=4), pretrained=False
        )


def test_a_plan_made_with_other_settings_says_so(app):
    """The plan kept across reruns is not the form's once a setting changed outside it (a preset brings
    its own frozen-weight bits): the page says which, and Train it trains the plan's (the figures shown);
    an empty mode list is a page message, not CLI wording."""
    app.selectbox(key="pl_preset").set_value("mcu-512k").run()
    app.multiselect(key="pl_modes").set_value(["bias"])
    app.slider(key="pl_batches").set_value((1, 2))
    app.button[0].click().run()
    assert not app.exception and app.session_state["pl_plan"].space.frozen_weight_bits == 8
    app.selectbox(key="pl_preset").set_value("custom").run()  # the form's bits follow: 32
    assert any("(frozen-weight bits 8 -> 32)" in w.value for w in app.warning), [w.value for w in app.warning]
    app.button(key="pl_train").click().run()
    (job,) = JobQueue().list_jobs()
    assert job.config.weight_bits == 8  # the plan's, as the figures
    app.multiselect(key="pl_modes").set_value([])
    app.button[0].click().run()
    assert any(e.value == "Choose at least one mode." for e in app.error) and not app.exception
