"""Shared helpers of the benchmarks: the machine and its load, child processes with their peak
memory, medians, and the time-shifted flights inputs.

The benchmarks run on a machine other jobs may share, so every figure is recorded together with
the load average before and after it, and each configuration is run several times (median).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
KAGGLE_SAMPLE = os.path.join(SHARED_DATA, "flights", "kaggle_2015-01-01_to_04.csv.gz")
SAMPLE_SPAN_DAYS = 4  # the kaggle sample covers 2015-01-01 .. 2015-01-04


# ---------------------------------------------------------------- the machine
def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict:
    """Cores, memory, CPU model, Python and the load now."""
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load_average()],
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- child processes and memory
def _tree_rss_bytes(root_pid: int) -> int:
    """Summed RSS of ``root_pid`` and all its descendants, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        pid, ppid, pages = int(name), int(fields[1]), int(fields[21])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = pages * page
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


class _TreeSampler(threading.Thread):
    """Samples a process tree's summed RSS every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, _tree_rss_bytes(self.pid))
            except Exception:  # noqa: BLE001 - a vanished process between listdir and open
                pass
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def run_child(cmd: Sequence[str], timeout_s: float, env: dict | None = None, cwd: str = REPO,
              log_path: str | None = None) -> dict:
    """Runs ``cmd`` bounded by ``timeout_s``; wall time, exit code, and peak memory two ways.

    ``max_rss_mib``: the largest single process among the child and its waited-for descendants
    (``getrusage(RUSAGE_CHILDREN)``, measured in a fresh wrapper process so earlier runs do not
    count). ``tree_rss_mib``: the peak of the summed RSS of the whole process tree, sampled every
    0.25 s (what multi-process runners really use together).

    ``cpu_user_s`` / ``cpu_sys_s`` / ``cpu_s``: the CPU time of the child and all its descendants,
    from ``getrusage(RUSAGE_CHILDREN)`` in the fresh wrapper. The wrapper makes itself a child
    subreaper (Linux ``prctl``), so a descendant whose parent left without waiting for it
    (``os._exit``) is handed to the wrapper and waited for there: its CPU time counts too.
    """
    wrapper = [sys.executable, "-c", _WRAPPER, json.dumps(list(cmd))]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    load_before = load_average()
    started = time.perf_counter()
    proc = subprocess.Popen(wrapper, stdout=subprocess.PIPE, stderr=out, cwd=cwd,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    sampler = _TreeSampler(proc.pid)
    sampler.start()
    try:
        stdout, _ = proc.communicate(timeout=timeout_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # our own session only
        stdout, _ = proc.communicate()
        rc = "timeout"
    wall = time.perf_counter() - started
    sampler.stop()
    if log_path:
        out.close()
    try:
        inner = json.loads(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        inner = {}
    return {
        "rc": inner.get("rc", rc) if rc == 0 else rc,
        "wall_s": round(wall, 2),
        "max_rss_mib": round(inner.get("max_rss_kb", 0) / 1024, 1),
        "cpu_user_s": inner.get("cpu_user_s"),
        "cpu_sys_s": inner.get("cpu_sys_s"),
        "cpu_s": round(inner["cpu_user_s"] + inner["cpu_sys_s"], 2) if "cpu_user_s" in inner else None,
        "tree_rss_mib": round(sampler.peak / 2**20, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_average()],
    }


# Runs the command as its child and prints its exit code, RUSAGE_CHILDREN max RSS and CPU time as
# JSON. As a child subreaper (PR_SET_CHILD_SUBREAPER = 36) it inherits orphaned descendants and waits
# for all of them before reading its children's usage, so none of their CPU time is lost.
_WRAPPER = r"""
import ctypes, json, os, resource, subprocess, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
except (OSError, AttributeError):
    pass
rc = subprocess.call(json.loads(sys.argv[1]), stdout=sys.stderr)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "max_rss_kb": u.ru_maxrss, "cpu_user_s": round(u.ru_utime, 3),
                  "cpu_sys_s": round(u.ru_stime, 3)}))
"""


def self_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- time-shifted flights inputs
def _read_sample(path: str) -> tuple[str, list[list[str]]]:
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return ",".join(header), list(reader)


def make_flights_input(n_rows: int, target_dir: str, sample: str = KAGGLE_SAMPLE) -> list[str]:
    """``n_rows`` kaggle-layout flights under ``target_dir``: the real sample, then copies shifted
    forward by k * 4 days (YEAR, MONTH, DAY and DAY_OF_WEEK rewritten) so windows and days stay
    realistic. One gzip CSV per copy (like BTS's per-period downloads); the last copy may be cut
    short. Reuses files already generated for the same size. Returns the file paths.
    """
    os.makedirs(target_dir, exist_ok=True)
    stamp = os.path.join(target_dir, f"done_{n_rows}.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            return json.load(f)
    header, rows = _read_sample(sample)
    names = header.split(",")
    iy, im, iday, idow = (names.index(c) for c in ("YEAR", "MONTH", "DAY", "DAY_OF_WEEK"))
    paths, written, k = [], 0, 0
    while written < n_rows:
        take = min(len(rows), n_rows - written)
        path = os.path.join(target_dir, f"flights_{n_rows}_copy{k:03d}.csv.gz")
        shift = dt.timedelta(days=k * SAMPLE_SPAN_DAYS)
        cache: dict[tuple[str, str, str], tuple[str, str, str, str]] = {}
        with gzip.open(path, "wt", newline="", compresslevel=1) as f:
            w = csv.writer(f, lineterminator="\n")
            f.write(header + "\n")
            for row in rows[:take]:
                key = (row[iy], row[im], row[iday])
                new = cache.get(key)
                if new is None:
                    d = dt.date(int(key[0]), int(key[1]), int(key[2])) + shift
                    new = cache[key] = (str(d.year), str(d.month), str(d.day), str(d.isoweekday()))
                row = list(row)
                row[iy], row[im], row[iday], row[idow] = new
                w.writerow(row)
        paths.append(path)
        written += take
        k += 1
    with open(stamp, "w") as f:
        json.dump(paths, f)
    return paths


def write_report(report: dict, path: str | None) -> None:
    """Writes a benchmark's report as JSON to ``path`` (its directory made), when a path is given."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
