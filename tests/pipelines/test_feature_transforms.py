"""Unit tests of the feature pipeline's pieces: parsing, splits, histories, vocabularies, MI, joins."""

from __future__ import annotations

import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import feature_outputs, movielens, mutual_information as mi_lib, splits
from pipelines.corpus_statistics import CorpusStatisticsFn, joint_table
from pipelines.interaction_batches import InteractionBatch
from pipelines.item_corpus import CorpusItem, DeduplicateItems, KeepKnownItems
from pipelines.sources import (
    DEAD_LETTER_TAG, DeadLetter, InputSpec, Interaction, Item, ItemFeatureColumn, ParseRecords, RawLine,
    interaction_parser, item_parser,
)

SPEC = InputSpec(
    interactions_path="unused", user_id_column="user", item_id_column="item", timestamp_column="ts",
    weight_column="rating", items_path="unused", items_id_column="item",
    item_features=(ItemFeatureColumn("genres", "genres", multivalent=True), ItemFeatureColumn("year", "year")),
)
HEADER = ("user", "item", "rating", "ts")


def _line(offset: int, data: bytes, header=HEADER) -> RawLine:
    return RawLine("interactions", "f.csv", offset, header, data)


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


def test_time_cutoffs_ties_go_to_the_later_split():
    # 10 interactions: t=1 x2, t=2 x3, t=3 x1, t=4 x4. Last 10% -> rank 9 -> t=4 (all four at t=4).
    histogram = [(4, 4), (1, 2), (3, 1), (2, 3)]
    assert splits.time_cutoffs(histogram, 0.1, 0.1) == (3, 4)  # 6 before eval; last 10% of 6 -> rank 5 -> t=3
    assert splits.time_cutoffs(histogram, 0.4, 0.5) == (2, 4)
    assert splits.time_cutoffs(histogram, 0.0, 0.0) == (5, 5)  # empty eval and validation
    assert splits.time_cutoffs([], 0.1, 0.1) == (0, 0)


def test_user_time_splits_take_the_last_fraction():
    assert splits.user_time_splits(20, 0.1, 0.1) == ["train"] * 17 + ["validation"] + ["eval"] * 2
    assert splits.user_time_splits(5, 0.1, 0.1) == ["train"] * 5  # too few for a held-out example


def test_histories_are_strictly_before_and_truncated():
    result = splits.histories([1, 1, 2, 3, 3, 5], list("abcdef"), history_length=2)
    assert result == [[], [], ["a", "b"], ["b", "c"], ["b", "c"], ["d", "e"]]


def test_build_examples_without_future_leakage():
    import tensorflow as tf

    interactions = [Interaction("u", f"i{t}", t, None, f"p@{t}") for t in (5, 1, 3, 3, 9)]
    other = [Interaction(f"v{k}", "i1", 2, 1.0, "p@0") for k in range(40)]  # Other users, in other groups.
    batches = [InteractionBatch.from_records(interactions[:2], False), InteractionBatch.from_records(interactions[2:], False)]
    with TestPipeline() as p:
        cutoffs = p | "Cutoffs" >> beam.Create([(4, 9)])
        outputs = (
            p | beam.Create(batches)
            | splits.BuildExamples(splits.SplitProtocol.TIME, 0.2, 0.2, history_length=3, cutoffs=cutoffs,
                                   emit_heldout_pairs=True)
        )
        others = (p | "Others" >> beam.Create([InteractionBatch.from_records(other, True)])
                  | "OtherExamples" >> splits.BuildExamples(splits.SplitProtocol.TIME, 0.2, 0.2, history_length=3,
                                                            cutoffs=cutoffs))
        assert_that(others[splits.USER_COUNTS_TAG] | "Users" >> beam.FlatMap(lambda users: users),
                    equal_to([(f"v{k}", {"train": 1}) for k in range(40)]), label="other_users")

        def decode(serialized, split):
            parsed = tf.train.Example.FromString(serialized).features.feature
            history = [v.decode() for v in parsed["history"].bytes_list.value]
            item = parsed["item_id"].bytes_list.value[0].decode()
            return split, item, tuple(history), parsed["timestamp"].int64_list.value[0]

        decoded = [outputs[s] | f"Flat{s}" >> beam.FlatMap(lambda examples: examples)
                   | f"Decode{s}" >> beam.Map(decode, s) for s in ("train", "validation", "eval")]
        assert_that(decoded | beam.Flatten(), equal_to([
            ("train", "i1", (), 1), ("train", "i3", ("i1",), 3), ("train", "i3", ("i1",), 3),
            ("validation", "i5", ("i1", "i3", "i3"), 5), ("eval", "i9", ("i3", "i3", "i5"), 9),
        ]), label="examples")
        assert_that(outputs[splits.TRAIN_ITEMS_TAG] | beam.CombineGlobally(splits.SumCounts()),
                    equal_to([{"i1": 1, "i3": 2}]), label="train_items")
        assert_that(outputs[splits.HELDOUT_PAIRS_TAG], equal_to([("u", "i5"), ("u", "i9")]), label="heldout")
        assert_that(outputs[splits.USER_COUNTS_TAG], equal_to([[("u", {"train": 3, "validation": 1, "eval": 1})]]),
                    label="counts")


def test_two_level_time_cutoffs_equal_the_exact_ones():
    import collections
    import random

    rng = random.Random(0)
    for _ in range(300):
        times = [rng.randint(0, rng.choice([5, 86_400 * 3, 86_400 * 500])) for _ in range(rng.randint(1, 200))]
        e, v = rng.choice([0.0, 0.1, 0.5]), rng.choice([0.0, 0.1, 0.3])
        full = collections.Counter(times)
        coarse = collections.Counter(t // splits.BUCKET_SECONDS for t in times)
        chosen = splits.candidate_buckets(coarse.items(), e, v)
        fine = [(t, c) for t, c in full.items() if t // splits.BUCKET_SECONDS in chosen]
        assert splits.time_cutoffs(splits.compressed_histogram(coarse.items(), fine, chosen), e, v) == \
            splits.time_cutoffs(full.items(), e, v)
    with TestPipeline() as p:
        times = [86_400 * d + s for d in range(30) for s in (1, 2, 3)]
        batches = [np.array(times[:40], np.int64), np.array(times[40:], np.int64)]
        result = p | beam.Create(batches) | splits.TimeCutoffs(0.1, 0.1)
        assert_that(result, equal_to([splits.time_cutoffs([(t, 1) for t in times], 0.1, 0.1)]))


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


def test_mutual_information_hand_computed():
    # Two single-valued features over 4 items: x = (a, a, b, b), y = (c, c, d, e).
    # P(a,c)=1/2, P(b,d)=1/4, P(b,e)=1/4; P(a)=P(b)=1/2; P(c)=1/2, P(d)=P(e)=1/4.
    # MI = 1/2 log(1/2 / (1/2*1/2)) + 2 * 1/4 log(1/4 / (1/2*1/4)) = log 2.
    joint = {("a", "c"): 2.0, ("b", "d"): 1.0, ("b", "e"): 1.0}
    mi, h_x, h_y = mi_lib.joint_statistics(joint)
    assert mi == pytest.approx(math.log(2))
    assert h_x == pytest.approx(math.log(2))
    assert h_y == pytest.approx(1.5 * math.log(2))  # -(1/2 log 1/2 + 2 * 1/4 log 1/4)
    # Multivalent: an item with x=(a) and y=(c, d) adds 1/2 to (a,c) and (a,d).
    assert joint_table([("a",), ("b",), ()], [("c", "d"), ("c",), ("c",)]) == (
        {("a", "c"): 0.5, ("a", "d"): 0.5, ("b", "c"): 1.0}, 2)
    # Independent features have zero MI.
    assert mi_lib.joint_statistics({("a", "c"): 1, ("a", "d"): 1, ("b", "c"): 1, ("b", "d"): 1})[0] == pytest.approx(0)


def test_corpus_statistics_symmetric_mi_with_pairwise_deletion_and_vocab():
    corpus = [
        CorpusItem("i1", (("x", ("a",)), ("y", ("c",)), ("z", ()))),
        CorpusItem("i2", (("x", ("a",)), ("y", ("c",)), ("z", ("t",)))),
        CorpusItem("i3", (("x", ("b",)), ("y", ("d",)), ("z", ()))),
        CorpusItem("i4", (("x", ("b",)), ("y", ("e",)), ("z", ("t",)))),
    ]
    with TestPipeline() as p:
        stats = p | beam.Create(corpus) | beam.CombineGlobally(CorpusStatisticsFn(["x", "y", "z"], "item_id"))

        def check(outputs):
            (output,) = outputs
            doc = output["mutual_information"]
            assert output["item_ids"] == ["i1", "i2", "i3", "i4"]
            assert output["vocab"]["y"] == [("c", 2), ("d", 1), ("e", 1)] and output["vocab"]["z"] == [("t", 2)]
            matrix, support = doc["mi"], doc["support"]
            assert all(matrix[i][j] == matrix[j][i] for i in range(4) for j in range(4))
            assert matrix[1][2] == pytest.approx(math.log(2))
            assert matrix[1][1] == pytest.approx(math.log(2)) and matrix[0][0] == pytest.approx(math.log(4))
            assert matrix[0][1] == pytest.approx(math.log(2))  # the id determines x: MI = H(x)
            assert matrix[0][3] == pytest.approx(0.0) and support[0][3] == 2  # z has one value on 2 items
            assert doc["normalized_mi"][0][1] == pytest.approx(math.log(2) / math.sqrt(math.log(4) * math.log(2)))
            assert support[1][3] == 2 and support[3][3] == 2 and support[1][2] == 4  # z missing on 2 items
            assert matrix[1][3] == pytest.approx(0.0)  # x is independent of z on the supporting items

        assert_that(stats, check)


def test_vocabulary_text_and_head_tail():
    assert feature_outputs.vocabulary_text([("b", 2), ("a", 2), ("c", 5)]) == "c\t5\na\t2\nb\t2\n"
    with pytest.raises(ValueError, match="tabs or newlines"):
        feature_outputs.vocabulary_text([("a\tb", 1)])
    freq = {f"i{k}": c for k, c in enumerate([50, 30, 10, 5, 5, 0, 0, 0, 0, 0])}
    split = feature_outputs.head_tail(freq, 0.2)
    assert split["head_items"] == ["i0", "i1"] and split["num_tail_items"] == 8
    assert split["head_interaction_share"] == pytest.approx(80 / 100)
    sparse = feature_outputs.head_tail({"a": 1, "b": 0, "c": 0, "d": 0, "e": 0, "f": 0}, 0.5)
    assert sparse["head_items"] == ["a"]  # never-seen items are tail even inside the top fraction


def test_movielens_item_adapter():
    row = movielens.movie_row({"movieId": "1", "title": "City of Lost Children, The (1995)", "genres": "A|B"})
    assert row["year"] == "1995-1999" and row["title_words"] == ["city", "lost", "children"]
    assert movielens.movie_row({"title": "Babylon 5"})["year"] == ""


def test_dead_letter_json_round_trip():
    import json

    letter = DeadLetter("items", "f:3", "invalid_json", "invalid JSON: x", "{\"a\"")
    assert json.loads(letter.to_json()) == letter._asdict()


def test_batched_interaction_parsing_equals_the_per_record_path():
    """The vectorised CSV path accepts exactly what the per-record parser accepts, with the same
    dead letters (kinds, positions, reasons)."""
    from pipelines.interaction_batches import ParseInteractionBatches

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
