"""Vocabularies, MI tables and the head/tail split (``pipelines/features/corpus_statistics.py``)."""

from __future__ import annotations

import math
import random

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from pipelines.features import corpus_statistics
from pipelines.features.corpus_statistics import CorpusStatisticsFn
from pipelines.features.item_corpus import CorpusItem

from tests.pipelines.raw_input import HEADER, SPEC, line as _line  # noqa: E402,F401


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
    assert corpus_statistics.vocabulary_text([("b", 2), ("a", 2), ("c", 5)]) == "c\t5\na\t2\nb\t2\n"
    with pytest.raises(ValueError, match="tabs or newlines"):
        corpus_statistics.vocabulary_text([("a\tb", 1)])
    freq = {f"i{k}": c for k, c in enumerate([50, 30, 10, 5, 5, 0, 0, 0, 0, 0])}
    split = corpus_statistics.head_tail(freq, 0.2)
    assert split["head_items"] == ["i0", "i1"] and split["num_tail_items"] == 8
    assert split["head_interaction_share"] == pytest.approx(80 / 100)
    sparse = corpus_statistics.head_tail({"a": 1, "b": 0, "c": 0, "d": 0, "e": 0, "f": 0}, 0.5)
    assert sparse["head_items"] == ["a"]  # never-seen items are tail even inside the top fraction


def test_coded_statistics_equal_the_item_by_item_definitions_across_merged_accumulators():
    # Random items: a single-valued feature, a multivalent one (0-3 values, repeats allowed), a sparse
    # one; three partial accumulators merged (codes translated), then compared with value_table /
    # joint_table / joint_statistics item by item.
    from pipelines.features.mutual_information import entropy, joint_statistics

    rng = random.Random(0)
    names = ["a", "tags", "sparse"]
    items = [CorpusItem(f"i{k}", (("a", (f"a{rng.randrange(5)}",)),
                                  ("tags", tuple(f"t{rng.randrange(7)}" for _ in range(rng.randrange(4)))),
                                  ("sparse", (f"s{rng.randrange(3)}",) if rng.random() < 0.3 else ())))
             for k in range(300)]
    combine = CorpusStatisticsFn(names, "item_id")
    parts = [combine.create_accumulator() for _ in range(3)]
    for k, item in enumerate(items):
        combine.add_input(parts[k % 3], item)
    output = combine.extract_output(combine.merge_accumulators(parts))
    columns = {name: [dict(item.features)[name] for item in items] for name in names}
    assert output["item_ids"] == sorted(item.item_id for item in items)
    matrix = output["mutual_information"]
    for f, name in enumerate(names):
        mass, count, support, log_sizes = corpus_statistics.value_table(columns[name])
        assert output["vocab"][name] == sorted(count.items())
        assert matrix["mi"][f + 1][f + 1] == pytest.approx(entropy(mass.values()), abs=1e-12)
        assert matrix["support"][f + 1][f + 1] == support
        for g in range(f + 1, len(names)):
            table, pair_support = corpus_statistics.joint_table(columns[name], columns[names[g]])
            mi, _, _ = joint_statistics(table)
            assert matrix["mi"][f + 1][g + 1] == pytest.approx(mi, abs=1e-12)
            assert matrix["support"][f + 1][g + 1] == pair_support
    # item_id vs tags: H(tags) minus the mean log number of tags of the items having tags (closed form).
    tag_mass, _, tag_support, tag_log_sizes = corpus_statistics.value_table(columns["tags"])
    assert matrix["mi"][0][2] == pytest.approx(entropy(tag_mass.values()) - tag_log_sizes / tag_support, abs=1e-12)


def test_an_empty_corpus_has_empty_statistics():
    combine = CorpusStatisticsFn(["x", "y"], "item_id")
    output = combine.extract_output(combine.merge_accumulators([combine.create_accumulator(),
                                                                combine.create_accumulator()]))
    assert output["item_ids"] == [] and output["vocab"] == {"x": [], "y": []}
    assert output["mutual_information"]["mi"] == [[0.0] * 3 for _ in range(3)]
