"""The transform graph applied by the pipeline's own DoFn (``pipeline.transform._TransformAndEncode``,
which helper processes can share) writes what tensorflow-transform's ``TransformDataset`` writes, and a
batch the graph cannot take fails with a clear error."""

from __future__ import annotations

import pytest

from pipeline import flights
from pipeline.arrow import tfxio_for, to_record_batch

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
    """TRAIN and TEST through the pipeline's AnalyzeAndTransformSplits (no helpers): OUT/{train,test}/."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam

    from pipeline.transform import AnalyzeAndTransformSplits

    tmp = tmp_path_factory.mktemp("transform")
    tfxio = tfxio_for(flights.SCHEMA)
    arrow_schema = tfxio.ArrowSchema()
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=str(tmp / "tmp")):
        batches = {split: p | f"Create{split}" >> beam.Create([to_record_batch(rows, arrow_schema)])
                   for split, rows in (("train", TRAIN), ("test", TEST))}
        _ = batches | AnalyzeAndTransformSplits(flights.preprocessing_fn, tfxio, str(tmp / "out"))
    return tmp / "out"


def test_the_pipelines_transform_writes_what_tensorflow_transform_writes(analysed, tmp_path):
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform.beam as tft_beam

    from pipeline.transform import gzipped_examples, write_tfrecord_shards

    tfxio = tfxio_for(flights.SCHEMA)
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=str(tmp_path / "tmp")):
        transform_fn = p | tft_beam.ReadTransformFn(str(analysed))
        for split, rows in (("train", TRAIN), ("test", TEST)):
            batches = p | f"Create{split}" >> beam.Create([to_record_batch(rows, tfxio.ArrowSchema())])
            transformed, _ = ((batches, tfxio.TensorAdapterConfig()), transform_fn) | f"Transform{split}" >> (
                tft_beam.TransformDataset(output_record_batches=True))
            _ = (transformed | f"Encode{split}" >> beam.Map(lambda batch: gzipped_examples(batch[0]))
                 | write_tfrecord_shards(f"Write{split}", str(tmp_path / split / "part")))

    for split, rows in (("train", TRAIN), ("test", TEST)):
        ours, theirs = _records(analysed / split), _records(tmp_path / split)
        assert len(ours) == len(rows)
        assert ours == theirs, split
    test = [tf.train.Example.FromString(r).features.feature for r in _records(analysed / "test")]
    n_carriers = sum(1 for _ in open(analysed / "transform_fn" / "assets" / "carrier"))
    assert n_carriers == 2 and test[0]["carrier_xf"].int64_list.value == [n_carriers]  # AA, DL; ZZ: the OOV id
    train = [tf.train.Example.FromString(r).features.feature for r in _records(analysed / "train")]
    assert [f["dep_weekday_xf"].int64_list.value[0] for f in train] == [3, 6, 3]
    assert [f["taxi_out_missing_xf"].float_list.value[0] for f in train] == [0.0, 1.0, 0.0]


def test_a_batch_the_graph_cannot_take_fails_naming_the_graph_and_a_row(analysed):
    import gzip

    import tensorflow_transform as tft

    from pipeline.transform import transformed_examples

    tfxio = tfxio_for(flights.SCHEMA)
    schema = tft.TFTransformOutput(str(analysed)).transformed_metadata.schema.SerializeToString()
    model_dir = str(analysed / "transform_fn")
    good = to_record_batch(TEST, tfxio.ArrowSchema())
    assert len(gzip.decompress(transformed_examples(tfxio.TensorAdapterConfig(), (model_dir, schema, good)))) > 0
    bad = to_record_batch([{**BASE, "dep_time_local": "not a time"}], tfxio.ArrowSchema())
    with pytest.raises(ValueError, match=r"(?s)applying the transform graph \(.*transform_fn\) to a batch of 1 rows "
                                         r"failed: .*first row: .*not a time"):
        transformed_examples(tfxio.TensorAdapterConfig(), (model_dir, schema, bad))
