"""Artefacts of the feature pipeline: batched TFRecord files, vocabularies, JSON documents, the
head/tail split.

Everything is written through Beam's ``FileSystems``, so the same code writes to local disk, GCS
or HDFS when the pipeline runs on a cluster.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Iterable, Mapping

import apache_beam as beam
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window
from apache_beam.utils import timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.readers import masked_crc32c

HEAD_FRACTION = 0.2


def write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` on any Beam filesystem, creating parent directories."""
    directory = path.rsplit("/", 1)[0]
    if directory and not FileSystems.exists(directory):
        FileSystems.mkdirs(directory)
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def vocabulary_text(counts: Iterable[tuple[str, int]]) -> str:
    """``value<TAB>count`` lines, most frequent first, ties by value (a deterministic order)."""
    ordered = sorted(counts, key=lambda vc: (-vc[1], vc[0]))
    for value, _ in ordered:
        if "\t" in value or "\n" in value or "\r" in value:
            raise ValueError(f"vocabulary values may not contain tabs or newlines, received {value!r}")
    return "".join(f"{value}\t{count}\n" for value, count in ordered)


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


def head_tail(frequencies: Mapping[str, int], head_fraction: float = HEAD_FRACTION) -> dict:
    """The head/tail split of the item corpus by train frequency.

    Head: the ``ceil(head_fraction * num_items)`` most frequent items (ties broken by item id),
    restricted to items with at least one train interaction. Tail: every other corpus item,
    including items never seen in training.

    Returns:
      ``{"head_fraction", "num_head_items", "num_tail_items", "head_min_frequency",
      "head_interaction_share", "head_items"}`` (head items sorted by id).
    """
    ranked = sorted(frequencies.items(), key=lambda kv: (-kv[1], kv[0]))
    size = math.ceil(head_fraction * len(ranked))
    head = [item for item, count in ranked[:size] if count > 0]
    total = sum(frequencies.values())
    head_total = sum(frequencies[item] for item in head)
    return {
        "head_fraction": head_fraction,
        "num_head_items": len(head),
        "num_tail_items": len(ranked) - len(head),
        "head_min_frequency": min((frequencies[i] for i in head), default=0),
        "head_interaction_share": head_total / total if total else 0.0,
        "head_items": sorted(head),
    }


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
