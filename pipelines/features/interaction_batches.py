"""The feature pipeline's hot path in batches: blocks of input lines -> columns of interactions.

A Beam element costs a few microseconds of runner overhead (encoding at stage boundaries,
windowing, receivers) whatever it holds, which dominated the per-interaction pipeline. So the
interaction log is read in blocks of lines (:class:`pipelines.io.readers.ReadSourceLines` with
``batch_size``), and :class:`ParseInteractionBatches` turns each block into one
:class:`InteractionBatch` of columns, routing bad rows and unknown item ids to dead letters with
the same rules, reasons and positions as the per-record parsers: CSV blocks take a vectorised path
(one ``csv.reader`` pass, numpy number parsing) and every line it does not accept outright goes
through the per-record parser, which accepts it or names the reason. Downstream,
time cutoffs and example building work on these columns (:mod:`pipelines.features.splits`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from pipelines.features.item_corpus import unknown_item_dead_letter
from pipelines.io.records import (
    COUNTS_TAG, DEAD_LETTER_TAG, MAX_TIMESTAMP, MIN_TIMESTAMP, DeadLetter, Interaction, RawLine, RowError,
    bundle_count, parse_record, raw_text,
)

BATCH_LINES = 20_000  # Lines per block: large enough to amortise Beam's per-element cost.


class InteractionBatch(NamedTuple):
    """Accepted interactions of one block of input lines, as columns.

    Attributes:
      user_ids: [n] object array of str.
      item_ids: [n] object array of str (all in the item catalogue).
      timestamps: [n] int64 seconds.
      weights: [n] float64, or None when the input has no weight column.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    weights: np.ndarray | None

    @property
    def size(self) -> int:
        return len(self.timestamps)

    def select(self, mask_or_index) -> "InteractionBatch":
        """The rows picked by a boolean mask or an index array."""
        return InteractionBatch(self.user_ids[mask_or_index], self.item_ids[mask_or_index],
                                self.timestamps[mask_or_index],
                                None if self.weights is None else self.weights[mask_or_index])

    @classmethod
    def concatenate(cls, batches: list["InteractionBatch"]) -> "InteractionBatch":
        has_weights = bool(batches) and batches[0].weights is not None
        return cls(np.concatenate([b.user_ids for b in batches]), np.concatenate([b.item_ids for b in batches]),
                   np.concatenate([b.timestamps for b in batches]),
                   np.concatenate([b.weights for b in batches]) if has_weights else None)

    @classmethod
    def from_records(cls, records: list[Interaction], has_weights: bool) -> "InteractionBatch":
        return cls(_strings([r.user_id for r in records]), _strings([r.item_id for r in records]),
                   np.fromiter((r.timestamp for r in records), np.int64, len(records)),
                   np.fromiter((r.weight for r in records), np.float64, len(records)) if has_weights else None)


def _strings(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _numbers(texts: list[str]) -> np.ndarray:
    """float64 of each text; NaN where Python's ``float`` fails (the slow path gives the reason)."""
    try:
        return np.asarray(texts, dtype=np.str_).astype(np.float64)
    except ValueError:
        out = np.empty(len(texts))
        for index, text in enumerate(texts):
            try:
                out[index] = float(text)
            except ValueError:
                out[index] = np.nan
        return out


def parse_csv_block(lines: list[RawLine], columns: tuple[str, str, str, str | None]):
    """The vectorised path for a block of CSV lines of one file.

    Args:
      lines: consecutive lines of one CSV file (same header).
      columns: the user id, item id, timestamp and weight (or None) column names.

    Returns:
      ``(batch, slow)``: an :class:`InteractionBatch` of the lines that pass every check, and the
      indices of the other lines, which the per-record parser handles (and names the reason for);
      ``(None, all indices)`` when the block cannot be parsed as a whole.
    """
    header = lines[0].header
    if header is None or any(name is not None and name not in header for name in columns):
        return None, list(range(len(lines)))
    slow = set()
    try:  # One decode for the block; line by line only when some line is not UTF-8.
        texts = b"\n".join(line.data for line in lines).decode("utf-8").split("\n")
    except UnicodeDecodeError:
        texts = []
        for index, line in enumerate(lines):
            try:
                texts.append(line.data.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append("")
                slow.add(index)
    if len(texts) != len(lines):  # A line holding a lone \r split differently: use the per-line parser.
        return None, list(range(len(lines)))
    try:
        rows = list(csv.reader(texts))
    except csv.Error:  # E.g. a NUL byte or a stray \r: the per-line parser names the line.
        return None, list(range(len(lines)))
    if len(rows) != len(texts):  # A quoted field spanning lines: let the per-line parser decide.
        return None, list(range(len(lines)))
    width = len(header)
    if any(len(row) != width for row in rows):
        slow.update(index for index, row in enumerate(rows) if len(row) != width)
        rows = [row if len(row) == width else [""] * width for row in rows]
    # The last column of a repeated name, as the per-record parser's dict(zip(header, fields)) keeps.
    positions = [len(header) - 1 - header[::-1].index(name) if name is not None else None for name in columns]
    table = list(zip(*rows))  # Columns of the block (a C-level transpose).
    users, items, times = ([value.strip() for value in table[p]] for p in positions[:3])
    slow.update(index for index, (u, i) in enumerate(zip(users, items)) if not u or not i)
    timestamps = _numbers(times)
    ok = np.isfinite(timestamps) & (timestamps >= MIN_TIMESTAMP) & (timestamps < MAX_TIMESTAMP)
    weights = None
    if positions[3] is not None:
        weights = _numbers([value.strip() for value in table[positions[3]]])
        ok &= np.isfinite(weights)
    slow.update(np.flatnonzero(~ok).tolist())
    keep = np.ones(len(lines), dtype=bool)
    keep[sorted(slow)] = False
    batch = InteractionBatch(_strings(users)[keep], _strings(items)[keep],
                             np.trunc(timestamps[keep]).astype(np.int64), None if weights is None else weights[keep])
    return batch, sorted(slow)


class _ParseBatchDoFn(beam.DoFn):
    def __init__(self, source: str, parse_fn: Callable[[RawLine, dict], Interaction],
                 columns: tuple[str, str, str, str | None]):
        self._source, self._parse_fn, self._columns = source, parse_fn, columns

    def start_bundle(self):
        self._read = self._accepted = 0

    def process(self, lines: list[RawLine], known):
        has_weights = self._columns[3] is not None
        fast, slow = parse_csv_block(lines, self._columns)
        slow_set = set(slow)
        line_of_row = [i for i in range(len(lines)) if i not in slow_set] if fast is not None else []
        records = []
        for index in slow:
            line = lines[index]
            try:
                records.append(parse_record(line, self._parse_fn))
                line_of_row.append(index)
            except RowError as error:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                    line.source, line.position, error.kind, str(error), raw_text(line)))
        self._read += len(lines)
        parts = [fast] if fast is not None and fast.size else []
        if records:
            parts.append(InteractionBatch.from_records(records, has_weights))
        if not parts:
            return
        batch = InteractionBatch.concatenate(parts) if len(parts) > 1 else parts[0]
        known_mask = np.fromiter((item_id in known for item_id in batch.item_ids), bool, batch.size)
        for row in np.flatnonzero(~known_mask).tolist():  # Re-parsed to name the record in the dead letter.
            line = lines[line_of_row[row]]
            record = parse_record(line, self._parse_fn)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, unknown_item_dead_letter(self._source, record))
        if not known_mask.all():
            batch = batch.select(known_mask)
        self._accepted += batch.size
        if batch.size:
            yield batch

    def finish_bundle(self):
        if self._read:
            yield bundle_count(f"read:{self._source}", self._read)
        if self._accepted:
            yield bundle_count(f"accepted:{self._source}", self._accepted)


class ParseInteractionBatches(beam.PTransform):
    """Blocks of :class:`RawLine` s -> :class:`InteractionBatch` es of known-item interactions.

    Args:
      source: the source name for dead letters and counts.
      parse_fn: the per-record parser (:func:`pipelines.io.records.interaction_parser`), used for
        JSONL and Parquet rows and for every CSV line the vectorised path does not accept (so
        rejection reasons are the parser's).
      columns: the user id, item id, timestamp and weight (or None) column names.
      known_ids: a side input holding the catalogue's item ids (a set, or a dict keyed by them).

    Outputs: ``batches``, ``dead_letter`` (parse errors and ``unknown_item_id``) and ``counts``
    (``read:<source>`` lines and ``accepted:<source>`` records, per bundle).
    """

    def __init__(self, source: str, parse_fn, columns: tuple[str, str, str, str | None], known_ids):
        super().__init__()
        self._source, self._parse_fn, self._columns, self._known_ids = source, parse_fn, columns, known_ids

    def expand(self, blocks):
        return blocks | "ParseBatches" >> beam.ParDo(
            _ParseBatchDoFn(self._source, self._parse_fn, self._columns), known=self._known_ids
        ).with_outputs(DEAD_LETTER_TAG, COUNTS_TAG, main="batches")
