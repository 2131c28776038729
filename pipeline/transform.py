"""tensorflow-transform: analyze on the train split only, transform every split, write the graph.

Input per split is a PCollection of Arrow record batches of raw columns (the TFXIO path). Output:
``OUT/transform_fn``, ``OUT/transformed_metadata``, ``OUT/metadata`` (the raw schema, so that
``tft.TFTransformOutput(OUT).raw_feature_spec()`` works) and gzip TFRecord shards of transformed
tf.Examples per split.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import threading
from collections.abc import Callable, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.io import filebasedsink

from pipeline.arrow import encode_examples
from pipeline.example_encoding import Unsupported, encode_flat
from pipeline.offload import HelpedDoFn

logger = logging.getLogger(__name__)

TFRECORD_SUFFIX = ".tfrecord.gz"
_U64 = struct.Struct("<Q").pack


def framed_examples(record_batch) -> bytes:
    """A record batch's rows as serialized tf.Examples, already framed as consecutive TFRecords.

    The examples are encoded into one buffer with room left around each for its TFRecord header
    and trailer (:func:`pipeline.example_encoding.encode_flat`), which are then filled in place:
    the same bytes as ``frame_tfrecords(encode_examples(record_batch))``, which remains the path
    for the batches that encoder leaves to tfx-bsl. Headers and trailers are written by numpy
    rather than joined record by record; only the CRC32C of each record is a call a row (flights
    batches: about 0.8 µs a row, against 1.05 through ``frame_tfrecords`` and 3.7 with tfx-bsl's
    encoder; ``python -m bench.encode``).
    """
    try:
        buffer, starts, ends = encode_flat(record_batch, head=12, tail=4)
    except Unsupported:
        return frame_tfrecords(encode_examples(record_batch))
    return _frame_in_place(buffer, starts, ends)


def _frame_in_place(buffer, starts, ends) -> bytes:
    """``buffer`` (uint8) holds records at ``starts:ends`` with 12 free bytes before each and 4 after:
    fills in each record's TFRecord header (the length, u64 LE, and its masked CRC32C, computed once
    per distinct length) and trailer (the data's masked CRC32C, one call a record: Beam's CRC32C
    function takes bytes only) and returns the framed bytes."""
    if not len(starts):
        return b""
    crc32c = _crc32c()
    data = buffer.tobytes()
    lengths = ends - starts
    distinct, inverse = np.unique(lengths, return_inverse=True)
    length_crcs = np.array([crc32c(_U64(length)) for length in distinct.tolist()], np.uint32)
    header = np.empty((len(distinct), 12), np.uint8)
    header[:, :8] = distinct.astype("<u8").view(np.uint8).reshape(-1, 8)
    header[:, 8:] = _masked(length_crcs).astype("<u4").view(np.uint8).reshape(-1, 4)
    data_crcs = np.array([crc32c(data[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)], np.uint32)
    buffer[(starts - 12)[:, None] + np.arange(12)] = header[inverse]
    buffer[ends[:, None] + np.arange(4)] = _masked(data_crcs).astype("<u4").view(np.uint8).reshape(-1, 4)
    return buffer.tobytes()


def _crc32c():
    """Beam's CRC32C function, the one ``WriteToTFRecord`` frames records with."""
    from apache_beam.io import tfrecordio

    tfrecordio._default_crc32c_fn(b"")  # noqa: SLF001 - picks Beam's CRC32C implementation once
    return tfrecordio._default_crc32c_fn.fn  # noqa: SLF001


def _masked(crcs):
    """TFRecord's masking of CRC32C values (a uint32 numpy array; the sum wraps modulo 2**32)."""
    return ((crcs >> 15) | (crcs << 17)) + np.uint32(0xA282EAD8)


def frame_tfrecords(records) -> bytes:
    """``records`` (bytes) framed as consecutive TFRecords: length, masked CRC32C of the length,
    data, masked CRC32C of the data; byte for byte what Beam's ``_TFRecordUtil.write_record`` (the
    framing of ``WriteToTFRecord``) writes, with its CRC32C function (:func:`_frame_in_place`)."""
    records = list(records)
    lengths = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    ends = np.cumsum(lengths + 16) - 4
    starts = ends - lengths
    buffer = np.empty(int(ends[-1]) + 4 if len(records) else 0, np.uint8)
    for record, start, end in zip(records, starts.tolist(), ends.tolist(), strict=True):
        buffer[start:end] = np.frombuffer(record, np.uint8)
    return _frame_in_place(buffer, starts, ends)


# gzip level of the shards: level 1 compresses 4× faster than the default (6), for files about a third larger
# (flights examples: 1.41 MB per 4,096 rows -> 0.27 MB instead of 0.20 MB). At the default level compression was
# the largest single cost of writing the examples.
GZIP_LEVEL = 1
# With ISA-L (the ``isal`` package, a dependency), its level 1: the same gzip format, 3-4x faster again than zlib's
# level 1 (transformed flights examples: 1.8 GB/s against 0.41; raw 1.3 against 0.32) for files 3-5% larger.
# zlib's compression was about 2.5 s of CPU in a 1M-row run.
ISAL_LEVEL = 1


def gzip_member(data: bytes) -> bytes:
    """``data`` as one complete gzip member: ISA-L's compression where the ``isal`` package is
    installed, else zlib's (GZIP_LEVEL). Readers see the same gzip format either way."""
    try:
        from isal import isal_zlib
    except ImportError:
        import zlib

        return zlib.compress(data, GZIP_LEVEL, wbits=16 + zlib.MAX_WBITS)
    return isal_zlib.compress(data, ISAL_LEVEL, wbits=16 + isal_zlib.MAX_WBITS)


def gzipped_examples(record_batch) -> bytes:
    """A record batch's rows as serialized tf.Examples framed as TFRecords (:func:`framed_examples`),
    as one gzip member: what :func:`write_tfrecord_shards` writes."""
    return gzip_member(framed_examples(record_batch))


class _GzipMembersSink(filebasedsink.FileBasedSink):
    """``WriteToTFRecord``'s sink for elements that are gzip members of framed runs of TFRecords
    (:func:`gzipped_examples`), written one after the other: a gzip file may hold several members,
    read as one stream (RFC 1952; tf.data's and Beam's TFRecord readers and Python's gzip read them
    all, tested). Each batch is compressed by whoever computed it, the helper process or the runner's
    thread, instead of by a thread of the runner's process that competed with both for the two
    cores, and what travels back from a helper is the compressed batch (about a ninth of it)."""

    def open(self, temp_path):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        return _ShardFile(FileSystems.create(temp_path, self.mime_type, CompressionTypes.UNCOMPRESSED))

    def write_encoded_record(self, file_handle, value):
        file_handle.write(value)


class _ShardFile:
    """A shard being written: gzip members as they come; a shard given none still ends as a valid,
    empty gzip file (one empty member), as a gzip stream with nothing written would."""

    def __init__(self, raw):
        self._raw = raw
        self._written = False

    def write(self, member: bytes) -> None:
        if member:
            self._raw.write(member)
            self._written = True

    def close(self) -> None:
        try:
            if not self._written:
                self._raw.write(gzip_member(b""))
        finally:
            self._raw.close()


def write_tfrecord_shards(label: str, path_prefix: str):
    """PCollection[bytes] of gzip members (:func:`gzipped_examples`) -> gzip TFRecord shards holding
    the same records as ``beam.io.WriteToTFRecord`` would write from the examples one by one (one
    element per batch, instead of one per row through the write's per-element steps)."""
    sink = _GzipMembersSink(
        path_prefix,
        coder=beam.coders.BytesCoder(),
        file_name_suffix=TFRECORD_SUFFIX,
        compression_type=beam.io.filesystem.CompressionTypes.UNCOMPRESSED,
    )
    return label >> beam.io.Write(sink)


class _TransformGraph:
    """The transform graph loaded in this process: a raw record batch -> its transformed record batch,
    as tensorflow-transform's ``TransformDataset`` computes it (``_RunMetaGraphDoFn``: the raw
    columns as tensors by tfx-bsl's TensorAdapter, the saved model's transform function, the outputs
    back to Arrow by the converter of the transformed schema).

    One load per process and graph, kept by :func:`_graph` (TensorFlow's functions can be called
    from several threads, as tensorflow-transform's shared graph state is); the TensorAdapter, which
    holds conversion state, is one per thread.
    """

    def __init__(self, config, model_dir: str, schema_bytes: bytes):
        from tensorflow_metadata.proto.v0 import schema_pb2
        from tensorflow_transform import impl_helper
        from tensorflow_transform.saved import saved_transform_io_v2

        self.model_dir = model_dir
        self._config = config
        self._loader = saved_transform_io_v2.SavedModelLoader(model_dir)
        self._loader.finalize(set(config.tensor_representations), set(self._loader.structured_outputs))
        schema = schema_pb2.Schema()
        schema.ParseFromString(schema_bytes)
        self._converter = impl_helper.make_tensor_to_arrow_converter(schema)
        self._local = threading.local()

    def apply(self, record_batch):
        adapter = getattr(self._local, "adapter", None)
        if adapter is None:
            from tfx_bsl.tfxio.tensor_adapter import TensorAdapter

            adapter = self._local.adapter = TensorAdapter(self._config)
        try:
            outputs = self._loader.apply_transform_model(adapter.ToBatchTensors(record_batch, produce_eager_tensors=True))
            return self._converter.convert(outputs)
        except Exception as e:
            raise ValueError(
                f"applying the transform graph ({self.model_dir}) to a batch of {record_batch.num_rows} rows failed: {e}; "
                f"first row: {record_batch.slice(0, 1).to_pylist()}"
            ) from e


# What applying the transform graph imports (TensorFlow among them: about 3 s): helper processes import it
# beside their first tasks (pipeline.offload.helpers_started), long before the transform begins.
TRANSFORM_MODULES = (
    "tensorflow",
    "tensorflow_transform.impl_helper",
    "tensorflow_transform.saved.saved_transform_io_v2",
    "tfx_bsl.tfxio.tensor_adapter",
)
_GRAPHS: dict = {}  # (model directory, transformed schema) -> _TransformGraph: the last one loaded in this process
_GRAPHS_LOCK = threading.Lock()


def _graph(config, model_dir: str, schema_bytes: bytes) -> _TransformGraph:
    key = (model_dir, schema_bytes)
    with _GRAPHS_LOCK:
        graph = _GRAPHS.get(key)
        if graph is None:
            logger.info("loading the transform graph %s in process %d", model_dir, os.getpid())
            _GRAPHS.clear()  # a new run's graph: the last run's is not needed again
            graph = _GRAPHS[key] = _TransformGraph(config, model_dir, schema_bytes)
        return graph


def transformed_examples(config, item) -> bytes:
    """(transform_fn directory, transformed schema, raw record batch) -> the batch's transformed
    tf.Examples framed as TFRecords in one gzip member (:func:`gzipped_examples`): a pure function of
    its arguments, which a helper process computes as well as the runner's thread."""
    model_dir, schema_bytes, record_batch = item
    return gzipped_examples(_graph(config, model_dir, schema_bytes).apply(record_batch))


class _TransformAndEncode(HelpedDoFn, beam.DoFn):
    """Raw record batches -> their transformed examples framed as TFRecords and gzipped
    (:func:`transformed_examples`), one element per batch;
    the transform graph and schema are side inputs (the analysis's outputs). Where there are helper
    processes (:class:`pipeline.offload.HelpedDoFn`) they apply the graph beside the runner's thread,
    which otherwise does it alone: tensorflow-transform's ``TransformDataset`` runs it in the runner's
    thread, with the helper idle."""

    def __init__(self, tensor_adapter_config, helpers: int = 0):
        super().__init__()
        self._config = tensor_adapter_config
        self.helpers = helpers

    def helped_fn(self):
        return functools.partial(transformed_examples, self._config)

    def outputs_of(self, result):
        return (result,)

    def process(self, record_batch, model_dir, schema_bytes):
        yield from self.offer((model_dir, schema_bytes, record_batch))

    def finish_bundle(self):
        yield from self.drained()


class AnalyzeAndTransformSplits(beam.PTransform):
    """dict[split, PCollection[RecordBatch]] -> writes OUT/{split}/ and the transform graph.

    Must be applied inside ``tft_beam.Context``. Returns dict[split, PCollection[bytes]] of the
    transformed tf.Examples (already written), one element per record batch: its rows' serialized
    examples framed as TFRecords, in one gzip member (see :func:`gzipped_examples`).
    """

    def __init__(self, preprocessing_fn: Callable, tfxio, output_dir: str, helpers: int = 0):
        super().__init__()
        self._preprocessing_fn = preprocessing_fn
        self._tfxio = tfxio
        self._output_dir = output_dir
        self._helpers = helpers

    def expand(self, batches_by_split: Mapping[str, beam.PCollection]):
        import tensorflow_transform.beam as tft_beam
        from tensorflow_transform.tf_metadata import dataset_metadata

        config = self._tfxio.TensorAdapterConfig()
        transform_fn = (batches_by_split["train"], config) | "AnalyzeTrainData" >> tft_beam.AnalyzeDataset(
            self._preprocessing_fn
        )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(self._output_dir)
        raw_metadata = dataset_metadata.DatasetMetadata(self._tfxio._schema)  # noqa: SLF001 - the raw schema
        _ = raw_metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(
            os.path.join(self._output_dir, "metadata"), batches_by_split["train"].pipeline
        )
        # The transform applied by a DoFn of ours rather than tft_beam.TransformDataset, so that helper
        # processes can take part (_TransformAndEncode); same graph, same conversions, same examples.
        model_dir = beam.pvalue.AsSingleton(transform_fn[0])
        schema = beam.pvalue.AsSingleton(
            transform_fn[1].deferred_metadata | "TransformedSchema" >> beam.Map(lambda m: m.schema.SerializeToString())
        )
        outputs = {}
        for split, batches in batches_by_split.items():
            name = split.capitalize()
            encoded = batches | f"Transform{name}Data" >> beam.ParDo(
                _TransformAndEncode(config, self._helpers), model_dir, schema
            ).with_output_types(bytes)
            _ = encoded | write_tfrecord_shards(f"Write{name}Examples", os.path.join(self._output_dir, split, "part"))
            outputs[split] = encoded
        return outputs
