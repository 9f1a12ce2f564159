"""CLI: ``adapt``, ``runs`` and ``datasets`` end to end on tiny settings."""

import csv

from tinytl_core.cli import main
from tinytl_core.results import MEMORY

TINY = ["--model", "resnet10t", "--dataset", "digits", "--batch-size", "4", "--resolution", "32",
        "--no-pretrained", "--val-cap", "2", "--device", "cpu"]


def test_adapt_then_list_export_show_delete(tinytl_home, tmp_path, capsys):
    db = str(tmp_path / "runs.sqlite")
    assert main(["adapt", *TINY, "--mode", "full", "--steps", "3", "--no-memory", "--no-engine",
                 "--db", db]) == 0
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
    assert "learning rate" in capsys.readouterr().err
    assert main(["adapt", *TINY, "--mode", "full", "--optimizer", "sgd", "--lr", "1e30", "--steps", "5",
                 "--no-memory", "--db", db]) == 1
    assert "loss became nan" in capsys.readouterr().out
    assert main(["runs", "--db", db, "--status", "failed"]) == 0
    assert "1 run(s)" in capsys.readouterr().out


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
