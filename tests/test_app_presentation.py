"""Issue 14, presentation, in the app (AppTest): the sidebar rejects a value in place with the reason
shown, Home phrases its comparison in the true direction, About renders its formulas as math."""

from __future__ import annotations

import pytest
from app_helpers import app_test


@pytest.fixture
def app(tinytl_home):
    return app_test()


def test_a_rejected_sidebar_value_is_undone_in_place_with_the_reason_shown(app):
    app.run()
    batch = app.sidebar.number_input(key="batch_size")
    batch.set_value(100_000).run()
    assert not app.exception
    assert app.sidebar.number_input(key="batch_size").value == 2  # the value the charts use, not 100000
    shown = [e.value for e in app.sidebar.error]
    assert any("100,000" in e and "1 to 512" in e for e in shown), shown  # visible, not in a tooltip
    app.sidebar.number_input(key="resolution").set_value(4).run()
    assert app.sidebar.number_input(key="resolution").value == 32
    assert any("8 to 1,024" in e.value for e in app.sidebar.error)
    app.sidebar.number_input(key="batch_size").set_value(4).run()  # a valid value clears its reason
    assert app.sidebar.number_input(key="batch_size").value == 4
    assert not any("100,000" in e.value for e in app.sidebar.error)
    # the kept value typed again (no change, no callback): the reason does not outlive its cause
    app.sidebar.number_input(key="resolution").set_value(7).run()
    assert any("8 to 1,024" in e.value for e in app.sidebar.error)
    app.sidebar.number_input(key="resolution").set_value(32).run()
    assert not app.sidebar.error
    app.switch_page("app_pages/about.py").run()
    assert not app.sidebar.error


def test_home_says_the_true_direction(app):
    # resnet50 at 224 px: TinyTL-L+B costs more than full fine-tuning (its branches' weights and Adam
    # state); Home said "0.4x less than full".
    app.session_state["backbone"], app.session_state["resolution"], app.session_state["batch_size"] = (
        "resnet50",
        224,
        8,
    )
    app.run()
    assert not app.exception
    cards = {m.label: m for m in app.metric}
    full = _bytes(cards["Full fine-tuning"].value)
    (tiny,) = [m for label, m in cards.items() if label.startswith("TinyTL")]
    word = "more" if _bytes(tiny.value) > full else "less"
    assert tiny.proto.delta.endswith(f"{word} than full"), (tiny.value, full, tiny.proto.delta)


def _bytes(text: str) -> float:
    number, unit = text.split()[:2]
    return float(number.replace(",", "")) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]


def test_about_renders_formulas_as_math(app):
    app.run()
    app.switch_page("app_pages/about.py").run()
    assert not app.exception
    assert any("reduce" in x.value and "\\mathcal{F}" in x.value for x in app.get("latex")) or any(
        "reduce" in m.value for m in app.markdown if "$$" in m.value
    )
    text = "\n".join(m.value for m in app.markdown)
    assert "`y = a·W + b`" not in text and "`a_{i+1}" not in text  # no formula left as raw code
    assert "$y = aW + b$" in text


def test_no_page_draws_a_stray_string():
    """Streamlit "magic" draws every bare string statement of a page (a docstring under a constant showed
    as text on Compare runs): only the module's and functions' own docstrings may be bare strings."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stray = []
    for path in [root / "app.py", *sorted((root / "app_pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            for field in ("body", "orelse", "finalbody"):
                body = getattr(node, field, None)
                if not isinstance(body, list):
                    continue
                docstring_allowed = field == "body" and isinstance(
                    node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                )
                for i, stmt in enumerate(body):
                    if (
                        isinstance(stmt, ast.Expr)
                        and isinstance(stmt.value, ast.Constant)
                        and isinstance(stmt.value.value, str)
                        and not (docstring_allowed and i == 0)
                    ):
                        stray.append(f"{path.name}:{stmt.lineno}")
    assert stray == []
