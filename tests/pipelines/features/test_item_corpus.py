"""De-duplicated items and unknown ids (``pipelines/features/item_corpus.py``)."""

from __future__ import annotations


import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.features.item_corpus import DeduplicateItems, KeepKnownItems
from pipelines.io.records import (
    DEAD_LETTER_TAG, Interaction, Item,
)

from tests.pipelines.raw_input import HEADER, SPEC, line as _line  # noqa: E402,F401


def test_items_deduplicated_and_unknown_ids_dead_lettered():
    items = [Item("i1", (), "items.csv@20"), Item("i1", (), "items.csv@100"), Item("i2", (), "items.csv@3")]
    interactions = [Interaction("u", "i1", 1, None, "r@2"), Interaction("u", "i9", 2, None, "r@3")]
    with TestPipeline() as p:
        unique = p | "I" >> beam.Create(items) | DeduplicateItems("items")
        assert_that(unique["items"] | beam.Map(lambda i: i.position), equal_to(["items.csv@20", "items.csv@3"]),
                    label="items")
        assert_that(unique[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.position, d.kind)),
                    equal_to([("items.csv@100", "duplicate_item_id")]), label="duplicates")
        known = beam.pvalue.AsDict(unique["items"] | beam.Map(lambda i: (i.item_id, None)))
        checked = p | "R" >> beam.Create(interactions) | KeepKnownItems("interactions", known)
        assert_that(checked.known | beam.Map(lambda r: r.item_id), equal_to(["i1"]), label="kept")
        assert_that(checked[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.source, d.position, d.kind)),
                    equal_to([("interactions", "r@3", "unknown_item_id")]), label="unknown")
