"""Process-wide settings: the imports' objects frozen out of the cycle collector, once per process."""

import gc

from tinytl_core import runtime
from tinytl_core.planner import profile


def test_freeze_once_per_process(monkeypatch):
    monkeypatch.setattr(runtime, "_frozen", False)
    assert runtime.freeze_imported_objects() is True
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # PyTorch, timm and pandas alone make far more
    later = [object() for _ in range(10)], {"a": []}  # made after: must stay collectable
    assert runtime.freeze_imported_objects() is False
    assert gc.get_freeze_count() == frozen
    assert gc.is_tracked(later[1])


def test_planner_workers_freeze(monkeypatch):
    monkeypatch.setattr(runtime, "_frozen", False)
    monkeypatch.setattr(profile.torch, "set_num_threads", lambda n: None)  # this process keeps its threads
    profile._worker_init()
    assert runtime._frozen and gc.get_freeze_count() > 0
