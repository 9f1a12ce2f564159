"""CLI commands of the foundation: backbones and modes (issue 2)."""

import pytest

from tinytl_core.cli import main


def test_backbones_command(capsys):
    assert main(["backbones", "--curated"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv2_100" in out and "efficientnet_b0" in out
    header = out.splitlines()[0].split()
    assert header[:3] == ["name", "family", "kind"] and "has_pretrained" not in out and "True" not in out


def test_modes_command(capsys):
    assert main(["modes", "--model", "resnet18", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    for mode in ("full", "last", "bn+last", "bias", "lite_residual+bias"):
        assert mode in out


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["modes", "--model", "resnet_18"]) == 2
    assert "unknown backbone" in capsys.readouterr().err


def _numeric_options():
    """Every option of every command that takes a number: (command words, option string, action)."""
    import argparse

    from tinytl_core.cli import build_parser

    found = []

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])
            elif (
                action.option_strings
                and action.type not in (None, str)
                and not getattr(action.type, "path", False)  # --db: a path type
            ):
                found.append((words, action.option_strings[-1], action))

    walk(build_parser(), [])
    return found


def test_every_number_any_command_takes_has_a_range():
    """The class behind `--seed 10**30`, `--epochs inf`, `--resolution 100000`, `--threads 100000`: no
    command takes a number without a range, checked by argparse before any work."""
    from tinytl_core.cli.args import Bounded

    options = _numeric_options()
    assert len(options) > 40
    unbounded = [
        f"{' '.join(w)} {o}" for w, o, a in options if not isinstance(a.type, Bounded) and not a.choices
    ]
    assert not unbounded, unbounded


@pytest.mark.parametrize("value", ["-1", "1e999", "nan", "inf", str(10**30), "0.5", "x"])
def test_out_of_range_numbers_are_one_line_before_any_work(value, capsys):
    from tinytl_core.cli import main

    for words, option, action in _numeric_options():
        if action.choices:
            continue
        try:
            action.type(value)
            continue  # allowed for this option (e.g. 0.5 for a fraction)
        except Exception:  # noqa: BLE001 -- argparse's ArgumentTypeError
            pass
        assert main([*words, option, value]) == 2, (words, option, value)
        err = capsys.readouterr().err
        assert err.startswith(f"error: argument {option}") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_an_option_that_would_do_nothing_is_said_not_ignored(tmp_path, capsys):
    """The class: an option whose effect needs another (--history needs --csv, --label needs
    --export-reference) is refused with what to add; --limit applies to --families too."""
    db = str(tmp_path / "r.sqlite")
    assert main(["runs", "--db", db, "--history"]) == 2
    assert "--history adds the histories to the CSV export: give --csv FILE" in capsys.readouterr().err
    sweep = ["sweep", "--db", db, "--dry-run", "--modes", "last", "--datasets", "shapes", "--label", "mine"]
    assert main(sweep) == 2
    assert "--label names the reference set" in capsys.readouterr().err
    assert main(["memory", "--device", "cpu"]) == 2  # the device is where --measure runs
    assert "--device is where --measure runs its steps: give --measure too" in capsys.readouterr().err
    assert main(["modes", "--describe", "--resolution", "96", "--group-norm"]) == 2
    assert "--describe prints what each mode trains, the same for every model: drop --resolution, " in (
        capsys.readouterr().err
    )
    assert main(["modes", "--describe"]) == 0 and "lite_residual" in capsys.readouterr().out
    assert main(["backbones", "--families", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("... ") and "more (use --limit 0)" in lines[-1]


def test_ctrl_c_while_the_cli_starts_is_one_line():
    """A Ctrl-C during the seconds PyTorch and timm take to import: 'interrupted', exit 130, no import
    traceback."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytl_core", "backbones"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a terminal's Ctrl-C: a test run in the background (CI) passes SIGINT on ignored, and Python
        # then leaves it ignored instead of raising KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "interrupted", err


def test_a_database_in_a_missing_folder_is_refused_never_created(tmp_path, capsys):
    """Every command with --db (runs, jobs, worker, sweep, adapt): a typo'd folder is said, not created
    with an empty database a listing would show as an empty queue."""
    db = tmp_path / "nofolder" / "x.sqlite"
    for command in (["runs"], ["jobs"], ["worker", "--max-jobs", "1"], ["sweep", "--dry-run"], ["adapt"]):
        assert main([*command, "--db", str(db)]) == 2, command
        err = capsys.readouterr().err
        assert "its folder does not exist" in err and err.count("\n") == 1, (command, err)
    assert not (tmp_path / "nofolder").exists()


def test_plan_limit_needs_a_filter_and_help_texts_match_what_is_taken(capsys):
    assert main(["plan", "--budget", "1MB", "--limit", "3"]) == 2
    assert "--limit caps a catalog filter's matches" in capsys.readouterr().err
    assert main(["sparse-search", "--budget", "10MB", "--optimizer", "adamw"]) == 2  # its help lists choices
    assert "invalid choice: 'adamw'" in capsys.readouterr().err


def test_a_repeated_paper_method_is_one_row():
    from tinytl_core.paper import select_methods

    assert [m.method for m in select_methods(["FT-Last", "FT-Last"])] == ["FT-Last"]
