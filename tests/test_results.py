"""SQLite results store: round trip, CSV export, delete, concurrent writers, atomic writes."""

import csv
import io
import multiprocessing as mp
import sqlite3

import pytest

from tinytl_core.results import ENV_DB, ResultsStore, default_db_path


def record(**overrides):
    base = {
        "status": "finished", "backbone": "resnet10t", "mode": "bias", "dataset": "shapes", "num_classes": 10,
        "batch_size": 4, "lr": 1e-3, "seed": 0, "steps_done": 3, "final_val_acc": 0.5, "pretrained": False,
        "memory": {"weights_bytes": 100, "total_modelled_bytes": 1000, "activations_measured_bytes": 700,
                   "extra_key": 1},
        "history": [{"kind": "step", "step": 1, "loss": 2.3}, {"kind": "eval", "step": 3, "val_acc": 0.5}],
        "config": {"backbone": "resnet10t", "lr": 1e-3}, "versions": {"torch": "x"},
    }
    base.update(overrides)
    return base


def test_round_trip_filter_and_delete(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    a = store.save_run(record())
    b = store.save_run(record(status="cancelled", mode="full", message="cancelled at step 2"))
    run = store.get_run(a)
    assert run["history"][1]["val_acc"] == 0.5 and run["config"]["lr"] == 1e-3
    assert run["memory"]["extra_key"] == 1 and run["weights_bytes"] == 100
    assert run["total_modelled_bytes"] == 1000
    assert run["pretrained"] is False and run["final_val_acc"] == 0.5
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


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
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
