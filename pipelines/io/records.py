"""Parsing raw interaction logs and item catalogues into typed records, with dead letters.

The input format is declared by ``input_schema.json`` (:mod:`pipelines.io.input_schema`) and read line by
line (CSV, JSONL) or row by row (Parquet) by :mod:`pipelines.io.readers`. Every record becomes either
a typed record or a :class:`DeadLetter` naming the source, position (``path@byte_offset``, or
``path@row_index`` for Parquet) and reason, so for every source ``read = accepted + rejected``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.utils import timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.io.input_schema import InputSpec, ItemFeatureColumn  # noqa: F401  (re-exported)
from pipelines.io.readers import (  # noqa: F401  (RawLine, ReadSourceLines re-exported)
    RawLine, ReadSourceLines, UnconvertibleRow, Unreadable,
)

DEAD_LETTER_TAG = "dead_letter"
MISSING_VALUES = frozenset({"", "(no genres listed)"})
# Plausible event times, seconds since the Unix epoch: [1970-01-01, 2100-01-01) UTC. Anything outside
# is corruption (flipped bytes gave 1918 dates) or a unit mix-up (milliseconds): it would land in the
# wrong split and order histories wrongly, so such a record is rejected (``implausible_timestamp``).
MIN_TIMESTAMP, MAX_TIMESTAMP = 0, 4_102_444_800
MAX_MESSAGE_CHARS = 300  # An error text quoted in a reason is cut to this many characters.
# Deepest JSON nesting accepted in a record: deeper values parse, but every later step that walks
# them (Beam's pickling coder between stages, JSON output) would hit Python's recursion limit.
MAX_JSON_DEPTH = 64


class RowError(ValueError):
    """A row that cannot be used. ``kind`` is a short category for counts (``unknown_item_id``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class DeadLetter(NamedTuple):
    """A rejected input: where it came from and why. ``raw`` is the line as text (lossy-decoded)."""

    source: str
    position: str
    kind: str
    reason: str
    raw: str

    def to_json(self) -> str:
        return json.dumps(self._asdict(), ensure_ascii=False)


class Interaction(NamedTuple):
    user_id: str
    item_id: str
    timestamp: int
    weight: float | None
    position: str


class Item(NamedTuple):
    item_id: str
    features: tuple[tuple[str, tuple[str, ...]], ...]  # (feature name, values), schema order
    position: str


class ItemEvent(NamedTuple):
    item_id: str
    feature: str
    value: str
    timestamp: int
    user_id: str | None
    position: str


def raw_text(line: RawLine) -> str:
    """The record as text for a dead letter: the line (lossy-decoded), or a Parquet row as JSON."""
    if isinstance(line.row, (Unreadable, UnconvertibleRow)):
        return ""
    if line.row is not None:
        try:
            return json.dumps(line.row, ensure_ascii=False, default=str)
        except (ValueError, RecursionError):
            return repr(line.row)[:10_000]
    return line.data.decode("utf-8", errors="replace")


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with how much was cut), for messages quoting input."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def guarded(parse: Callable[[], object]) -> object:
    """Runs one record's parse; every failure becomes a :class:`RowError` (never a job failure).

    This is the one guard every per-record parse of the Beam jobs goes through: RowErrors pass
    as they are; a value nested too deeply for Python's recursion limit becomes
    ``too_deeply_nested``; any other exception (a value no converter accepts, an overflow) becomes
    ``invalid_record`` naming the exception.
    """
    try:
        return parse()
    except RowError:
        raise
    except RecursionError:
        raise RowError("too_deeply_nested", "the record is nested too deeply to process") from None
    except Exception as error:  # noqa: BLE001 - one bad record must never fail the job.
        raise RowError("invalid_record", f"cannot process the record: {type(error).__name__}: "
                       f"{clip(str(error))}") from None


def parse_record(line: RawLine, parse_fn: Callable[[RawLine, dict], object]) -> object:
    """``parse_fn(line, parse_row(line))`` under :func:`guarded`: a record, or a RowError."""
    return guarded(lambda: parse_fn(line, parse_row(line)))


def parse_row(line: RawLine) -> dict:
    """Decodes a raw line into a ``{column: value}`` dict. Raises RowError with the reason."""
    if isinstance(line.row, Unreadable):
        raise RowError("unreadable_file", line.row.reason)
    if isinstance(line.row, UnconvertibleRow):
        raise RowError("invalid_value", line.row.reason)
    if line.row is not None:
        return dict(line.row)
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RowError("undecodable_bytes", f"undecodable bytes (not UTF-8) at byte {error.start}") from None
    if line.header is not None:
        try:
            fields = next(csv.reader([text]), [])
        except csv.Error as error:  # A NUL byte, or a carriage return inside an unquoted field.
            raise RowError("invalid_csv", f"unparseable CSV line: {error}") from None
        if len(fields) != len(line.header):
            raise RowError(
                "wrong_column_count", f"expected {len(line.header)} columns {list(line.header)}, received {len(fields)}"
            )
        return dict(zip(line.header, fields))
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise RowError("invalid_json", f"invalid JSON: {error.msg}") from None
    except RecursionError:
        raise RowError("too_deeply_nested", "invalid JSON: nested too deeply to parse") from None
    except ValueError as error:  # An integer over sys.get_int_max_str_digits() digits.
        raise RowError("invalid_json", f"invalid JSON: {clip(str(error).split(';')[0])}") from None
    if not isinstance(row, dict):
        raise RowError("invalid_json", f"expected a JSON object per line, received {type(row).__name__}")
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(row) > MAX_JSON_DEPTH:
        raise RowError("too_deeply_nested", f"JSON values nested more than {MAX_JSON_DEPTH} deep")
    if "\\u" in text:  # Escapes may encode lone surrogates, which no UTF-8 output can hold.
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            raise RowError("invalid_unicode", f"a JSON string holds a lone surrogate escape "
                           f"({ascii(error.object[error.start:error.end])}), which is not valid Unicode") from None
    return row


def json_depth(value) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item if isinstance(child, (list, dict)))
    return deepest


def _required_text(row: Mapping, column: str) -> str:
    if column not in row:
        raise RowError("missing_column", f"missing column {column!r}")
    value = row[column]
    if value is None or (isinstance(value, (dict, list))):
        raise RowError("invalid_value", f"column {column!r} must be a scalar, received {value!r}")
    text = str(value).strip()
    if not text:
        raise RowError("empty_value", f"empty {column!r}")
    return text


def _finite_number(row: Mapping, column: str, what: str) -> float:
    text = _required_text(row, column)
    try:
        value = float(text)
    except ValueError:
        raise RowError("unparseable_number", f"unparseable {what} {text!r} in column {column!r}") from None
    if not math.isfinite(value):
        raise RowError("unparseable_number", f"non-finite {what} {text!r} in column {column!r}")
    return value


def check_timestamp(seconds: float, column: str) -> int:
    """``seconds`` as an int, or RowError ``implausible_timestamp`` outside the plausible range."""
    if not MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
        raise RowError("implausible_timestamp",
                       f"timestamp {seconds:.0f} in column {column!r} is outside the plausible range "
                       f"[{MIN_TIMESTAMP}, {MAX_TIMESTAMP}) seconds (1970-01-01 to 2100-01-01 UTC; "
                       "timestamps must be seconds since the Unix epoch, not milliseconds)")
    return int(seconds)


def _parse_timestamp(row: Mapping, column: str) -> int:
    value = row.get(column)
    if isinstance(value, datetime.datetime):  # Parquet timestamp columns; naive ones are taken as UTC.
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return check_timestamp(value.timestamp(), column)
    return check_timestamp(_finite_number(row, column, "timestamp"), column)


def _multi_values(value, column: ItemFeatureColumn) -> tuple[str, ...]:
    if value is None:
        return ()
    parts = value if isinstance(value, list) else str(value).split(column.separator) if column.multivalent else [value]
    cleaned = []
    for part in parts:
        text = str(part).strip()
        if column.lowercase:
            text = text.lower()
        if text not in MISSING_VALUES and text not in cleaned:
            cleaned.append(text)
    return tuple(cleaned)


COUNTS_TAG = "counts"


def bundle_count(name: str, count: int):
    """A ``counts`` output emitted from ``finish_bundle``: ``(name, count)`` in the global window."""
    return beam.pvalue.TaggedOutput(
        COUNTS_TAG, WindowedValue((name, count), timestamp.MIN_TIMESTAMP, [window.GlobalWindow()])
    )


class _ParseDoFn(beam.DoFn):
    """Parses lines; counts the lines it reads per bundle (an independent count for reconciliation)."""

    def __init__(self, parse_fn: Callable[[RawLine, dict], object]):
        self._parse_fn = parse_fn
        self._read = Metrics.counter("recsys_features", "lines_read")

    def start_bundle(self):
        self._counts = {}

    def process(self, line: RawLine):
        self._counts[line.source] = self._counts.get(line.source, 0) + 1
        try:
            yield parse_record(line, self._parse_fn)
        except RowError as error:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG, DeadLetter(line.source, line.position, error.kind, str(error), raw_text(line))
            )

    def finish_bundle(self):
        for source, count in self._counts.items():
            self._read.inc(count)
            yield bundle_count(f"read:{source}", count)


class ParseRecords(beam.PTransform):
    """Parses :class:`RawLine` s into records with ``parse_fn``; failures become dead letters.

    Outputs: ``records``, ``dead_letter`` and ``counts`` (``("read:<source>", n)`` per bundle).
    """

    def __init__(self, parse_fn: Callable[[RawLine, dict], object]):
        super().__init__()
        self._parse_fn = parse_fn

    def expand(self, lines):
        return lines | beam.ParDo(_ParseDoFn(self._parse_fn)).with_outputs(DEAD_LETTER_TAG, COUNTS_TAG, main="records")


def interaction_parser(spec: InputSpec) -> Callable[[RawLine, dict], Interaction]:
    def parse(line: RawLine, row: dict) -> Interaction:
        weight = _finite_number(row, spec.weight_column, "weight") if spec.weight_column else None
        return Interaction(
            user_id=_required_text(row, spec.user_id_column),
            item_id=_required_text(row, spec.item_id_column),
            timestamp=_parse_timestamp(row, spec.timestamp_column),
            weight=weight,
            position=line.position,
        )

    return parse


def item_parser(spec: InputSpec) -> Callable[[RawLine, dict], Item]:
    def parse(line: RawLine, row: dict) -> Item:
        if spec.item_row_fn is not None:
            row = spec.item_row_fn(row)
        item_id = _required_text(row, spec.items_id_column)
        features = tuple((c.name, _multi_values(row.get(c.column), c)) for c in spec.item_features)
        return Item(item_id, features, line.position)

    return parse


def item_event_parser(event_spec: Mapping, spec: InputSpec) -> Callable[[RawLine, dict], ItemEvent]:
    column = next(c for c in spec.item_features if c.name == event_spec["feature"])

    def parse(line: RawLine, row: dict) -> ItemEvent:
        values = _multi_values(_required_text(row, event_spec["value"]), dataclasses.replace(column, multivalent=False))
        if not values:
            raise RowError("empty_value", f"empty {event_spec['value']!r}")
        user_column = event_spec.get("user_id")
        return ItemEvent(
            item_id=_required_text(row, event_spec["item_id"]),
            feature=event_spec["feature"],
            value=values[0],
            timestamp=_parse_timestamp(row, event_spec["timestamp"]),
            user_id=_required_text(row, user_column) if user_column else None,
            position=line.position,
        )

    return parse
