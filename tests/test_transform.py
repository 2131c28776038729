"""The transform stage: tensorflow-transform analyses train only and transforms every split (the
library's TransformDataset and encoder); the raw examples and raw schema read back as written."""

from __future__ import annotations

import pytest

from pipeline.datasets import flights
from pipeline.stages.tfxio import tfxio_for, to_record_batch

BASE = dict(carrier="AA", origin="JFK", dest="LAX", dep_delay=0.0, taxi_out=None, distance=1000.0, dep_lat=40.6,
            dep_lon=-73.8, arr_lat=33.9, arr_lon=-118.4, dep_time_local="2015-01-01 23:59", avg_dep_delay=None,
            avg_arr_delay=None, avg_taxi_out=None, ontime=1)
TRAIN = [
    {**BASE, "taxi_out": 10.0, "avg_dep_delay": 4.0},
    # the DST day (2015-03-08, a Sunday); no taxi-out: imputed, and its missing flag set
    {**BASE, "carrier": "DL", "dep_delay": 20.0, "dep_time_local": "2015-03-08 09:00", "avg_dep_delay": 8.0,
     "avg_arr_delay": 2.0, "ontime": 0},
    {**BASE, "carrier": "DL", "origin": "LGA", "dep_delay": -5.0, "taxi_out": 25.0},  # no window averages at all
]
TEST = [
    {**BASE, "carrier": "ZZ", "dest": "SFO", "dep_delay": 7.0},  # a carrier and airport unseen in train: OOV ids
    {**BASE, "dep_lat": 0.0, "dep_lon": 0.0, "dep_delay": 300.0},  # far outside train's range, still transformed
]


def _records(directory):
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(str(directory / "*.tfrecord.gz")))
    return list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """TRAIN and TEST through the pipeline's AnalyzeAndTransformSplits: OUT/{train,test}/."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    from pipeline.stages.tfxio import raw_schema
    from pipeline.stages.transform import AnalyzeAndTransformSplits

    tmp = tmp_path_factory.mktemp("transform")
    tfxio = tfxio_for(flights.SCHEMA)
    arrow_schema = tfxio.ArrowSchema()
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=str(tmp / "tmp")):
        batches = {split: p | f"Create{split}" >> beam.Create([to_record_batch(rows, arrow_schema)])
                   for split, rows in (("train", TRAIN), ("test", TEST))}
        _ = batches | AnalyzeAndTransformSplits(
            flights.preprocessing_fn, tfxio, raw_schema(flights.SCHEMA), str(tmp / "out"))
    return tmp / "out"


def test_transformed_examples_hold_the_train_splits_vocabularies_and_the_features(analysed):
    import tensorflow as tf

    for split, rows in (("train", TRAIN), ("test", TEST)):
        assert len(_records(analysed / split)) == len(rows)
    test = [tf.train.Example.FromString(r).features.feature for r in _records(analysed / "test")]
    n_carriers = sum(1 for _ in open(analysed / "transform_fn" / "assets" / "carrier"))
    assert n_carriers == 2 and test[0]["carrier_xf"].int64_list.value == [n_carriers]  # AA, DL; ZZ: the OOV id
    train = [tf.train.Example.FromString(r).features.feature for r in _records(analysed / "train")]
    assert [f["dep_weekday_xf"].int64_list.value[0] for f in train] == [3, 6, 3]
    assert [f["taxi_out_missing_xf"].float_list.value[0] for f in train] == [0.0, 1.0, 0.0]
    dep_delay = [f["dep_delay_xf"].float_list.value[0] for f in train]  # z-scores of 0, 20, -5 over train
    mean, std = 5.0, (((0 - 5) ** 2 + (20 - 5) ** 2 + (-5 - 5) ** 2) / 3) ** 0.5
    assert dep_delay == pytest.approx([(x - mean) / std for x in (0.0, 20.0, -5.0)], rel=1e-6)


def test_raw_examples_read_back_with_the_raw_schema_a_missing_value_absent(tmp_path, analysed):
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft

    from pipeline.stages.tfxio import raw_schema
    from pipeline.stages.transform import EncodeRawExamples, write_examples

    tfxio = tfxio_for(flights.SCHEMA)
    with beam.Pipeline() as p:
        _ = (p | beam.Create([to_record_batch(TRAIN, tfxio.ArrowSchema())])
             | EncodeRawExamples(raw_schema(flights.SCHEMA)) | write_examples("Write", str(tmp_path / "raw" / "part")))
    spec = tft.TFTransformOutput(str(analysed)).raw_feature_spec()
    assert set(spec) == set(flights.SCHEMA.raw_feature_spec())
    examples = [tf.train.Example.FromString(r).features.feature for r in _records(tmp_path / "raw")]
    assert [e["carrier"].bytes_list.value for e in examples] == [[b"AA"], [b"DL"], [b"DL"]]
    assert [list(e["taxi_out"].float_list.value) for e in examples] == [[10.0], [], [25.0]]
    assert [list(e["avg_dep_delay"].float_list.value) for e in examples] == [[4.0], [8.0], []]


def test_a_batch_the_graph_cannot_take_fails_the_run(analysed, tmp_path):
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    tfxio = tfxio_for(flights.SCHEMA)
    bad = to_record_batch([{**BASE, "dep_time_local": "not a time"}], tfxio.ArrowSchema())
    with pytest.raises(Exception, match="(?s)error occurred while trying to apply the transformation.*dep_time_local"):
        with beam.Pipeline() as p, tft_beam.Context(temp_dir=str(tmp_path / "tmp")):
            transform_fn = p | tft_beam.ReadTransformFn(str(analysed))
            _ = ((p | beam.Create([bad]), tfxio.TensorAdapterConfig()), transform_fn) | tft_beam.TransformDataset(
                output_record_batches=True)


def test_shards_are_tfrecords_byte_for_byte_as_beams_writer_frames_them(tmp_path):
    """The batch sink frames records exactly as Beam's WriteToTFRecord does (the same bytes,
    uncompressed), and its gzip shards read back through tf.data with every record, empty and
    binary ones included, in order within a batch."""
    import glob
    import gzip

    import apache_beam as beam
    import tensorflow as tf

    from pipeline.stages.shards import WriteExampleShards, framed

    records = [b"", b"a", b"\x00\xff" * 300, "é".encode(), b"x" * 70_000]
    with beam.Pipeline() as p:
        _ = p | beam.Create(records) | beam.io.WriteToTFRecord(str(tmp_path / "beam" / "part"), num_shards=1)
    (beams,) = glob.glob(str(tmp_path / "beam" / "part*"))
    assert framed(records) == open(beams, "rb").read()

    with beam.Pipeline() as p:
        _ = p | beam.Create([records, records[:2]]) | WriteExampleShards(str(tmp_path / "ours" / "part"))
    shards = sorted(glob.glob(str(tmp_path / "ours" / "part-*.tfrecord.gz")))
    assert shards and all(gzip.open(s).read(1) is not None for s in shards)
    got = [r.numpy() for r in tf.data.TFRecordDataset(shards, compression_type="GZIP")]
    assert sorted(got) == sorted(records + records[:2])
