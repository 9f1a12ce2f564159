"""No server path on a page: :func:`tinytl_core.ui.errors.public_text` cuts every absolute path that a
message from another process or a library may carry to its last part, and keeps everything else."""

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytl_core.ui.errors import public_text

SEGMENT = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(SEGMENT, min_size=2, max_size=6),
    windows=st.booleans(),
    before=st.sampled_from(
        ["", "error: ", "No such file or directory: '", "cannot read ", "(", "failed at:", "file://", "file:"]
    ),
    after=st.sampled_from(["", "'", " (check the upload)", ")", ": permission denied"]),
)
def test_every_absolute_path_is_cut_to_its_last_part(parts, windows, before, after):
    path = ("C:\\" + "\\".join(parts)) if windows else "/" + "/".join(parts)
    if before.startswith("file:"):  # a file URI goes whole: file:///srv/x -> …/x (POSIX paths in URIs)
        path = "/" + "/".join(parts)
        path, before = before + path, ""
    shown = public_text(f"{before}{path}{after}")
    assert path not in shown
    for directory in parts[:-1]:  # no folder of the server's tree survives (as a path component)
        assert f"/{directory}/" not in shown and f"\\{directory}\\" not in shown
    assert shown == f"{before}…/{parts[-1]}{after}"


@pytest.mark.parametrize(
    "text",
    [
        "model demo_mobilenetv2_050 at 64 px, batch 8",
        "update ratio 1/8 of the output channels; loss 7e9/2",
        "weights from https://huggingface.co/timm/mobilenetv2_100.ra_in1k (offline)",
        "a relative name: uploads/set.zip",
    ],
)
def test_text_without_server_paths_is_unchanged(text):
    assert public_text(text) == text


def test_home_relative_and_missing_text():
    assert public_text("~/data/x.zip is gone") == "…/x.zip is gone"
    assert public_text(None) == ""


def test_pages_show_job_sweep_and_run_messages_without_server_paths(tmp_path):
    """The three places a page shows text written by another process: a job's error (Adapt), a run's
    stored message (Compare runs' table) and a sweep driver's reason (Sweep)."""
    from tinytl_core.adapt import AdaptConfig
    from tinytl_core.jobs import Job, JobState
    from tinytl_core.results import RUN
    from tinytl_core.sweeps.driver import DriverState, DriverStatus, write_status
    from tinytl_core.ui.jobs import JobView
    from tinytl_core.ui.runs import runs_frame
    from tinytl_core.ui.sweep import ray_sweep_status

    secret = "/srv/tinytl/home/uploads/9f3a/set.zip"
    config = AdaptConfig(backbone="demo_mobilenetv2_050", mode="bias", dataset="shapes", steps=2)
    job = Job(id=1, owner="me", config=config, state=JobState.FAILED, error=f"cannot open {secret}")
    assert JobView(job, None).error == "cannot open …/set.zip"

    frame = runs_frame([{"id": 1, "mode": "bias", "status": "failed", RUN.message: f"OSError: {secret}"}])
    assert frame[RUN.message].tolist() == ["OSError: …/set.zip"]

    path = tmp_path / "driver.json"
    failed = DriverStatus(sweep="s", pid=0, state=DriverState.FAILED, message=f"ray died: {secret}")
    write_status(path, failed)
    assert ray_sweep_status(path).message == "ray died: …/set.zip"
