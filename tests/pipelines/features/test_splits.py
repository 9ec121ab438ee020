"""Time cutoffs, splits, histories and examples (``pipelines/features/splits.py``)."""

from __future__ import annotations


import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.features import splits
from pipelines.features.interaction_batches import InteractionBatch
from pipelines.io.records import (
    Interaction,
)

from tests.pipelines.raw_input import HEADER, SPEC, line as _line  # noqa: E402,F401


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
