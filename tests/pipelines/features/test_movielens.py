"""The MovieLens adapter (``pipelines/features/movielens.py``)."""

from __future__ import annotations



from pipelines.features import movielens
from pipelines.io.records import (
    InputSpec, ItemFeatureColumn, RawLine,
)

SPEC = InputSpec(
    interactions_path="unused", user_id_column="user", item_id_column="item", timestamp_column="ts",
    weight_column="rating", items_path="unused", items_id_column="item",
    item_features=(ItemFeatureColumn("genres", "genres", multivalent=True), ItemFeatureColumn("year", "year")),
)
HEADER = ("user", "item", "rating", "ts")


def _line(offset: int, data: bytes, header=HEADER) -> RawLine:
    return RawLine("interactions", "f.csv", offset, header, data)


def test_movielens_item_adapter():
    row = movielens.movie_row({"movieId": "1", "title": "City of Lost Children, The (1995)", "genres": "A|B"})
    assert row["year"] == "1995-1999" and row["title_words"] == ["city", "lost", "children"]
    assert movielens.movie_row({"title": "Babylon 5"})["year"] == ""
