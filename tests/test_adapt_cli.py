"""CLI: ``adapt``, ``runs`` and ``datasets`` end to end on tiny settings."""

import csv

import pytest

from tinytl_core.cli import main
from tinytl_core.results import MEMORY, ResultsStore

TINY = [
    "--model",
    "resnet10t",
    "--dataset",
    "digits",
    "--batch-size",
    "4",
    "--resolution",
    "32",
    "--no-pretrained",
    "--val-cap",
    "2",
    "--device",
    "cpu",
]


def test_adapt_then_list_export_show_delete(tinytl_home, tmp_path, capsys):
    db = str(tmp_path / "runs.sqlite")
    assert (
        main(["adapt", *TINY, "--mode", "full", "--steps", "3", "--no-memory", "--no-engine", "--db", db])
        == 0
    )
    out = capsys.readouterr().out
    assert "digits: 10 classes" in out and "resnet10t full on digits: val acc" in out and "[run 1]" in out
    assert "img/s, stock layers)" in out

    assert main(["adapt", *TINY, "--modes", "last,bias", "--steps", "2", "--no-measure", "--db", db]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[-1]
    assert "total modelled MB" in table and " last " in table and " bias " in table and "[run 3]" in out
    assert "started" not in table and "backbone" not in table  # the compact table without those

    assert main(["runs", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "3 run(s)" in out and "finished" in out
    target = tmp_path / "runs.csv"
    assert main(["runs", "--db", db, "--csv", str(target)]) == 0
    rows = list(csv.DictReader(target.open()))
    assert [r["mode"] for r in rows] == ["bias", "last", "full"]
    total = MEMORY.total_modelled_bytes
    assert rows[0][total] and not rows[2][total]  # --no-memory on run 1
    assert main(["runs", "--db", db, "--show", "2"]) == 0
    shown = capsys.readouterr().out
    assert '"mode": "last"' in shown and '"engine": true' in shown  # the default: the training engine
    assert main(["runs", "--db", db, "--show", "1"]) == 0
    assert '"engine": false' in capsys.readouterr().out  # --no-engine
    assert main(["runs", "--db", db, "--delete", "2"]) == 0
    assert main(["runs", "--db", db, "--delete", "2"]) == 2
    assert "no run with id 2" in capsys.readouterr().err


def test_adapt_errors_are_one_line(tinytl_home, tmp_path, capsys):
    db = str(tmp_path / "runs.sqlite")
    assert main(["adapt", *TINY[:2], "--dataset", "cifar10", "--steps", "1", "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 is not in") and "Traceback" not in err
    assert main(["adapt", *TINY, "--mode", "full", "--lr", "-1", "--db", db]) == 2
    assert "argument --lr: must be more than 0" in capsys.readouterr().err
    assert (
        main(
            [
                "adapt",
                *TINY,
                "--mode",
                "full",
                "--optimizer",
                "sgd",
                "--lr",
                "1e30",
                "--steps",
                "5",
                "--no-memory",
                "--db",
                db,
            ]
        )
        == 1
    )
    assert "loss became nan" in capsys.readouterr().out
    assert main(["runs", "--db", db, "--status", "diverged"]) == 0
    assert "1 run(s)" in capsys.readouterr().out


def test_every_argument_is_checked_before_the_dataset_loads(tinytl_home, tmp_path, capsys, monkeypatch):
    import tinytl_core.cli.adapt as cli_adapt

    def no_loading(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the arguments were checked")

    monkeypatch.setattr(cli_adapt, "load_dataset", no_loading)
    db = str(tmp_path / "runs.sqlite")
    for args, message in (
        (["--model", "resnet5O"], "error: unknown backbone 'resnet5O'. Did you mean: resnet50"),
        (["--dataset", "digitz"], "error: unknown dataset 'digitz'"),
        (["--dataset", str(tmp_path / "nope.zip")], "error: no such image folder or .zip archive"),
        (["--modes", "bias,everything"], "error: unknown mode 'everything'"),
        (["--shots", "0"], "error: argument --shots: must be 1 to"),
        (["--batch-size", "0"], "error: argument --batch-size: must be 1 to"),
        (["--resolution", "100000"], "error: argument --resolution: must be 8 to 1,024"),
        (["--epochs", "inf"], "error: argument --epochs: must be a finite number"),
        (["--seed", str(10**30)], "error: argument --seed: must be 0 to"),
        (["--modes", ","], "error: no mode given"),
        (["--model", "vit_tiny_patch16_224", "--resolution", "8"], "error: 8 px is too small"),
        (["--threads", "0"], "error: argument --threads: must be 1 to 1,024"),
        (["--threads", "100000"], "error: argument --threads: must be 1 to 1,024"),
        (["--device", "bogus"], "error: unknown device 'bogus': use auto, cpu, cuda or cuda:N"),
        (["--lr", "1e39"], "error: argument --lr: must be more than 0 and at most 1e+30"),
        (["--weight-quantization", "linear"], "error: --weight-quantization makes 8-bit frozen weights"),
        (["--eval-every", "100", "--steps", "2"], "error: --eval-every 100 never evaluates before the end"),
        # what depends on the model: checked on `meta` (shapes only), still before the dataset
        (["--mode", "sparse", "--group-norm"], "error: mode 'sparse' does not apply: its partial weight"),
        (["--batch-size", "1", "--resolution", "32"], "error: batch size 1 is too small for BatchNorm"),
        (["--modes", "all", "--batch-size", "1", "--resolution", "32"], "error: mode full: batch size 1"),
    ):
        assert main(["adapt", *args, "--db", db]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_error_messages_print_clean(tmp_path, capsys):
    """A KeyError's text is printed without the quotes str() adds; OS errors give their reason and file."""
    from tinytl_core.cli import error_message

    db = str(tmp_path / "runs.sqlite")
    assert main(["runs", "--db", db, "--delete", "9999"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: no run with id 9999 in {db}\n"
    assert main(["runs", "--db", db, "--show", "7"]) == 2
    assert capsys.readouterr().err.startswith("error: no run with id 7 in")
    assert main(["runs", "--db", str(tmp_path), "--limit", "1"]) == 2  # a folder is no database
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert main(["runs", "--db", db, "--csv", str(tmp_path / "missing" / "x.csv")]) == 2
    assert capsys.readouterr().err.startswith("error: --csv: folder ")  # said before anything is read
    assert error_message(KeyError("no run with id 3")) == "no run with id 3"
    assert error_message(KeyError(3)) == "3"
    missing = FileNotFoundError(2, "No such file or directory", "/x")
    assert error_message(missing) == "No such file or directory: /x"
    assert error_message(ValueError()) == "ValueError"


def test_memory_uses_the_models_own_resolution_and_warns_when_maps_collapse(capsys):
    assert main(["memory", "--mode", "bias"]) == 0  # the default: the demo backbone at its own 64 px
    out = capsys.readouterr().out
    assert "demo_mobilenetv2_050, 3x64x64, batch 8" in out
    assert main(["memory", "--model", "resnet10t", "--resolution", "16", "--mode", "bias"]) == 0
    captured = capsys.readouterr()
    assert "3x16x16" in captured.out
    assert captured.err.startswith("warning: 16 px is below 32 px") and "Use at least 32 px" in captured.err
    assert main(["memory", "--model", "resnet5O"]) == 2
    assert "unknown backbone" in capsys.readouterr().err


def test_datasets_commands(tinytl_home, tmp_path, capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("shapes", "textures", "digits", "flowers102", "cifar100"))
    assert main(["datasets", "build", "digits"]) == 0
    assert "digits: 1797 images, 10 classes, 64 px, built in" in capsys.readouterr().out
    assert main(["datasets", "build", "digits"]) == 0
    assert "loaded from cache" in capsys.readouterr().out
    assert main(["datasets", "info", "digits", "--shots", "3"]) == 0
    assert "30 train" in capsys.readouterr().out
    assert main(["datasets", "download", "cifar10"]) == 2
    assert "offline" in capsys.readouterr().err


def test_model_dependent_checks_match_the_run(tinytl_home):
    """check_setup refuses exactly what a run at that batch and size would fail on: batch 1 with
    BatchNorm using batch statistics at a size where a feature map is 1x1; frozen-backbone modes pass."""
    from tinytl_core.adapt import AdaptConfig, adapt, check_setup
    from tinytl_core.modes import ModeNotApplicable

    small = dict(batch_size=1, resolution=32, steps=1, record_memory=False, shots=2, val_cap=1)
    for mode in ("full", "bn+last"):
        with pytest.raises(ValueError, match="batch size 1 is too small for BatchNorm"):
            check_setup(AdaptConfig(mode=mode, **small))
    for mode in ("last", "bias"):
        check_setup(AdaptConfig(mode=mode, **small))
        assert adapt(AdaptConfig(mode=mode, **small)).steps_done == 1  # and the run indeed trains
    check_setup(AdaptConfig(mode="full", batch_size=2, resolution=32))
    with pytest.raises(ModeNotApplicable, match="without GroupNorm"):
        check_setup(AdaptConfig(mode="sparse", group_norm=True))


def test_no_output_option_overwrites_the_results_database(tinytl_home, tmp_path, capsys):
    """The class: every output option (--csv, --out, --export-plan, --export-reference, --status-file) is
    checked before any work; a database there is refused (it would be destroyed), an existing file is
    replaced and said so."""
    from tinytl_core.results import ResultsStore

    db = tmp_path / "runs.sqlite"
    ResultsStore(db).save_run({"status": "finished", "backbone": "b", "mode": "bias", "dataset": "digits"})
    before = db.read_bytes()
    sweep = ["sweep", "--db", str(db), "--dry-run", "--modes", "last", "--datasets", "shapes", "--seeds", "0"]
    for command in (
        ["runs", "--db", str(db), "--csv", str(db)],
        [*sweep, "--status-file", str(db)],
        [*sweep, "--export-reference", str(db)],
        ["memory", "--csv", str(db)],
        ["plan", "--budget", "10MB", "--csv", str(db)],
        ["plan", "--budget", "10MB", "--export-plan", str(db)],
    ):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "is a database" in err and err.count("\n") <= 1 and "Traceback" not in err, (command, err)
    assert db.read_bytes() == before and len(ResultsStore(db).list_runs()) == 1
    old = tmp_path / "old.csv"
    old.write_text("precious")
    assert main(["runs", "--db", str(db), "--csv", str(old)]) == 0
    assert "old.csv exists and will be replaced" in capsys.readouterr().err


def test_datasets_info_says_when_a_set_cannot_train(tmp_path, capsys):
    """A folder with no validation image (two images, one per class, at a small fraction) is what adapt
    will refuse: `datasets info` says so and exits 1 instead of reporting it fine."""
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "ds" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "ds" / name / "1.png")
    assert main(["datasets", "info", str(tmp_path / "ds"), "--val-fraction", "0.01"]) == 1
    assert "training needs at least one training and one validation image" in capsys.readouterr().err


def test_a_mode_that_does_not_fit_is_skipped_and_the_others_run(tmp_path, monkeypatch, capsys):
    """`adapt --modes` stopped at the first mode whose step did not fit in memory: the modes after it never
    ran and no table was printed. Such a mode is now said and skipped, like one that does not apply, and
    the command exits 1 (a run not trained), not 2."""
    import importlib

    from tinytl_core.memory import MemoryLimitError

    adapt_module = importlib.import_module("tinytl_core.adapt")
    real = adapt_module._check_fits

    def full_does_not_fit(model, config, *args):
        if config.mode == "full":
            raise MemoryLimitError("Training in mode full needs about 30.3 GB, but only 21.7 GB are free")
        return real(model, config, *args)

    monkeypatch.setattr(adapt_module, "_check_fits", full_does_not_fit)
    db = tmp_path / "r.sqlite"
    argv = ["adapt", "--modes", "full,last", "--resolution", "32", "--steps", "1", "--val-cap", "1"]
    code = main([*argv, "--no-memory", "--dataset", "shapes", "--db", str(db), "--no-pretrained"])
    out = capsys.readouterr().out
    assert code == 1 and "not trained: Training in mode full needs about 30.3 GB" in out
    assert [r["mode"] for r in ResultsStore(db).list_runs()] == ["last"]
