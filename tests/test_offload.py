"""Helper processes beside the in-process runner (pipeline.offload): same results, same order, errors
raised, and a run with helpers writes what a run without them writes."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

from pipeline import offload
from pipeline.offload import OrderedOffload, auto_helpers
from pipeline.options import UsageError, parse_options


def slow_square(x: int) -> int:
    """Later items finish first where they are computed apart, which shows whether order is kept."""
    time.sleep(0.02 * (x % 3))
    if x == 13:
        raise ValueError("thirteen is refused")
    return x * x


def _wait_ready(monkeypatch):
    """Helpers take elements from the first one on (they start in about a second; until then the
    runner's thread computes everything, which would leave them nothing to do in a short test)."""

    def ready(pool):
        pool.wait_ready()
        return True

    monkeypatch.setattr(offload._Pool, "ready", property(ready))  # noqa: SLF001


def test_results_come_back_in_input_order_whoever_computed_them(monkeypatch):
    _wait_ready(monkeypatch)
    items = [x for x in range(40) if x != 13]
    off = OrderedOffload(slow_square, 1)
    try:
        got = [r for x in items for r in off.put(x)]
        got += list(off.drain())
    finally:
        off.close()
    assert got == [x * x for x in items]
    assert off.helped > 0 and off.here > 0 and off.helped + off.here == len(items)
    assert offload._Pool._instance is None  # noqa: SLF001 - its last user closed it


def test_an_error_in_a_helper_is_raised_at_its_place_in_the_order(monkeypatch):
    _wait_ready(monkeypatch)
    off = OrderedOffload(slow_square, 1)
    got = []
    try:
        with pytest.raises(ValueError, match="thirteen is refused"):
            for x in range(10, 20):
                got += list(off.put(x))
            got += list(off.drain())
    finally:
        off.close()
    assert got == [x * x for x in range(10, 13)][: len(got)]  # nothing after the failing element


def die_in_a_helper(x: int) -> int:
    """A helper process that ends abruptly on 3 (as one killed for memory would); here, a plain value."""
    import multiprocessing
    import os

    if x == 3 and multiprocessing.parent_process() is not None:
        os._exit(7)
    return x


def refuse_in_a_helper(x: int) -> int:
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        raise KeyError(f"no {x} in a helper")
    return x


def test_a_helper_that_dies_fails_its_element_with_a_clear_error_and_no_hang(monkeypatch):
    _wait_ready(monkeypatch)
    off = OrderedOffload(die_in_a_helper, 1)
    got = []
    try:
        with pytest.raises(RuntimeError, match=r"a helper process died \(exit code 7\).*--helper_processes 0"):
            for x in range(6):
                got += list(off.put(x))
            got += list(off.drain())
    finally:
        off.close()
    assert got == [0, 1, 2][: len(got)]
    assert offload._Pool._instance is None  # noqa: SLF001 - closed, its dead helper included


def test_a_helpers_exception_comes_back_with_where_it_was_raised(monkeypatch):
    _wait_ready(monkeypatch)
    off = OrderedOffload(refuse_in_a_helper, 1)
    try:
        with pytest.raises(KeyError, match="no 0 in a helper") as raised:
            list(off.put(0))
            list(off.drain())
    finally:
        off.close()
    assert off.helped == 1
    assert any("in helper process" in note and "refuse_in_a_helper" in note for note in raised.value.__notes__)


def test_elements_in_transit_stay_in_a_directory_only_this_user_can_enter_and_it_goes_with_the_pool(monkeypatch):
    import os
    import stat

    _wait_ready(monkeypatch)
    off = OrderedOffload(slow_square, 1)
    directory = off._pool._directory  # noqa: SLF001
    try:
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert [r for x in range(8) for r in off.put(x)] + list(off.drain()) == [x * x for x in range(8)]
        assert os.listdir(directory) == []  # each element's and result's file is removed once read
    finally:
        off.close()
    assert not os.path.exists(directory)


def test_an_element_that_cannot_travel_to_a_helper_is_computed_here(monkeypatch, caplog):
    import threading

    _wait_ready(monkeypatch)
    off = OrderedOffload(len, 1)
    items = [[1, 2], [threading.Lock()], [3], [4, 5, 6]]  # a lock cannot be pickled
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.offload"):
            got = [r for x in items for r in off.put(x)] + list(off.drain())
    finally:
        off.close()
    assert got == [2, 1, 1, 3]
    assert off.helped == 3 and off.here == 1
    assert "could not be handed to a helper" in caplog.text
    assert offload._Pool._instance is None  # noqa: SLF001


def preloaded(name: str) -> list[str]:
    """The modules of ``name``'s list in this process, once the preloading thread has had its chance."""
    import sys

    wanted = name.split(",")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(m in sys.modules for m in wanted if m != "no_such_module_here"):
        time.sleep(0.05)
    return sorted(m for m in wanted if m in sys.modules)


def test_helpers_import_the_preloaded_modules_beside_their_tasks_and_a_missing_one_is_left_to_the_task(monkeypatch):
    _wait_ready(monkeypatch)
    wanted = "colorsys,no_such_module_here"  # colorsys: nothing here imports it
    with offload.helpers_started(1, preload=("no_such_module_here", "colorsys")):
        off = OrderedOffload(preloaded, 1)
        try:
            got = list(off.put(wanted)) + list(off.drain())
        finally:
            off.close()
    assert off.helped == 1
    assert got == [["colorsys"]]  # imported in the helper, which lived on past the module it could not import
    assert offload._Pool._instance is None  # noqa: SLF001


def test_without_helpers_everything_is_computed_here():
    off = OrderedOffload(slow_square, 0)
    assert [r for x in range(5) for r in off.put(x)] + list(off.drain()) == [0, 1, 4, 9, 16]
    assert (off.helped, off.here) == (0, 5)
    off.close()


def test_helpers_are_used_only_where_they_can_help(monkeypatch):
    monkeypatch.setattr(offload.os, "cpu_count", lambda: 2)
    assert auto_helpers(None, single_process=True, input_bytes=40 << 20) == 1
    assert auto_helpers(None, single_process=True, input_bytes=1 << 20) == 0  # a small input: not worth a start
    assert auto_helpers(None, single_process=False, input_bytes=40 << 20) == 0  # the runner has its own workers
    assert auto_helpers(0, single_process=True, input_bytes=40 << 20) == 0
    assert auto_helpers(2, single_process=False, input_bytes=0) == 2
    monkeypatch.setattr(offload.os, "cpu_count", lambda: 1)
    assert auto_helpers(None, single_process=True, input_bytes=40 << 20) == 0
    with pytest.raises(UsageError, match="--helper_processes"):
        parse_options(["--dataset", "flights", "--output_dir", "/tmp/x", "--helper_processes", "-1"])


def _records(directory):
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(str(directory / "*.tfrecord.gz")))
    return sorted(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


def test_a_run_with_helpers_writes_what_a_run_without_them_writes(flights_out, tmp_path, monkeypatch, caplog):
    """``flights_out`` (conftest) ran without helpers (its input is small); the same rows (cancelled
    flights among them, which become dead letters) with a helper that takes elements from the start."""
    from pipeline.preprocess import run

    _wait_ready(monkeypatch)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="pipeline.offload"):
        run(["--dataset", "flights", "--input", str(flights_out.parent / "nyc_head.csv"), "--output_dir", str(out),
             "--helper_processes", "1"])
    helped = {m.group(1): int(m.group(2)) for m in
              (re.match(r"([\w.]+): (\d+) elements computed by helper", r.getMessage()) for r in caplog.records) if m}
    assert helped["ParseChunks.parse_chunk"] > 0
    assert helped["_AggregateRecords._computed"] > 0  # the window groups' de-duplication and averages
    assert helped["gzipped_examples"] > 0  # the raw examples
    assert helped["transformed_examples"] > 0  # the transform graph applied, and the transformed examples

    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, flights_out))
    for key in ("rows_read", "rows_written", "rows_rejected", "rows_excluded", "splits", "excluded"):
        assert ours[key] == theirs[key], key
    assert ours["rows_excluded"] > 0
    for split in ours["splits"]:
        assert _records(out / "raw" / split) == _records(flights_out / "raw" / split)
        assert _records(out / split) == _records(flights_out / split)
    for name in ("carrier", "origin", "dest"):
        assert (out / "transform_fn" / "assets" / name).read_bytes() == (
            flights_out / "transform_fn" / "assets" / name).read_bytes()

    def dead_letters(d):
        return sorted(line for p in (d / "excluded").glob("*.jsonl") for line in p.read_text().splitlines())

    assert dead_letters(out) == dead_letters(flights_out) and len(dead_letters(out)) == ours["rows_excluded"]
