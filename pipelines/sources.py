"""Reading raw interaction logs and item catalogues into typed records, with dead letters.

The generic input format (``--input_format interactions``) is a directory with a ``schema.json``
that declares three kinds of source (paths relative to the schema file; globs allowed):

```json
{
  "interactions": {"path": "interactions.csv", "user_id": "user_id", "item_id": "item_id",
                   "timestamp": "timestamp", "weight": "weight"},
  "items": {"path": "items.jsonl", "item_id": "item_id",
            "features": [{"name": "category", "column": "category", "multivalent": false},
                         {"name": "tags", "column": "tags", "multivalent": true, "separator": "|"}]},
  "item_events": [{"path": "tags.csv", "item_id": "movieId", "value": "tag",
                   "timestamp": "timestamp", "user_id": "userId", "feature": "tags"}]
}
```

Files are CSV (header row, RFC 4180 quoting within a line) or JSONL (one object per line), by
extension. ``weight`` and ``item_events`` are optional; an item event is a timestamped value of a
multivalent item feature (MovieLens tags). Every line becomes either a record or a
:class:`DeadLetter` naming the source, ``path@byte_offset`` position and reason, so for every source
``read = accepted + rejected``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.utils import timestamp
from apache_beam.utils.windowed_value import WindowedValue
from apache_beam.io import filebasedsource
from apache_beam.io.filesystem import CompressionTypes

from recsys_ssl.schema import RESERVED_NAMES, SchemaError

DEAD_LETTER_TAG = "dead_letter"
MISSING_VALUES = frozenset({"", "(no genres listed)"})


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


class RawLine(NamedTuple):
    source: str
    path: str
    offset: int  # byte offset of the line's first byte in the file
    header: tuple[str, ...] | None  # CSV only
    data: bytes

    @property
    def position(self) -> str:
        """``path@byte_offset`` of the line start (``tail -c +$((offset + 1)) path | head -1`` shows it)."""
        return f"{self.path}@{self.offset}"


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


@dataclasses.dataclass(frozen=True)
class ItemFeatureColumn:
    """How one item feature is read from the items file."""

    name: str
    column: str
    multivalent: bool = False
    separator: str = "|"
    lowercase: bool = False


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Everything the feature pipeline needs to read one data set.

    Attributes:
      interactions: glob, and the columns of user id, item id, timestamp and (optional) weight.
      items: glob and item id column of the item catalogue; ``item_features`` its feature columns.
      item_events: timestamped values of multivalent item features (e.g. tags).
      item_row_fn: optional adapter applied to each raw item row (a ``{column: text}`` dict)
        before feature extraction; MovieLens derives year and title words this way.
    """

    interactions_path: str
    user_id_column: str
    item_id_column: str
    timestamp_column: str
    weight_column: str | None
    items_path: str
    items_id_column: str
    item_features: tuple[ItemFeatureColumn, ...]
    item_events: tuple[dict, ...] = ()
    item_row_fn: Callable[[dict], dict] | None = None

    def __post_init__(self):
        names = [f.name for f in self.item_features]
        if len(set(names)) != len(names) or "item_id" in names or RESERVED_NAMES.intersection(names):
            raise SchemaError(f"item feature names must be unique and not reserved, received {names}")
        for event in self.item_events:
            missing = {"path", "item_id", "value", "timestamp", "feature"} - set(event)
            if missing:
                raise SchemaError(f"item_events entry {event} lacks {sorted(missing)}")
            feature = next((f for f in self.item_features if f.name == event["feature"]), None)
            if feature is None or not feature.multivalent:
                raise SchemaError(
                    f"item event feature {event['feature']!r} must be declared as a multivalent item feature"
                )

    @classmethod
    def from_schema_file(cls, path: str) -> "InputSpec":
        """Reads the generic format's ``schema.json`` (see the module docstring)."""
        with open(path) as f:
            raw = json.load(f)
        base = os.path.dirname(os.path.abspath(path))
        try:
            inter, items = raw["interactions"], raw["items"]
            events = tuple(
                {**e, "path": os.path.join(base, e["path"])} for e in raw.get("item_events", [])
            )
            return cls(
                interactions_path=os.path.join(base, inter["path"]),
                user_id_column=inter.get("user_id", "user_id"),
                item_id_column=inter.get("item_id", "item_id"),
                timestamp_column=inter.get("timestamp", "timestamp"),
                weight_column=inter.get("weight"),
                items_path=os.path.join(base, items["path"]),
                items_id_column=items.get("item_id", "item_id"),
                item_features=tuple(
                    ItemFeatureColumn(
                        name=f["name"], column=f.get("column", f["name"]),
                        multivalent=bool(f.get("multivalent", False)),
                        separator=f.get("separator", "|"), lowercase=bool(f.get("lowercase", False)),
                    )
                    for f in items["features"]
                ),
                item_events=events,
            )
        except (KeyError, TypeError) as error:
            raise SchemaError(f"{path}: malformed input schema ({error!r}); see pipelines/sources.py") from error


def _lossy(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class _LinesWithOffsets(filebasedsource.FileBasedSource):
    """A splittable source of ``(path, byte offset, CSV header or None, line bytes)``.

    Splitting follows Beam's text source: a split starting inside a line begins at the next line,
    so every line is read exactly once, by the split its first byte belongs to. CSV files (by
    extension) read their header line from the file start in every split and skip it.
    """

    def __init__(self, pattern: str):
        super().__init__(pattern, compression_type=CompressionTypes.UNCOMPRESSED, splittable=True)

    def read_records(self, file_name, offset_range_tracker):
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
                data = line.rstrip(b"\r\n")
                if data.strip():
                    yield file_name, position, header, data
                position += len(line)


class ReadSourceLines(beam.PTransform):
    """Reads every non-empty line of the files matching ``pattern`` as :class:`RawLine`.

    The read is splittable (large files are read by all workers in parallel, no shuffle); each
    line carries its ``path@byte_offset`` position for dead letters.
    """

    def __init__(self, source: str, pattern: str):
        super().__init__()
        self._source, self._pattern = source, pattern

    def expand(self, pbegin):
        source = self._source
        return (
            pbegin
            | "Read" >> beam.io.Read(_LinesWithOffsets(self._pattern))
            | "Lines" >> beam.MapTuple(lambda path, offset, header, data: RawLine(source, path, offset, header, data))
        )


def parse_row(line: RawLine) -> dict:
    """Decodes a raw line into a ``{column: value}`` dict. Raises RowError with the reason."""
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RowError("undecodable_bytes", f"undecodable bytes (not UTF-8) at byte {error.start}") from None
    if line.header is not None:
        fields = next(csv.reader([text]))
        if len(fields) != len(line.header):
            raise RowError(
                "wrong_column_count", f"expected {len(line.header)} columns {list(line.header)}, received {len(fields)}"
            )
        return dict(zip(line.header, fields))
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise RowError("invalid_json", f"invalid JSON: {error.msg}") from None
    if not isinstance(row, dict):
        raise RowError("invalid_json", f"expected a JSON object per line, received {type(row).__name__}")
    return row


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


def _parse_timestamp(row: Mapping, column: str) -> int:
    return int(_finite_number(row, column, "timestamp"))


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
            yield self._parse_fn(line, parse_row(line))
        except RowError as error:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG, DeadLetter(line.source, line.position, error.kind, str(error), _lossy(line.data))
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
