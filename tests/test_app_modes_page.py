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
    at.segmented_control(key="mode").set_value("bias").run()
    assert not at.exception
    bias = [m.value for m in at.metric]
    assert bias != full
    assert int(bias[0].replace(",", "")) < int(full[0].replace(",", ""))
    assert at.get("plotly_chart")


def test_modes_table_is_readable():
    """Issue 14: headers from the quantities (no raw ``trainable_MB`` / ``trainable_%``), rounded figures,
    no empty column, and the same segmented buttons as the other pages."""
    at = modes_page("mobilenetv2_100")
    assert not at.exception and not at.get("radio")
    table = at.dataframe[0].value
    columns = list(table.columns)
    assert not {"trainable_MB", "trainable_%", "note", "applicable", "total_params"} & set(columns), columns
    assert {"trainable MB", "share %", "trainable params"} <= set(columns), columns
    assert "Full fine-tuning" in list(table["mode"])  # titles, not raw mode names
    assert all(not table[c].isna().all() for c in columns)  # no empty column
    for column, decimals in (("trainable MB", 3), ("share %", 2)):
        assert (table[column].round(decimals) == table[column]).all(), column


def test_not_applicable_mode_is_explained():
    at = modes_page("vit_tiny_patch16_224")
    at.segmented_control(key="mode").set_value("lite_residual").run()
    assert not at.exception
    assert any("Not applicable" in w.value for w in at.warning)


def test_a_size_the_backbone_cannot_run_at_shows_no_figures():
    """As Home and the Memory Explorer: at 8 px a ViT cannot run, so no parameter counts of it are shown
    (they depend on the size), only the reason."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["backbone"] = "vit_tiny_patch16_224"
    at.session_state["resolution"] = 8
    at.run()
    at.switch_page("app_pages/modes.py").run()
    assert not at.exception
    assert any("8 px is too small" in e.value for e in at.error) and not at.metric
