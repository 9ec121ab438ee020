"""The generic input format's ``input_schema.json``: what to read, checked strictly before a job runs.

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

Paths are relative to the schema file (globs allowed); files are CSV (header row), JSONL (one
object per line) or Parquet, by extension. :meth:`InputSpec.from_schema_file` refuses unknown keys
and values of the wrong JSON type (``"multivalent": "false"`` is a string, not a boolean), naming
the file and the field. :func:`check_input_columns` then reads each source's header (CSV), first
records (JSONL) or schema (Parquet) and refuses a declared column the data does not have, so a
misspelt column fails the job before it runs instead of rejecting every row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping

from apache_beam.io.filesystems import FileSystems

from recsys_ssl.schema import RESERVED_NAMES, SchemaError

INPUT_SCHEMA_FILE = "input_schema.json"  # (the feature directory's schema.json is another file)
JSONL_RECORDS_CHECKED = 1000  # JSON objects may omit optional keys: the union over this many is checked.
_INTERACTION_KEYS = {"path": str, "user_id": str, "item_id": str, "timestamp": str, "weight": str}
_ITEMS_KEYS = {"path": str, "item_id": str, "features": list}
_FEATURE_KEYS = {"name": str, "column": str, "multivalent": bool, "separator": str, "lowercase": bool}
_EVENT_KEYS = {"path": str, "item_id": str, "value": str, "timestamp": str, "user_id": str, "feature": str}


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
        """Reads and strictly validates ``input_schema.json`` (see the module docstring).

        Raises:
          SchemaError: the file is not JSON, or a key is missing, unknown or of the wrong type;
            the message names the file and the field.
        """
        try:
            with open(path) as f:
                raw = json.load(f)
        except json.JSONDecodeError as error:
            raise SchemaError(f"{path}: not valid JSON: {error}") from None
        except OSError as error:
            raise SchemaError(f"{path}: cannot read the input schema: {error}") from None
        _check_object(raw, {"interactions": dict, "items": dict, "item_events": list}, path, "",
                      required=("interactions", "items"))
        inter, items = raw["interactions"], raw["items"]
        _check_object(inter, _INTERACTION_KEYS, path, "interactions.", required=("path",))
        _check_object(items, _ITEMS_KEYS, path, "items.", required=("path", "features"))
        for index, feature in enumerate(items["features"]):
            _check_object(feature, _FEATURE_KEYS, path, f"items.features[{index}].", required=("name",))
        events = raw.get("item_events", [])
        for index, event in enumerate(events):
            _check_object(event, _EVENT_KEYS, path, f"item_events[{index}].",
                          required=("path", "item_id", "value", "timestamp", "feature"))
        base = os.path.dirname(os.path.abspath(path))
        try:
            return cls(
                interactions_path=os.path.join(base, inter["path"]),
                user_id_column=inter.get("user_id", "user_id"),
                item_id_column=inter.get("item_id", "item_id"),
                timestamp_column=inter.get("timestamp", "timestamp"),
                weight_column=inter.get("weight"),
                items_path=os.path.join(base, items["path"]),
                items_id_column=items.get("item_id", "item_id"),
                item_features=tuple(
                    ItemFeatureColumn(name=f["name"], column=f.get("column", f["name"]),
                                      multivalent=f.get("multivalent", False), separator=f.get("separator", "|"),
                                      lowercase=f.get("lowercase", False))
                    for f in items["features"]
                ),
                item_events=tuple({**e, "path": os.path.join(base, e["path"])} for e in events),
            )
        except SchemaError as error:
            raise SchemaError(f"{path}: {error}") from None


def _check_object(value, keys: Mapping[str, type], path: str, prefix: str, required: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise SchemaError(f"{path}: {prefix.rstrip('.') or 'the schema'} must be a JSON object, "
                          f"received {type(value).__name__}")
    for key, item in value.items():
        if key not in keys:
            raise SchemaError(f"{path}: unknown field {prefix}{key!r}; valid fields: {sorted(keys)}")
        if not isinstance(item, keys[key]) or (keys[key] is str and not item):
            kind = {str: "a non-empty string", bool: "true or false", list: "a list", dict: "an object"}[keys[key]]
            raise SchemaError(f"{path}: field {prefix}{key} must be {kind}, received {json.dumps(item)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise SchemaError(f"{path}: missing field(s) {[prefix + key for key in missing]}")


def read_columns(pattern: str) -> tuple[str, set[str]]:
    """The column names of the first file matching ``pattern``: CSV header, Parquet schema, or the
    union of the keys of the first ``JSONL_RECORDS_CHECKED`` JSON objects.

    Returns:
      ``(path of that file, columns)``.

    Raises:
      SchemaError: no file matches, or the header / records cannot be read.
    """
    matches = [m.path for result in FileSystems.match([pattern]) for m in result.metadata_list]
    if not matches:
        raise SchemaError(f"no input file matches {pattern!r}")
    path = sorted(matches)[0]
    lowered = path.lower()
    try:
        if lowered.endswith(".parquet"):
            import pyarrow.parquet as pq

            with FileSystems.open(path) as f:
                return path, set(pq.ParquetFile(f).schema_arrow.names)
        with FileSystems.open(path) as f:
            if lowered.endswith(".csv"):
                header = f.readline().decode("utf-8", errors="replace").rstrip("\r\n").lstrip("\ufeff")
                return path, set(next(csv.reader(io.StringIO(header)), []))
            columns: set[str] = set()
            for _, line in zip(range(JSONL_RECORDS_CHECKED), f):
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):  # Also over-long integers and deep nesting.
                    continue  # Bad lines become dead letters when the job runs.
                if isinstance(row, dict):
                    columns.update(row)
            return path, columns
    except (OSError, ValueError) as error:
        raise SchemaError(f"cannot read the columns of {path}: {error}") from None


def check_input_columns(spec: InputSpec, schema_path: str) -> None:
    """Checks that every column ``schema_path`` declares exists in its source's data.

    Item feature columns fed only by ``item_events`` may be absent from the items file; an
    adapter (``item_row_fn``, MovieLens) derives its own columns, so specs with one skip the items
    check.

    Raises:
      SchemaError: naming the schema file, the field, the data file and the columns it has.
    """
    def require(source: str, pattern: str, fields: dict[str, str | None]) -> None:
        data_path, columns = read_columns(pattern)
        for field, column in fields.items():
            if column is not None and column not in columns:
                raise SchemaError(
                    f"{schema_path}: {source}.{field} names column {column!r}, which {data_path} does not have; "
                    f"its columns are {sorted(columns)[:30]}"
                )

    require("interactions", spec.interactions_path, {
        "user_id": spec.user_id_column, "item_id": spec.item_id_column, "timestamp": spec.timestamp_column,
        "weight": spec.weight_column})
    if spec.item_row_fn is None:
        event_fed = {event["feature"] for event in spec.item_events}
        fields = {"item_id": spec.items_id_column}
        fields.update({f"features[{i}].column": f.column for i, f in enumerate(spec.item_features)
                       if f.name not in event_fed})
        require("items", spec.items_path, fields)
    for index, event in enumerate(spec.item_events):
        require(f"item_events[{index}]", event["path"], {
            key: event.get(key) for key in ("item_id", "value", "timestamp", "user_id")})
