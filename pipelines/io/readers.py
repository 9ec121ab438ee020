"""Beam sources that keep every record's position: CSV / JSONL lines, Parquet rows, TFRecords.

Dead letters must say where a bad record is, so each source yields the file and the record's
position with the record:

- CSV / JSONL (:class:`ReadSourceLines`): the byte offset of the line. Splittable like Beam's
  text source (a split starting inside a line begins at the next line). A UTF-8 byte order mark
  at the start of a file is not part of its first record. A CSV record whose quoted field holds
  a line break (RFC 4180) continues on the next lines (up to ``MAX_CSV_RECORD_LINES`` /
  ``MAX_CSV_RECORD_BYTES``; a quote never closed costs only its own line); only a quoted line
  break that straddles a split boundary of a file larger than the runner's split size (64 MiB on
  the Direct runner) is not joined.
- Parquet (:class:`ReadSourceLines` on ``*.parquet``): the 0-based row index in the file, read
  with pyarrow one row group at a time (one reader per file; Beam's ``ReadFromParquet`` does not
  expose file names or row indices). A row group that Python cannot convert (a ``timestamp[s]``
  beyond year 9999 raises OverflowError) is converted row by row, and each row that fails is one
  :class:`UnconvertibleRow` (a dead letter downstream) instead of failing the job.
- TFRecord (:class:`ReadTFRecordsWithPositions`): the record's byte offset (in the uncompressed
  stream for ``.gz``), with both CRC32C checksums verified. A record whose length or data fails
  its checksum, or a file that ends inside a record (truncated, or a gzip stream cut short), yields
  one error entry for the rest of that file instead of failing the job.
"""

from __future__ import annotations

import csv
import struct
import zlib
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import filebasedsource
from apache_beam.io.filesystem import CompressionTypes


BOM = b"\xef\xbb\xbf"
MAX_CSV_RECORD_BYTES = 1 << 20  # A quoted field may span lines up to this record size ...
MAX_CSV_RECORD_LINES = 1000  # ... and this many lines.


class RawLine(NamedTuple):
    """One input record before parsing: a CSV / JSONL line, or a Parquet row (``row`` set)."""

    source: str
    path: str
    offset: int  # byte offset of the line's first byte in the file; for Parquet, the 0-based row index
    header: tuple[str, ...] | None  # CSV only
    data: bytes  # the line (empty for Parquet)
    row: dict | None = None  # Parquet only: the row's values (or Unreadable for the rest of a bad file)

    @property
    def position(self) -> str:
        """``path@byte_offset`` of the line start (``tail -c +$((offset + 1)) path | head -1`` shows
        it); ``path@row_index`` for Parquet rows."""
        return f"{self.path}@{self.offset}"


def _lossy(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _quote_state(record: bytes) -> str:
    """``"open"`` when ``record`` ends inside a quoted CSV field, ``"malformed"`` when a quoted
    field closes and is followed by text, else ``"closed"``, by the csv module's own rules (a quote
    opens a field only at its start; ``""`` escapes; a quote inside an unquoted field is text)."""
    if b'"' not in record:
        return "closed"
    try:
        next(csv.reader([_lossy(record)], strict=True), None)
    except csv.Error as error:
        return "open" if "unexpected end of data" in str(error) else "malformed"
    return "closed"


def _rest_of_record(f, first: bytes) -> bytes:
    """``first`` (a CSV line ending inside a quoted field) joined with the following lines until
    the quote closes. When it does not close properly (after ``MAX_CSV_RECORD_LINES`` lines or
    ``MAX_CSV_RECORD_BYTES``, at the end of the file, or followed by text: a stray quote), ``first``
    is the record on its own (rejected or parsed downstream) and reading resumes on the next
    line, so one stray quote costs one record, not the rest of the file."""
    resume = f.tell()
    parts, size = [first], len(first)
    while len(parts) < MAX_CSV_RECORD_LINES and size < MAX_CSV_RECORD_BYTES:
        more = f.readline()  # The quoted field goes on: the record is not over yet.
        if not more:
            break
        parts.append(more)
        size += len(more)
        if b'"' in more:
            state = _quote_state(b"".join(parts))
            if state == "closed":
                return b"".join(parts)
            if state == "malformed":
                break
    f.seek(resume)
    return first


class _LinesWithOffsets(filebasedsource.FileBasedSource):
    """A splittable source of ``(path, byte offset, CSV header or None, line bytes)``.

    Splitting follows Beam's text source: a split starting inside a line begins at the next line,
    so every line is read exactly once, by the split its first byte belongs to. CSV files (by
    extension) read their header line from the file start in every split and skip it.
    """

    def __init__(self, pattern: str, batch_size: int | None = None):
        super().__init__(pattern, compression_type=CompressionTypes.UNCOMPRESSED, splittable=True)
        self._batch_size = batch_size

    def read_records(self, file_name, offset_range_tracker):
        return _batched(self._lines(file_name, offset_range_tracker), self._batch_size)

    def _lines(self, file_name, offset_range_tracker):
        is_csv = file_name.lower().endswith(".csv")
        start = offset_range_tracker.start_position()
        with self.open_file(file_name) as f:
            header = None
            position = 0
            if is_csv:
                first = f.readline()
                header = tuple(next(csv.reader([_lossy(first.rstrip(b"\r\n")).lstrip("\ufeff")]), []))
                position = len(first)
            if start > position:
                f.seek(start - 1)
                position = start - 1 + len(f.readline())  # finish the line that straddles the split start
            else:
                f.seek(position)
            while offset_range_tracker.try_claim(position):
                line = f.readline()
                if not line:
                    break
                if is_csv and _quote_state(line) == "open":
                    line = _rest_of_record(f, line)
                data = line.rstrip(b"\r\n")
                if position == 0 and data.startswith(BOM):
                    data = data[len(BOM):]
                if data.strip():
                    yield file_name, position, header, data, None
                position += len(line)


class Unreadable(NamedTuple):
    """Stands for the rest of a file that cannot be read (a dead letter downstream)."""

    reason: str


class UnconvertibleRow(NamedTuple):
    """Stands for one Parquet row whose values Python cannot hold (a dead letter downstream)."""

    reason: str


def _row_group_rows(table) -> list:
    """The rows of one pyarrow table as dicts; a row that cannot be converted is an
    :class:`UnconvertibleRow` naming the error (the other rows are unaffected)."""
    try:
        return table.to_pylist()
    except (OverflowError, ValueError, TypeError, ArithmeticError):
        rows = []
        for index in range(table.num_rows):
            try:
                rows.extend(table.slice(index, 1).to_pylist())
            except (OverflowError, ValueError, TypeError, ArithmeticError) as error:
                rows.append(UnconvertibleRow(f"a value of this row cannot be converted: "
                                             f"{type(error).__name__}: {str(error)[:300]}"))
        return rows


class _ParquetRows(filebasedsource.FileBasedSource):
    """``(path, row index, None, b"", row dict)`` for every row of the matching Parquet files; a
    file that cannot be read (truncated, not Parquet) yields one :class:`Unreadable` for its rest."""

    def __init__(self, pattern: str, batch_size: int | None = None):
        super().__init__(pattern, compression_type=CompressionTypes.UNCOMPRESSED, splittable=False)
        self._batch_size = batch_size

    def read_records(self, file_name, range_tracker):
        return _batched(self._rows(file_name, range_tracker), self._batch_size)

    def _rows(self, file_name, range_tracker):
        import pyarrow.parquet as pq

        if not range_tracker.try_claim(range_tracker.start_position()):
            return
        index = 0
        try:
            with self.open_file(file_name) as f:
                parquet = pq.ParquetFile(f)
                for group in range(parquet.num_row_groups):
                    for row in _row_group_rows(parquet.read_row_group(group)):
                        yield file_name, index, None, b"", row
                        index += 1
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError.
            yield file_name, index, None, b"", Unreadable(f"unreadable Parquet data from row {index} on: "
                                                          f"{type(error).__name__}: {error}")


def _batched(records, batch_size: int | None):
    """``records`` as they are, or as lists of up to ``batch_size`` of them."""
    if not batch_size:
        yield from records
        return
    block = []
    for record in records:
        block.append(record)
        if len(block) == batch_size:
            yield block
            block = []
    if block:
        yield block


class ReadSourceLines(beam.PTransform):
    """Reads every non-empty line (CSV, JSONL) or row (``*.parquet``) of the files matching
    ``pattern`` as :class:`RawLine` s, each with its position for dead letters.

    The line read is splittable (large files are read by all workers in parallel, no shuffle);
    Parquet is read one file per worker. With ``batch_size``, each element is a list of up to that
    many consecutive lines of one file (one Beam element per block instead of per line).
    """

    def __init__(self, source: str, pattern: str, batch_size: int | None = None):
        super().__init__()
        self._source, self._pattern, self._batch_size = source, pattern, batch_size

    def expand(self, pbegin):
        source = self._source
        reader = (_ParquetRows if self._pattern.lower().endswith(".parquet") else _LinesWithOffsets)(
            self._pattern, self._batch_size)
        read = pbegin | "Read" >> beam.io.Read(reader)
        if self._batch_size:
            return read | "Lines" >> beam.Map(lambda block: [RawLine(source, *fields) for fields in block])
        return read | "Lines" >> beam.MapTuple(lambda path, offset, header, data, row: RawLine(
            source, path, offset, header, data, row))


MAX_RECORD_BYTES = 1 << 30  # No valid input record is this large; a larger length is corruption.


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _TFRecordsWithOffsets(filebasedsource.FileBasedSource):
    """``(path, offset, record bytes, None)`` per record, or ``(path, offset, None, reason)`` once
    for an unreadable rest of a file (see the module docstring)."""

    def __init__(self, pattern: str):
        super().__init__(pattern, compression_type=CompressionTypes.AUTO, splittable=False)

    def read_records(self, file_name, range_tracker):
        if not range_tracker.try_claim(range_tracker.start_position()):
            return
        offset = 0
        with self.open_file(file_name) as f:
            while True:
                try:
                    head = f.read(12)
                    if not head:
                        return
                    if len(head) < 12:
                        yield file_name, offset, None, f"file ends inside a record header ({len(head)} of 12 bytes)"
                        return
                    length, length_crc = struct.unpack("<QI", head)
                    if masked_crc32c(head[:8]) != length_crc:
                        yield file_name, offset, None, "corrupt record length (checksum mismatch); rest of file skipped"
                        return
                    if length > MAX_RECORD_BYTES:
                        yield file_name, offset, None, (f"record length {length} exceeds {MAX_RECORD_BYTES} bytes; "
                                                        "rest of file skipped")
                        return
                    body = f.read(length + 4)
                    if len(body) < length + 4:
                        yield file_name, offset, None, (f"file ends inside a record ({len(body)} of {length + 4} "
                                                        "bytes; truncated file)")
                        return
                    data, (data_crc,) = body[:length], struct.unpack("<I", body[length:])
                    if masked_crc32c(data) != data_crc:
                        yield file_name, offset, None, "corrupt record data (checksum mismatch); rest of file skipped"
                        return
                except (EOFError, zlib.error, OSError) as error:
                    yield file_name, offset, None, f"unreadable compressed data ({type(error).__name__}: {error})"
                    return
                yield file_name, offset, data, None
                offset += 12 + length + 4


class ReadTFRecordsWithPositions(beam.PTransform):
    """TFRecord files (``.gz`` decompressed) -> ``(path, offset, record or None, error or None)``."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin):
        return pbegin | "Read" >> beam.io.Read(_TFRecordsWithOffsets(self._pattern))
