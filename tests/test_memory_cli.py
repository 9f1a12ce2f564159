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
    header = next(line for line in out.splitlines() if line.startswith("mode"))
    labels = ("act. necessary", "act. stock", "act. stock measured", "act. engine measured", "total modelled")
    for label in (*labels, "x full"):
        assert label in header
    rows = [line.split() for line in out.splitlines()]
    lines = {r[0]: r for r in rows if r and r[0] in ("full", "bias")}
    assert lines["full"][-1] == "1.00" and float(lines["bias"][-1]) < 1.0
    # weights, grads+opt, necessary, stock (model), stock (measured), engine (measured), total, x full
    necessary, stock_model, stock_measured, engine = (float(x.replace(",", "")) for x in lines["bias"][3:7])
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
