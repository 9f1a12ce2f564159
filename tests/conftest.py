"""Shared pytest setup: small, offline, deterministic."""

import os

# Tests never touch the network: pretrained-weight requests must fall back at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TINYTL_OFFLINE", "1")
# The app under test starts no worker processes: tests run the workers they need (tests/test_jobs.py).
os.environ.setdefault("TINYTL_WORKERS", "0")
os.environ.setdefault("TINYTL_PLANNER_WORKERS", "1")  # planner traces in-process (tests opt in)

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the tiny test models gain nothing from two, and OpenMP spinning on a shared 2-core
# machine made steps up to 50x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Every test starts seeded and on one thread, whatever an earlier test (e.g. `adapt --threads`) set.
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def tinytl_home(tmp_path, monkeypatch):
    """An isolated TinyTL data folder (results DB, dataset cache) for one test."""
    monkeypatch.setenv("TINYTL_HOME", str(tmp_path / "tinytl_home"))
    return tmp_path / "tinytl_home"
