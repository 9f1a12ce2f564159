"""``python -m tinytl_core memory`` (issue 3)."""

import pandas as pd
import pytest
import torch

from tinytl_core.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_memory_command_table_and_csv(tmp_path, capsys):
    csv = tmp_path / "layers.csv"
    code = main(["memory", "--model", "resnet18", "--resolution", "32", "--batch-size", "2",
                 "--mode", "full,bias", "--optimizer", "sgd", "--measure", "--csv", str(csv)])
    out = capsys.readouterr().out
    assert code == 0
    assert "resnet18, 3x32x32, batch 2, optimizer sgd, complete accounting" in out
    assert "act. measured" in out and "x full" in out
    rows = [line.split() for line in out.splitlines()]
    lines = {r[0]: r for r in rows if r and r[0] in ("full", "bias")}
    assert lines["full"][-1] == "1.00" and float(lines["bias"][-1]) < 1.0
    layers = pd.read_csv(csv)
    assert set(layers["mode"]) == {"full", "bias"}
    columns = {"activation_necessary_bytes", "activation_stock_bytes", "activation_measured_bytes"}
    assert columns <= set(layers)
    full = layers[layers["mode"] == "full"]
    assert (full["activation_measured_bytes"] == full["activation_stock_bytes"]).all()


def test_memory_command_paper_accounting(capsys):
    assert main(["memory", "--model", "mobilenetv2_100", "--resolution", "64", "--accounting", "paper"]) == 0
    out = capsys.readouterr().out
    assert "paper accounting" in out and "lite_residual+bias" in out


def test_memory_command_errors(capsys):
    assert main(["memory", "--model", "resnet18", "--mode", "everything"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert main(["memory", "--model", "resnet18", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
