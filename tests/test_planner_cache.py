"""The planner's disk cache is keyed by versions, not by source hashes: a sample of profiles stored with
this version must equal the same profiles traced now, else cached figures are stale (bump TRACE_FORMAT).

Regenerate the sample after bumping :data:`tinytl_core.planner.profile.TRACE_FORMAT` (or PROFILE_FORMAT,
or upgrading torch/timm): ``python tests/test_planner_cache.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tinytl_core.planner.profile import (
    PROFILE_FORMAT,
    TRACE_FORMAT,
    MemoryProfile,
    ProfileCache,
    build_profile,
    cache_version,
)

SAMPLE = Path(__file__).parent / "data" / "planner_profiles.json"
DEMO = "demo_mobilenetv2_050"
REQUESTS = [  # (mode, group_norm): one per kind of figure (frozen, bias, branches, GroupNorm, sparse)
    ("last", False),
    ("bias", False),
    ("lite_residual+bias", False),
    ("full", True),
    ("sparse", False),
]
RESOLUTION = 32


def _traced() -> list[MemoryProfile]:
    return [build_profile(DEMO, RESOLUTION, mode, group_norm=gn) for mode, gn in REQUESTS]


def test_cache_key_is_versions_only(tmp_path):
    cache = ProfileCache(tmp_path)
    assert cache.version == cache_version()
    assert f"p{PROFILE_FORMAT}-t{TRACE_FORMAT}-" in cache.version
    other = ProfileCache(tmp_path)
    other.version = cache_version().replace(f"-t{TRACE_FORMAT}-", f"-t{TRACE_FORMAT + 1}-")
    assert other.key(DEMO, 32, "bias", False, 10) != cache.key(DEMO, 32, "bias", False, 10)


def test_stored_profiles_equal_fresh_traces():
    stored = json.loads(SAMPLE.read_text())
    if stored["version"] != cache_version():
        pytest.fail(
            f"the stored sample is of cache version {stored['version']}, this code is {cache_version()}: "
            "regenerate it with `python tests/test_planner_cache.py`"
        )
    fresh = _traced()
    for data, profile in zip(stored["profiles"], fresh):
        assert MemoryProfile.from_json(data) == profile, (
            f"{profile.mode} (GroupNorm {profile.group_norm}) traces differently from its cached profile "
            "of the same version: the figures' code changed, so bump TRACE_FORMAT in "
            "tinytl_core/planner/profile.py and regenerate the sample (`python tests/test_planner_cache.py`)"
        )


def test_cache_round_trip_and_parallel_fill(tmp_path, monkeypatch):
    """Profiles traced by worker processes, stored, and read back by a new cache equal fresh traces."""
    monkeypatch.setattr("tinytl_core.planner.profile.MIN_PARALLEL", {"fork": 2, "forkserver": 2, "spawn": 2})
    cache = ProfileCache(tmp_path)
    requests = [(DEMO, RESOLUTION, mode, gn, 10) for mode, gn in REQUESTS[:2]]
    seen = []
    assert cache.fill(requests, workers=2, progress=lambda done, total, r: seen.append((done, total))) == 2
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    again = ProfileCache(tmp_path)
    loaded = [again.get(b, r, m, group_norm=gn) for b, r, m, gn, _ in requests]
    assert (again.built, again.loaded) == (0, 2)
    assert loaded == [build_profile(DEMO, RESOLUTION, m, group_norm=gn) for m, gn in REQUESTS[:2]]


@pytest.mark.parametrize(
    "damage",
    [
        {"engine_lines": []},
        {"frozen_bytes": [1, 2]},
        {"engine_lines": [[5]]},
        {"stock_lines": [[10**400, 1]]},
        {"trainable_bytes": "12"},
        {"group_norm": "no"},
        {"resolution": 64},  # another configuration's profile under this one's name
    ],
)
def test_a_damaged_or_edited_profile_is_traced_again_not_served(tmp_path, damage):
    """Valid JSON with damaged fields was served: a profile without engine lines planned 6% low, another
    configuration's profile was served under this one's name, and others failed with nonsense errors."""
    cache = ProfileCache(tmp_path)
    fresh = cache.get(DEMO, RESOLUTION, "bias", group_norm=False)
    (file,) = tmp_path.glob("*.json")
    file.write_text(json.dumps({**json.loads(file.read_text()), **damage}))
    again = ProfileCache(tmp_path)
    assert again.get(DEMO, RESOLUTION, "bias", group_norm=False) == fresh
    assert (again.built, again.loaded) == (1, 0)


def test_explorer_reports_cached_on_disk_equal_fresh(tmp_path):
    from tinytl_core.planner.reports import ReportCache

    settings = {"resolution": RESOLUTION, "batch_size": 2, "modes": ["bias", "sparse"], "group_norm": True}
    cache = ReportCache(tmp_path)
    fresh = cache.reports(DEMO, **settings)
    assert isinstance(fresh["sparse"], str)  # sparse does not apply with GroupNorm: its reason is kept
    again = ReportCache(tmp_path)
    loaded = again.reports(DEMO, **settings)
    assert (again.built, again.loaded) == (0, 1)
    assert loaded["sparse"] == fresh["sparse"]
    pd.testing.assert_frame_equal(loaded["bias"].layers, fresh["bias"].layers)
    assert loaded["bias"].totals == fresh["bias"].totals
    assert again.reports(DEMO, **{**settings, "batch_size": 3})["bias"].totals.batch_size == 3  # own key
    for f in tmp_path.glob("*.json"):
        f.write_text("{damaged")  # a damaged file is traced again, not trusted
    third = ReportCache(tmp_path)
    assert third.reports(DEMO, **settings)["bias"].totals == fresh["bias"].totals and third.built == 1


if __name__ == "__main__":
    SAMPLE.parent.mkdir(exist_ok=True)
    doc = {"version": cache_version(), "profiles": [p.to_json() for p in _traced()]}
    SAMPLE.write_text(json.dumps(doc, indent=1) + "\n")
    print(
        f"wrote {len(doc['profiles'])} profiles of cache version {doc['version']} to {SAMPLE}",
        file=sys.stderr,
    )
