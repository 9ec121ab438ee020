"""Beam sinks of the pipelines: batched TFRecord files, JSON documents, text files.

Everything is written through Beam's ``FileSystems``, so the same code writes to local disk, GCS
or HDFS when the pipeline runs on a cluster.
"""

from __future__ import annotations

import json
import logging
import struct

import apache_beam as beam
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window
from apache_beam.utils import timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.io.readers import masked_crc32c


def write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` on any Beam filesystem, creating parent directories."""
    directory = path.rsplit("/", 1)[0]
    if directory and not FileSystems.exists(directory):
        FileSystems.mkdirs(directory)
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


class WriteJson(beam.PTransform):
    """Writes the single element of a PCollection as a JSON file (sorted keys, indented)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, singleton):
        path = self._path

        def write(document):
            write_text(path, json.dumps(document, indent=1, sort_keys=True) + "\n")
            logging.info("wrote %s", path)

        return singleton | "Write" >> beam.Map(write)


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", masked_crc32c(length)) + record + struct.pack("<I", masked_crc32c(record))


class _TFRecordBatchSink(filebasedsink.FileBasedSink):
    """Beam's file sink (temporary files, atomic finalisation) writing lists of records as TFRecords."""

    def __init__(self, prefix: str, suffix: str, compression_type: str):
        super().__init__(prefix, coder=None, file_name_suffix=suffix, num_shards=0, shard_name_template=None,
                         mime_type="application/octet-stream", compression_type=compression_type)

    def write_record(self, file_handle, records: list[bytes]) -> None:
        file_handle.write(b"".join(tfrecord_frame(record) for record in records))


class _ListsPerBundle(beam.DoFn):
    """Elements -> lists of up to ``size`` of them (the rest of a bundle at its end)."""

    def __init__(self, size: int):
        self._size = size

    def start_bundle(self):
        self._block = []

    def process(self, element):
        self._block.append(element)
        if len(self._block) >= self._size:
            yield self._block
            self._block = []

    def finish_bundle(self):
        if self._block:
            yield WindowedValue(self._block, timestamp.MIN_TIMESTAMP, [window.GlobalWindow()])
            self._block = []


class WriteTFRecords(beam.PTransform):
    """Writes serialized records (one per element) like ``beam.io.WriteToTFRecord`` with gzip, in
    lists of up to ``batch_size`` per write call (one compression call per list, not per record)."""

    def __init__(self, prefix: str, suffix: str, batch_size: int = 10_000):
        super().__init__()
        self._prefix, self._suffix, self._batch_size = prefix, suffix, batch_size

    def expand(self, records):
        return (records | "Lists" >> beam.ParDo(_ListsPerBundle(self._batch_size))
                | "WriteLists" >> WriteTFRecordBatches(self._prefix, self._suffix))


class WriteTFRecordBatches(beam.PTransform):
    """Writes a PCollection of *lists* of serialized records to ``PREFIX-SSSSS-of-NNNNN SUFFIX``
    TFRecord files (gzip by default): the same files ``beam.io.WriteToTFRecord`` writes for the
    flattened records, at one Beam element per list."""

    def __init__(self, prefix: str, suffix: str, compression_type: str = CompressionTypes.GZIP):
        super().__init__()
        self._sink = _TFRecordBatchSink(prefix, suffix, compression_type)

    def expand(self, batches):
        return batches | "Write" >> beam.io.Write(self._sink)
