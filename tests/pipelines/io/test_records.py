"""Parsing raw records into typed records or dead letters (``pipelines/io/records.py``)."""

from __future__ import annotations


import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.io.records import (
    DEAD_LETTER_TAG, DeadLetter, Interaction, Item, ParseRecords, RawLine,
    interaction_parser, item_parser,
)

from tests.pipelines.raw_input import HEADER, SPEC, line as _line  # noqa: E402,F401


def test_parse_interactions_routes_bad_rows_to_dead_letters():
    lines = [
        _line(2, b"u1,i1,4.5,100"),
        _line(3, b"u1,i2,4.5"),  # wrong column count
        _line(4, b"u2,i1,x,100"),  # unparseable weight
        _line(5, b"u2,i1,3,1e2"),  # float timestamp is fine
        _line(6, b",i1,3,100"),  # empty user id
        _line(7, b"u3,i\xff,3,100"),  # undecodable bytes
        _line(8, b"u3,i1,3,nan"),
    ]
    with TestPipeline() as p:
        parsed = p | beam.Create(lines) | ParseRecords(interaction_parser(SPEC))
        assert_that(parsed.records, equal_to([
            Interaction("u1", "i1", 100, 4.5, "f.csv@2"), Interaction("u2", "i1", 100, 3.0, "f.csv@5"),
        ]), label="records")
        kinds = parsed[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.position, d.kind))
        assert_that(kinds, equal_to([
            ("f.csv@3", "wrong_column_count"), ("f.csv@4", "unparseable_number"), ("f.csv@6", "empty_value"),
            ("f.csv@7", "undecodable_bytes"), ("f.csv@8", "unparseable_number"),
        ]), label="dead")


def test_parse_items_jsonl_lists_and_separators():
    lines = [
        RawLine("items", "items.jsonl", 1, None, b'{"item": "i1", "genres": ["A", "B", "A"], "year": 1990}'),
        RawLine("items", "items.jsonl", 2, None, b'{"item": "i2", "genres": "B|C", "year": null}'),
        RawLine("items", "items.jsonl", 3, None, b'["not", "an", "object"]'),
        RawLine("items", "items.jsonl", 4, None, b'{"item": "i3", "genres": '),
    ]
    with TestPipeline() as p:
        parsed = p | beam.Create(lines) | ParseRecords(item_parser(SPEC))
        assert_that(parsed.records, equal_to([
            Item("i1", (("genres", ("A", "B")), ("year", ("1990",))), "items.jsonl@1"),
            Item("i2", (("genres", ("B", "C")), ("year", ())), "items.jsonl@2"),
        ]), label="records")
        assert_that(parsed[DEAD_LETTER_TAG] | beam.Map(lambda d: d.kind), equal_to(["invalid_json"] * 2),
                    label="dead")


def test_dead_letter_json_round_trip():
    import json

    letter = DeadLetter("items", "f:3", "invalid_json", "invalid JSON: x", "{\"a\"")
    assert json.loads(letter.to_json()) == letter._asdict()
