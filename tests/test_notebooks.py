"""The teaching notebooks: stored without outputs, and each runs top to bottom in a fresh kernel.

The execution tests run every notebook with ``TINYTL_NOTEBOOK_FAST=1`` (the notebooks shrink their settings),
offline, one torch thread, and an isolated data folder; any cell error fails the test.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tinytl_core.backbones import DEMO_BACKBONE
from tinytl_core.modes import MODES
from tinytl_core.results import MEMORY, ResultsStore
from tinytl_core.ui.vega import VEGA_LITE_MIME

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = (
    "01_activation_is_the_bottleneck.ipynb",
    "02_modes_and_lite_residual.ipynb",
    "03_adapt_and_compare.ipynb",
)
PLOTLY = "application/vnd.plotly.v1+json"
# Plotly figures each notebook shows at least (a cell that silently stops drawing is a regression too).
MIN_FIGURES = {NOTEBOOKS[0]: 6, NOTEBOOKS[1]: 3, NOTEBOOKS[2]: 1}
# Vega-Lite charts (the app's memory-accuracy scatter twice, the training curves once).
MIN_VEGA_LITE = {NOTEBOOKS[0]: 0, NOTEBOOKS[1]: 0, NOTEBOOKS[2]: 3}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def test_the_notebooks_are_the_documented_ones():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_valid_with_outputs_cleared(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and nb.cells[0].cell_type == "markdown"
    for cell in code:
        left = f"outputs left in {name}: {cell.source[:60]!r}"
        assert cell.outputs == [] and cell.execution_count is None, left
    assert "TINYTL_NOTEBOOK_FAST" in code[0].source  # the switch this test relies on


def execute(name: str, home: Path, monkeypatch) -> nbformat.NotebookNode:
    """Run ``name`` in a fresh python3 kernel with small settings; raises on the first failing cell."""
    for var, value in {
        "TINYTL_HOME": str(home),
        "TINYTL_NOTEBOOK_FAST": "1",
        "TINYTL_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(var, value)  # the kernel inherits this process's environment
    monkeypatch.delenv("TINYTL_RESULTS_DB", raising=False)
    nb = read(name)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    ).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    nb = execute(name, tmp_path / "home", monkeypatch)
    outs = outputs(nb)
    assert not [o for o in outs if o.output_type == "error"]
    figures = [o for o in outs if PLOTLY in o.get("data", {})]
    assert len(figures) >= MIN_FIGURES[name]
    assert all(f.data[PLOTLY]["data"] for f in figures), "a figure without traces"
    charts = [o.data[VEGA_LITE_MIME] for o in outs if VEGA_LITE_MIME in o.get("data", {})]
    assert len(charts) >= MIN_VEGA_LITE[name]
    assert all(c["data"]["values"] for c in charts), "a chart without data"
    if name == NOTEBOOKS[2]:  # every mode plus the image-folder run went to the isolated results store
        runs = ResultsStore(tmp_path / "home" / "results.sqlite").list_runs()
        assert sorted(r["mode"] for r in runs) == sorted([*MODES, "lite_residual+bias"])
        assert all(r["status"] == "finished" and r["backbone"] == DEMO_BACKBONE for r in runs)
        assert all(r["pretrained_loaded"] for r in runs), "the shipped demo checkpoint did not load"
        assert all(r[MEMORY.total_modelled_bytes] and r[MEMORY.total_measured_bytes] for r in runs)
        assert any("example_folder" in r["dataset"] for r in runs)
        bias = next(r for r in runs if r["mode"] == "bias")  # trained on the engine: far below stock PyTorch
        assert 5 * bias[MEMORY.activations_measured_bytes] < bias[MEMORY.activations_measured_stock_bytes]
        curves = next(c for c in charts if "hconcat" in c)  # one curve per mode
        assert {v["run"] for v in curves["data"]["values"]} == set(MODES)
