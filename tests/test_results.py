"""SQLite results store: round trip, CSV export, delete, concurrent writers, atomic writes, migration from
older schemas, the one run -> table builder."""

import csv
import io
import json
import multiprocessing as mp
import sqlite3
import sys
from dataclasses import asdict

import pandas as pd
import pytest

from tinytl_core.quantities import RunMemory, RunStatus
from tinytl_core.results import (
    COLUMNS,
    ENV_DB,
    MEMORY,
    RUN,
    SCHEMA_VERSION,
    ResultsStore,
    default_db_path,
    run_headers,
    run_table,
)

FIGURES = RunMemory(weights_bytes=100, total_modelled_bytes=1000, activations_measured_bytes=700)


def record(**overrides):
    base = {
        "status": "finished",
        "backbone": "resnet10t",
        "mode": "bias",
        "dataset": "shapes",
        "num_classes": 10,
        "batch_size": 4,
        "lr": 1e-3,
        "seed": 0,
        "steps_done": 3,
        "final_val_acc": 0.5,
        "pretrained": False,
        "memory": {**asdict(FIGURES), "extra_key": 1},
        "history": [{"kind": "step", "step": 1, "loss": 2.3}, {"kind": "eval", "step": 3, "val_acc": 0.5}],
        "config": {"backbone": "resnet10t", "lr": 1e-3},
        "versions": {"torch": "x"},
    }
    base.update(overrides)
    return base


def test_round_trip_filter_and_delete(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    a = store.save_run(record())
    b = store.save_run(record(status="cancelled", mode="full", message="cancelled at step 2"))
    run = store.get_run(a)
    assert run["history"][1]["val_acc"] == 0.5 and run["config"]["lr"] == 1e-3
    assert run["memory"]["extra_key"] == 1 and run[MEMORY.weights_bytes] == FIGURES.weights_bytes
    assert run[MEMORY.total_modelled_bytes] == FIGURES.total_modelled_bytes
    assert run[MEMORY.activations_measured_stock_bytes] is None  # not in the figures: an empty column
    assert RunMemory.from_dict(run["memory"]) == FIGURES  # the stored dict reads back (extra keys ignored)
    assert run["pretrained"] is False and run["final_val_acc"] == 0.5
    assert run["status"] is RunStatus.FINISHED
    assert [r["id"] for r in store.list_runs()] == [b, a]  # newest first
    assert [r["id"] for r in store.list_runs(status="cancelled")] == [b]
    assert store.list_runs(mode="bias", limit=5)[0]["id"] == a
    store.delete_run(a)
    assert store.count() == 1
    with pytest.raises(KeyError, match=f"no run with id {a}"):
        store.get_run(a)
    with pytest.raises(KeyError):
        store.delete_run(a)
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_invalid_records_are_refused_whole(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="status must be one of"):
        store.save_run(record(status="running"))
    with pytest.raises(ValueError, match="unknown run field"):
        store.save_run(record(accuracy=1.0))
    with pytest.raises(ValueError, match="needs backbone"):
        store.save_run(record(backbone=""))
    with pytest.raises(TypeError):  # not JSON-serialisable: nothing may be half-written
        store.save_run(record(history=[object()]))
    assert store.count() == 0


def test_csv_export(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    ids = [store.save_run(record(final_val_acc=v)) for v in (0.25, 0.75)]
    buf = io.StringIO()
    assert store.export_csv(buf, include_history=True) == 2
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [float(r["final_val_acc"]) for r in rows] == [0.75, 0.25]
    assert "history" in rows[0] and '"loss": 2.3' in rows[0]["history"]
    path = tmp_path / "runs.csv"
    assert store.export_csv(path, run_ids=[ids[0]]) == 1
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 1 and rows[0]["id"] == str(ids[0]) and "history" not in rows[0]


def test_default_path_follows_environment(tmp_path, monkeypatch, tinytl_home):
    assert default_db_path() == tinytl_home / "results.sqlite"
    monkeypatch.setenv(ENV_DB, str(tmp_path / "elsewhere.sqlite"))
    assert ResultsStore().path == tmp_path / "elsewhere.sqlite"


def _writer(path: str, tag: str, n: int, start) -> None:
    import traceback

    try:
        start.wait(60)
        store = ResultsStore(path)
        for i in range(n):
            store.save_run(record(dataset=tag, seed=i, history=[{"step": k} for k in range(200)]))
    except BaseException:
        with open(f"{path}.{tag}.err", "w") as fh:  # the parent shows why a child failed
            fh.write(traceback.format_exc())
        raise


def test_two_processes_writing_at_once_lose_nothing(tmp_path, monkeypatch):
    # Spawned children re-run the parent's __main__ by its path; after an AppTest in this process that is
    # app.py, which must not run in a writer: children import this module by name instead.
    main = sys.modules["__main__"]
    monkeypatch.delattr(main, "__file__", raising=False)
    monkeypatch.setattr(main, "__spec__", None, raising=False)
    path = str(tmp_path / "shared.sqlite")
    ctx = mp.get_context("spawn")  # no torch state forked into the children
    start = ctx.Barrier(2)  # both children begin inserting at the same moment
    procs = [ctx.Process(target=_writer, args=(path, tag, 25, start)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    errors = "".join(p.read_text() for p in tmp_path.glob("*.err"))
    assert [p.exitcode for p in procs] == [0, 0], errors
    store = ResultsStore(path)
    runs = store.list_runs()
    assert len(runs) == 50 and len({r["id"] for r in runs}) == 50
    for tag in ("a", "b"):
        assert sorted(r["seed"] for r in runs if r["dataset"] == tag) == list(range(25))
        assert all(len(r["history"]) == 200 for r in runs if r["dataset"] == tag)


# ------------------------------------------------------------------------------------------ migration
SCHEMA_1 = (  # the table the first version (schema 1) created, verbatim
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, "
    "message TEXT, backbone TEXT NOT NULL, mode TEXT NOT NULL, dataset TEXT NOT NULL, num_classes "
    "INTEGER, n_train INTEGER, n_val INTEGER, skipped_files INTEGER, resolution INTEGER, batch_size "
    "INTEGER, optimizer TEXT, lr REAL, label_smoothing REAL, seed INTEGER, steps_planned INTEGER, "
    "steps_done INTEGER, epochs_done REAL, device TEXT, pretrained INTEGER, pretrained_loaded "
    "INTEGER, n_trainable INTEGER, n_total INTEGER, final_val_acc REAL, final_val_loss REAL, "
    "best_val_acc REAL, final_train_acc REAL, weights_bytes INTEGER, grads_optimizer_bytes INTEGER, "
    "activations_necessary_bytes INTEGER, activations_stock_bytes INTEGER, total_modelled_bytes "
    "INTEGER, activations_measured_bytes INTEGER, total_measured_bytes INTEGER, setup_time_s REAL, "
    "train_time_s REAL, eval_time_s REAL, total_time_s REAL, images_per_s REAL, started_at TEXT, "
    "ended_at TEXT, config_json TEXT, history_json TEXT, memory_json TEXT, versions_json TEXT, CHECK "
    "(status IN ('finished', 'cancelled', 'failed')))"
)
# A run as the first version wrote it: its memory JSON held every figure of training_memory_figures, the
# seven of them with columns filled, the two measured stock / engine figures only in the JSON.
SCHEMA_1_MEMORY = {
    "weights_bytes": 9e6,
    "grads_optimizer_bytes": 1e6,
    "activations_necessary_bytes": 2e6,
    "activations_stock_bytes": 20e6,
    "total_modelled_bytes": 13e6,
    "activations_measured_bytes": 2.1e6,
    "total_measured_bytes": 13.5e6,
    "activations_measured_stock_bytes": 19.5e6,
    "activations_measured_engine_bytes": 2.1e6,
}
SCHEMA_1_COLUMNS = (
    "weights_bytes",
    "grads_optimizer_bytes",
    "activations_necessary_bytes",
    "activations_stock_bytes",
    "total_modelled_bytes",
    "activations_measured_bytes",
    "total_measured_bytes",
)


def _schema_1_database(path) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("BEGIN IMMEDIATE")
    con.execute(SCHEMA_1)
    con.execute("PRAGMA user_version = 1")
    con.execute("COMMIT")
    values = {
        "status": "finished",
        "message": "",
        "backbone": "mobilenetv2_050",
        "mode": "bias",
        "dataset": "digits",
        "num_classes": 10,
        "resolution": 32,
        "batch_size": 4,
        "optimizer": "adam",
        "lr": 1e-3,
        "steps_done": 3,
        "pretrained": 1,
        "pretrained_loaded": 0,
        "n_trainable": 1234,
        "final_val_acc": 0.5,
        "best_val_acc": 0.6,
        "total_time_s": 2.5,
        "images_per_s": 7.25,
        "started_at": "2025-01-01T00:00:00+00:00",
        **{k: int(SCHEMA_1_MEMORY[k]) for k in SCHEMA_1_COLUMNS},
        "config_json": json.dumps({"backbone": "mobilenetv2_050"}),
        "memory_json": json.dumps(SCHEMA_1_MEMORY),
        "history_json": json.dumps([{"kind": "step", "step": 1, "loss": 2.0}]),
        "versions_json": None,
    }
    con.execute(
        f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
        list(values.values()),
    )
    con.execute(
        "INSERT INTO runs (status, backbone, mode, dataset) VALUES (?, ?, ?, ?)",
        ("failed", "resnet18", "full", "digits"),
    )
    con.close()


def test_a_schema_1_database_opens_lists_and_shows_its_runs(tmp_path):
    path = tmp_path / "old.sqlite"
    _schema_1_database(path)
    store = ResultsStore(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        table = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    # Rebuilt for schema 3 (the new status check): today's columns in today's order.
    assert table == [RUN.id, *COLUMNS, "config_json", "history_json", "memory_json", "versions_json"]
    failed, old = store.list_runs()
    assert old["status"] is RunStatus.FINISHED and old["history"][0]["loss"] == 2.0
    assert old[MEMORY.total_modelled_bytes] == 13_000_000
    # The columns schema 2 added are filled from the run's memory JSON; a run without one leaves them empty.
    assert old[MEMORY.activations_measured_stock_bytes] == 19_500_000
    assert old[MEMORY.activations_measured_engine_bytes] == 2_100_000
    assert failed[MEMORY.activations_measured_stock_bytes] is None and failed["memory"] is None
    # Schema 4's settings columns come from each run's stored configuration (what it ran with if absent).
    assert old[RUN.weight_bits] == failed[RUN.weight_bits] == 32 and old[RUN.group_norm] is False
    assert store.get_run(old[RUN.id]) == old
    frame = run_table([old], (RUN.id, RUN.mode, RUN.final_val_acc, MEMORY.activations_measured_stock_bytes))
    assert frame.to_dict("records") == [
        {"id": old[RUN.id], "mode": "bias", "val acc %": 50.0, "act. stock measured MB": 19.5}
    ]
    # The migrated store takes new runs, and opening it again changes nothing.
    new = store.save_run(record())
    assert ResultsStore(path).count() == 3 and ResultsStore(path).get_run(new)["mode"] == "bias"
    buffer = io.StringIO()
    assert store.export_csv(buffer) == 3
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert rows[2][MEMORY.activations_measured_stock_bytes] == "19500000"


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite"
    with sqlite3.connect(path) as con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ValueError, match="newer TinyTL Lab"):
        ResultsStore(path)


def test_the_store_keeps_only_runs_that_ended(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    for status in RunStatus:
        if status.ended:
            assert store.get_run(store.save_run(record(status=status)))["status"] is status
        else:
            with pytest.raises(ValueError, match="must be one of finished, cancelled, failed, diverged"):
                store.save_run(record(status=status))
    with sqlite3.connect(store.path) as con, pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        con.execute("INSERT INTO runs (status, backbone, mode, dataset) VALUES ('running', 'a', 'b', 'c')")


# ---------------------------------------------------------------------------------------- run tables
def test_run_table_converts_units_rounds_and_labels():
    runs = [
        {
            RUN.id: 2,
            RUN.status: RunStatus.CANCELLED,
            RUN.final_val_acc: None,
            MEMORY.total_modelled_bytes: None,
            RUN.total_time_s: 12.3456,
            RUN.images_per_s: 3.14159,
        },
        {
            RUN.id: 1,
            RUN.status: "finished",
            RUN.final_val_acc: 0.83333,
            MEMORY.total_modelled_bytes: 12_345_678,
            RUN.total_time_s: 1.0,
            RUN.images_per_s: 10.0,
            "x": 1,
        },
    ]
    columns = (
        RUN.id,
        RUN.status,
        RUN.final_val_acc,
        MEMORY.total_modelled_bytes,
        RUN.total_time_s,
        RUN.images_per_s,
    )
    frame = run_table(runs, columns)
    assert list(frame.columns) == ["id", "status", "val acc %", "total modelled MB", "time s", "images/s"]
    assert list(frame["status"]) == ["cancelled", "finished"] and type(frame["status"][0]) is str
    assert pd.isna(frame["val acc %"][0]) and frame["val acc %"][1] == 83.3  # fractions in %, 1 decimal
    assert pd.isna(frame["total modelled MB"][0]) and frame["total modelled MB"][1] == 12.35  # MB, 2
    assert list(frame["time s"]) == [12.3, 1.0] and list(frame["images/s"]) == [3.1, 10.0]
    keyed = run_table(runs, columns, headers=False, digits=2)
    assert list(keyed.columns) == [
        "id",
        "status",
        "final_val_acc_pct",
        "total_modelled_MB",
        "total_time_s",
        "images_per_s",
    ]
    assert list(keyed["total_time_s"]) == [12.35, 1.0] and keyed["final_val_acc_pct"][1] == 83.33
    assert run_headers(columns)["total_modelled_MB"] == "total modelled MB"
    assert run_table([], columns).empty and list(run_table([], columns).columns) == list(frame.columns)
    with pytest.raises(KeyError, match="no quantity 'accuracy'"):
        run_table(runs, ("accuracy",))


def test_a_schema_2_database_is_rebuilt_to_accept_diverged_runs(tmp_path):
    """Schema 2's CHECK allowed finished/cancelled/failed only; SQLite cannot alter a CHECK, so opening it
    rebuilds the table: every run kept with its id, the id sequence kept (a deleted id is not reused)."""
    path = tmp_path / "v2.sqlite"
    _schema_1_database(path)
    con = sqlite3.connect(path, isolation_level=None)
    for name in (MEMORY.activations_measured_stock_bytes, MEMORY.activations_measured_engine_bytes):
        con.execute(f"ALTER TABLE runs ADD COLUMN {name} INTEGER")
    con.execute("INSERT INTO runs (status, backbone, mode, dataset) VALUES ('failed', 'x', 'full', 'd')")
    con.execute("DELETE FROM runs WHERE id = 3")  # the sequence stays at 3
    con.execute("PRAGMA user_version = 2")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO runs (status, backbone, mode, dataset) VALUES ('diverged', 'x', 'f', 'd')")
    con.close()
    store = ResultsStore(path)
    assert [r[RUN.id] for r in store.list_runs()] == [2, 1]
    assert store.get_run(1)[MEMORY.total_modelled_bytes] == 13_000_000
    new = store.save_run(record(status=RunStatus.DIVERGED, message="the loss exploded"))
    assert new == 4 and store.get_run(new)["status"] is RunStatus.DIVERGED
    assert store.list_runs(status="diverged")[0][RUN.id] == 4
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 4
        (sql,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()
        assert "'diverged'" in sql and "runs_rebuild" not in sql
        assert [
            n
            for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if n.startswith("runs")
        ] == ["runs"]
    assert ResultsStore(path).count() == 3  # opening again changes nothing


# ------------------------------------------------------------------------------------------ damaged rows
@pytest.mark.parametrize(
    ("column", "damage"),
    [
        ("config_json", "'{bad'"),  # not JSON
        ("history_json", "'[{\"step\": 1'"),  # cut short
        ("memory_json", "'[1, 2]'"),  # JSON of the wrong kind
        ("versions_json", "x'ff00'"),  # a blob that is not even text
        ("steps_done", "'many'"),  # text in a number column: tables cannot convert it
    ],
)
def test_a_damaged_field_never_hides_runs_or_blocks_their_delete(tmp_path, capsys, caplog, column, damage):
    """The class: one field damaged outside the app (here by hand) reads as empty and is named; every other
    run and the rest of its own run still list, show, export and delete (``runs`` failed for all of them
    with a JSON error, ``runs --delete`` too)."""
    from tinytl_core.cli import main
    from tinytl_core.results import DAMAGED

    path = tmp_path / "r.sqlite"
    store = ResultsStore(path)
    ids = [store.save_run(record(seed=i)) for i in range(3)]
    with sqlite3.connect(path) as con:
        con.execute(f"UPDATE runs SET {column} = {damage} WHERE id = ?", (ids[1],))
    con.close()
    field = column.removesuffix("_json")
    runs = store.list_runs()
    assert [r[RUN.id] for r in runs] == ids[::-1] and all(DAMAGED not in r for r in (runs[0], runs[2]))
    damaged = store.get_run(ids[1])
    assert damaged[DAMAGED] == [field] and damaged[field] is None and damaged[RUN.seed] == 1
    assert damaged["config" if field != "config" else "history"] is not None  # the rest reads
    assert f"run {ids[1]} in {path}: stored {field} is damaged" in caplog.text
    assert store.export_csv(io.StringIO(), include_history=True) == 3
    assert main(["runs", "--db", str(path)]) == 0
    assert "3 run(s)" in capsys.readouterr().out
    assert main(["runs", "--db", str(path), "--show", str(ids[1])]) == 0
    assert json.loads(capsys.readouterr().out)[DAMAGED] == [field]
    # Undo of a delete puts it back (the note is not a field), then it deletes for good.
    restored = store.save_run({k: v for k, v in damaged.items() if k != RUN.id})
    assert DAMAGED not in store.get_run(restored)
    assert main(["runs", "--db", str(path), "--delete", str(ids[1])]) == 0
    assert capsys.readouterr().out == f"deleted run {ids[1]}\n" and store.count() == 3


def test_an_older_database_with_a_damaged_run_still_migrates(tmp_path):
    """Migration fills new columns from each run's JSON: a damaged one gets the defaults, not a crash that
    would make the whole database unopenable."""
    path = tmp_path / "old.sqlite"
    _schema_1_database(path)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE runs SET config_json = '{bad', memory_json = 'nope' WHERE status = 'finished'")
        con.execute("UPDATE runs SET config_json = '{\"weight_bits\": \"eight\"}' WHERE status = 'failed'")
    con.close()
    failed, old = ResultsStore(path).list_runs()
    assert old["damaged"] == ["config", "memory"] and old[RUN.weight_bits] == 32
    assert old[MEMORY.activations_measured_stock_bytes] is None and old["history"][0]["loss"] == 2.0
    assert failed[RUN.weight_bits] == 32 and "damaged" not in failed
