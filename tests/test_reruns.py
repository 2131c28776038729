"""Reruns: --overwrite replaces the output; the same inputs give the same split and the same transform."""

from __future__ import annotations

import filecmp
import json

import pytest

from pipeline.preprocess import run
from tests.test_bad_input import _raw_rows


def _transformed_rows(out_dir):
    import tensorflow as tf

    rows = []
    for split in ("train", "valid", "test"):
        files = tf.io.gfile.glob(str(out_dir / split / "*.tfrecord.gz"))
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            f = tf.train.Example.FromString(r.numpy()).features.feature
            rows.append((split, tuple((k, tuple(getattr(f[k], f[k].WhichOneof("kind")).value)) for k in sorted(f))))
    return sorted(rows, key=lambda r: (r[0], [(k, [round(x, 4) if isinstance(x, float) else x for x in v]) for k, v in r[1]]))


def test_rerun_with_overwrite_gives_the_same_split_and_transform(flights_out, tmp_path):
    first = json.loads((flights_out / "manifest.json").read_text())
    source = first["inputs"][0]["path"]
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale-shard-of-an-old-run.tfrecord.gz").write_text("old")
    again = run(["--dataset", "flights", "--input", source, "--output_dir", str(out), "--overwrite"])
    assert not (out / "stale-shard-of-an-old-run.tfrecord.gz").exists()  # replaced, never mixed
    assert again["splits"] == first["splits"] and again["rejected"] == first["rejected"]
    assert _raw_rows(out) == _raw_rows(flights_out)
    # Analyzer partial sums may combine in another order: the same transform, to float32 rounding.
    again_rows, first_rows = _transformed_rows(out), _transformed_rows(flights_out)
    assert len(again_rows) == len(first_rows)
    for (split_a, a), (split_b, b) in zip(again_rows, first_rows, strict=True):
        assert split_a == split_b and [k for k, _ in a] == [k for k, _ in b]
        for (name, va), (_, vb) in zip(a, b, strict=True):
            assert va == pytest.approx(vb, rel=1e-6, abs=1e-6), name
    for vocab in ("carrier", "origin", "dest"):
        assert filecmp.cmp(out / "transform_fn" / "assets" / vocab, flights_out / "transform_fn" / "assets" / vocab,
                           shallow=False)
