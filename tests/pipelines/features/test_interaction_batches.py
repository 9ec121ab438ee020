"""Interactions parsed in blocks (``pipelines/features/interaction_batches.py``)."""

from __future__ import annotations


import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.features.item_corpus import KeepKnownItems
from pipelines.io.records import (
    DEAD_LETTER_TAG, ParseRecords, RawLine,
    interaction_parser,
)

from tests.pipelines.raw_input import HEADER, SPEC, line as _line  # noqa: E402,F401


def test_batched_interaction_parsing_equals_the_per_record_path():
    """The vectorised CSV path accepts exactly what the per-record parser accepts, with the same
    dead letters (kinds, positions, reasons)."""
    from pipelines.features.interaction_batches import ParseInteractionBatches

    header = ("user", "item", "rating", "ts")
    data = [b"u1,i1,4.5,100", b"u1,i2,4.5", b'"u,2",i1,3,1e2', b" u3 , i2 ,2,  7", b",i1,3,100", b"u3,i\xff,3,100",
            b"u3,i1,3,nan", b"u3,i1,inf,5", b"u4,i9,1,5", b"u4,i1,1_000,5", b"u5,i2,2,0x10", b'u6,"i1",3,8',
            b"u7,i1,3,-4.7", b'u8,"i1,3,9', b"u9,i\x001,3,9", b"u9,i1\r,3,9"]
    lines = [RawLine("interactions", "f.csv", 10 * k, header, d) for k, d in enumerate(data)]
    known = {"i1": None, "i2": None}

    def as_tuples(batch):
        weights = batch.weights.tolist()
        return list(zip(batch.user_ids.tolist(), batch.item_ids.tolist(), batch.timestamps.tolist(), weights))

    with TestPipeline() as p:
        known_side = beam.pvalue.AsSingleton(p | "Known" >> beam.Create([frozenset(known)]))
        batched = (p | "Block" >> beam.Create([lines])
                   | ParseInteractionBatches("interactions", interaction_parser(SPEC), ("user", "item", "ts", "rating"),
                                             known_side))
        single = (p | "Lines" >> beam.Create(lines) | ParseRecords(interaction_parser(SPEC)))
        checked = single.records | KeepKnownItems("interactions", beam.pvalue.AsSingleton(
            p | "Known2" >> beam.Create([frozenset(known)])))
        expected = checked.known | beam.Map(lambda r: (r.user_id, r.item_id, r.timestamp, r.weight))
        actual = batched.batches | beam.FlatMap(as_tuples)
        assert_that(actual, equal_to([("u1", "i1", 100, 4.5), ("u,2", "i1", 100, 3.0), ("u3", "i2", 7, 2.0),
                                      ("u4", "i1", 5, 1000.0), ("u6", "i1", 8, 3.0)]),
                    label="batched")
        assert_that(expected, equal_to([("u1", "i1", 100, 4.5), ("u,2", "i1", 100, 3.0), ("u3", "i2", 7, 2.0),
                                        ("u4", "i1", 5, 1000.0), ("u6", "i1", 8, 3.0)]),
                    label="single")
        letters = lambda pc, label: pc | label >> beam.Map(lambda d: (d.position, d.kind, d.reason))  # noqa: E731
        both_dead = (single[DEAD_LETTER_TAG], checked[DEAD_LETTER_TAG]) | "AllSingle" >> beam.Flatten()
        assert_that(letters(batched[DEAD_LETTER_TAG], "BatchedDead"), equal_to([
            ("f.csv@10", "wrong_column_count", "expected 4 columns ['user', 'item', 'rating', 'ts'], received 3"),
            ("f.csv@40", "empty_value", "empty 'user'"),
            ("f.csv@50", "undecodable_bytes", "undecodable bytes (not UTF-8) at byte 4"),
            ("f.csv@60", "unparseable_number", "non-finite timestamp 'nan' in column 'ts'"),
            ("f.csv@70", "unparseable_number", "non-finite weight 'inf' in column 'rating'"),
            ("f.csv@80", "unknown_item_id", "item id 'i9' is not in the item catalogue"),
            ("f.csv@100", "unparseable_number", "unparseable timestamp '0x10' in column 'ts'"),
            ("f.csv@120", "implausible_timestamp", "timestamp -5 in column 'ts' is outside the plausible range "
                                                   "[0, 4102444800) seconds (1970-01-01 to 2100-01-01 UTC; timestamps "
                                                   "must be seconds since the Unix epoch, not milliseconds)"),
            ("f.csv@130", "wrong_column_count", "expected 4 columns ['user', 'item', 'rating', 'ts'], received 2"),
            ("f.csv@140", "unknown_item_id", "item id 'i\\x001' is not in the item catalogue"),
            ("f.csv@150", "invalid_csv", "unparseable CSV line: new-line character seen in unquoted field - do you "
                                         "need to open the file in universal-newline mode?"),
        ]), label="batched_dead")
        assert_that(letters(both_dead, "SingleDead") | beam.Map(lambda t: (t[0], t[1])), equal_to([
            ("f.csv@10", "wrong_column_count"), ("f.csv@40", "empty_value"), ("f.csv@50", "undecodable_bytes"),
            ("f.csv@60", "unparseable_number"), ("f.csv@70", "unparseable_number"), ("f.csv@80", "unknown_item_id"),
            ("f.csv@100", "unparseable_number"), ("f.csv@120", "implausible_timestamp"),
            ("f.csv@130", "wrong_column_count"), ("f.csv@140", "unknown_item_id"),
            ("f.csv@150", "invalid_csv"),
        ]), label="single_dead")
