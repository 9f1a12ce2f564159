"""Start and stop ``streamlit run app.py`` headless on a free port: the one launcher the app benchmarks
(``app_speed.py``, ``classroom.py``) and the browser test (``tests/test_browser.py``) share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(
    home: Path, log: Path, *, cpus: set[int] | None = None, **env: str
) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on a free port, offline, with its data under ``home`` and its output in
    ``log``; ``cpus``: the cores it (and the worker processes it starts) may run on (None: any);
    ``env``: more environment variables (e.g. ``TINYTL_WORKERS="2"``). Returns the process and its URL at
    once (see :func:`wait_healthy`)."""
    port = free_port()
    environment = dict(os.environ, TINYTL_HOME=str(home), TINYTL_OFFLINE="1", HF_HUB_OFFLINE="1", **env)
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
            + ["--server.port", str(port), "--browser.gatherUsageStats", "false"]
            + ["--server.fileWatcherType", "none"],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120, log: Path | None = None) -> float:
    """Wait for the server's health check; the moment it answers. RuntimeError (with the end of ``log``)
    when the server exits first or does not answer in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return time.monotonic()
        except OSError:
            time.sleep(0.1)
    stop_app(proc)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"streamlit did not become healthy at {url}\n{tail}")


def stop_app(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Terminate the server, killing it if it has not exited after ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
