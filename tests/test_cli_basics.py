"""CLI commands of the foundation: backbones and modes (issue 2)."""

from tinytl_core.cli import main


def test_backbones_command(capsys):
    assert main(["backbones", "--curated"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv2_100" in out and "efficientnet_b0" in out


def test_modes_command(capsys):
    assert main(["modes", "--model", "resnet18", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    for mode in ("full", "last", "bn+last", "bias", "lite_residual+bias"):
        assert mode in out


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["modes", "--model", "resnet_18"]) == 2
    assert "unknown backbone" in capsys.readouterr().err
