"""The Fine-tuning modes page renders and follows the mode switch (issue 2)."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def modes_page(backbone: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["backbone"] = backbone
    at.session_state["pretrained"] = False
    at.run()
    at.switch_page("app_pages/modes.py").run()
    return at


def test_modes_page_renders_and_switches():
    at = modes_page("mobilenetv2_100")
    assert not at.exception
    full = [m.value for m in at.metric]
    assert full[0] == f"{int(full[0].replace(',', '')):,}"
    at.radio(key="mode").set_value("bias").run()
    assert not at.exception
    bias = [m.value for m in at.metric]
    assert bias != full
    assert int(bias[0].replace(",", "")) < int(full[0].replace(",", ""))
    assert at.get("plotly_chart")


def test_not_applicable_mode_is_explained():
    at = modes_page("vit_tiny_patch16_224")
    at.radio(key="mode").set_value("lite_residual").run()
    assert not at.exception
    assert any("Not applicable" in w.value for w in at.warning)
