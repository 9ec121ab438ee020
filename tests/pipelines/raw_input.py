"""The interactions input every pipelines unit test parses: its spec, header and raw lines."""

from __future__ import annotations

from pipelines.io.input_schema import InputSpec, ItemFeatureColumn
from pipelines.io.readers import RawLine

SPEC = InputSpec(
    interactions_path="unused", user_id_column="user", item_id_column="item", timestamp_column="ts",
    weight_column="rating", items_path="unused", items_id_column="item",
    item_features=(ItemFeatureColumn("genres", "genres", multivalent=True), ItemFeatureColumn("year", "year")),
)
HEADER = ("user", "item", "rating", "ts")


def line(offset: int, data: bytes, header=HEADER) -> RawLine:
    return RawLine("interactions", "f.csv", offset, header, data)
