"""``python -m tinytl_core memory`` (issue 3)."""

import pandas as pd
import pytest

from tinytl_core.cli import main
from tinytl_core.memory.report import MEMORY, TOTALS


def test_memory_command_table_and_csv(tmp_path, capsys):
    csv = tmp_path / "layers.csv"
    code = main(
        [
            "memory",
            "--model",
            "resnet18",
            "--resolution",
            "32",
            "--batch-size",
            "2",
            "--mode",
            "full,bias",
            "--optimizer",
            "sgd",
            "--measure",
            "--csv",
            str(csv),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "resnet18, 3x32x32, batch 2, optimizer sgd, complete accounting" in out
    # what a GPU's measured peak holds that the model leaves out is said (an H200 showed 50-75 MB more)
    assert "cuBLAS and cuDNN workspaces" in " ".join(out.split())
    header = next(line for line in out.splitlines() if line.startswith("mode"))
    labels = ("act. necessary", "act. stock", "act. stock measured", "act. engine measured", "total modelled")
    for label in (*labels, "x full"):
        assert label in header
    rows = [line.split() for line in out.splitlines()]
    lines = {r[0]: r for r in rows if r and r[0] in ("full", "bias")}
    assert lines["full"][-1] == "1.00" and float(lines["bias"][-1]) < 1.0
    # weights, grads+opt, necessary, stock (model), stock (measured), engine (measured), total: each a size
    # in the unit it calls for ("2.88 MB"), then x full
    from tinytl_core.planner.budget import parse_budget

    cells = lines["bias"][1:-1]
    sizes = [parse_budget(f"{v} {u}".replace(",", "")) for v, u in zip(cells[::2], cells[1::2])]
    necessary, stock_model, stock_measured, engine = sizes[2:6]
    assert stock_measured == pytest.approx(stock_model, rel=0.02)
    assert engine == pytest.approx(necessary, rel=0.05) and engine < stock_measured / 5

    layers = pd.read_csv(csv)
    assert set(layers["mode"]) == {"full", "bias"}
    necessary, stock, engine = (
        TOTALS.activations_necessary_bytes,
        MEMORY.activations_measured_stock_bytes,
        MEMORY.activations_measured_engine_bytes,
    )
    assert {necessary, TOTALS.activations_stock_bytes, stock, engine} <= set(layers)
    full = layers[layers["mode"] == "full"]
    assert (full[stock] == full[TOTALS.activations_stock_bytes]).all()
    bias = layers[layers["mode"] == "bias"].set_index("layer")
    assert bias.loc["layer1.0.conv1", stock] > 0 == bias.loc["layer1.0.conv1", engine]  # frozen conv
    assert bias[engine].sum() == pytest.approx(bias[necessary].sum(), rel=0.05)


def test_memory_command_paper_accounting(capsys):
    assert main(["memory", "--model", "mobilenetv2_100", "--resolution", "64", "--accounting", "paper"]) == 0
    out = capsys.readouterr().out
    assert "paper accounting" in out and "lite_residual+bias" in out


def test_memory_command_errors(capsys):
    assert main(["memory", "--model", "resnet18", "--mode", "everything"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert main(["memory", "--model", "resnet18", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_cli_tables_read_at_every_size_and_never_print_nan(tinytl_home, tmp_path, capsys):
    """The class: the CLI's tables (memory, modes, runs) take the unit each figure calls for, have headers
    in words and print a missing figure as '-', never NaN, None or millions of MB."""
    from tinytl_core.results import ResultsStore

    assert main(["memory", "--resolution", "1024", "--batch-size", "4096", "--mode", "full,last"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["full"], ["last"])]
    assert len(rows) == 2 and "TB" in rows[0]
    assert all(len(cell.split(".")[0]) <= 3 for row in rows for cell in row[1:] if cell[0].isdigit())
    assert main(["modes", "--model", "vit_tiny_patch16_224", "--resolution", "32"]) == 0
    out = capsys.readouterr().out
    assert "trainable_MB" not in out and "trainable_%" not in out and "NaN" not in out and ".0 " not in out
    assert "trainable params" in out and "5,489,482" in out
    db = str(tmp_path / "r.sqlite")
    ResultsStore(db).save_run({"status": "failed", "backbone": "b", "mode": "bias", "dataset": "digits"})
    assert main(["runs", "--db", db]) == 0
    table = capsys.readouterr().out.splitlines()[:-1]  # the last line names the database
    assert not any("NaN" in line or "None" in line for line in table), table
