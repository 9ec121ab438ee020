"""Guarded record parsing (``pipelines/io/records.py``, with its readers): no single record kills a Beam job
(issue 23, item 1 and the input items of item 6).

Each test feeds one pathological record among good ones and checks that the job finishes, the
record is a dead letter with a reason and a position, and read = accepted + rejected. All of
these failed on main 9c7fa44 (the job crashed, or the record was silently lost or accepted).
"""

from __future__ import annotations

import datetime
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.io.input_schema import read_columns
from pipelines.io.readers import ReadSourceLines
from pipelines.io.records import (
    COUNTS_TAG, DEAD_LETTER_TAG, InputSpec, ItemFeatureColumn, ParseRecords, interaction_parser, item_parser,
)

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads on main.
HUGE_INT = "1" * 4301  # ValueError: exceeds the limit (4300 digits) for integer string conversion.
SPEC = InputSpec(
    interactions_path="unused", user_id_column="user_id", item_id_column="item_id", timestamp_column="ts",
    weight_column=None, items_path="unused", items_id_column="item_id",
    item_features=(ItemFeatureColumn("genre", "genre"),),
)


def _run(path, parse_fn, expected_records, expected_dead, expected_read, source="interactions"):
    with TestPipeline() as p:
        parsed = p | ReadSourceLines(source, path) | ParseRecords(parse_fn)
        assert_that(parsed.records | beam.Map(lambda r: r[:3]), equal_to(expected_records), label="records")
        dead = parsed[DEAD_LETTER_TAG] | "Dead" >> beam.Map(lambda d: (d.position.rsplit("@", 1)[1], d.kind))
        assert_that(dead, equal_to(expected_dead), label="dead")
        read = parsed[COUNTS_TAG] | beam.Map(lambda kv: kv[1]) | beam.CombineGlobally(sum)
        assert_that(read, equal_to([expected_read]), label="read")


def test_items_jsonl_with_a_deep_and_a_huge_int_line_rejects_only_those(tmp_path):
    lines = [json.dumps({"item_id": "i1", "genre": "a"}), '{"item_id": "i2", "genre": ' + DEEP + "}",
             '{"item_id": "i3", "n": ' + HUGE_INT + "}", json.dumps({"item_id": "i4", "genre": "b"})]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    _run(str(path), item_parser(SPEC), [("i1", (("genre", ("a",)),), f"{path}@0")[:3],
                                        ("i4", (("genre", ("b",)),), f"{path}@{offsets[3]}")],
         [(str(offsets[1]), "too_deeply_nested"), (str(offsets[2]), "invalid_json")], 4, source="items")


def test_schema_column_check_survives_a_deep_line_in_the_first_1000(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"item_id": "i1", "genre": "a"}\n{"x": ' + DEEP + '}\n{"item_id": "i2", "year": 1}\n')
    assert read_columns(str(path)) == (str(path), {"item_id", "genre", "year"})


def test_jsonl_with_a_utf8_bom_keeps_its_first_record(tmp_path):
    path = tmp_path / "interactions.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"user_id": "u1", "item_id": "i1", "ts": 5}\n'
                     b'{"user_id": "u2", "item_id": "i2", "ts": 6}\n')
    _run(str(path), interaction_parser(SPEC), [("u1", "i1", 5), ("u2", "i2", 6)], [], 2)


def test_a_quoted_newline_in_a_csv_field_stays_in_one_record(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_bytes(b'user_id,item_id,ts\n"u\n1",i1,5\nu2,"i""2",6\r\n"u3,i3,7\nu4,5" tv,8\n')
    # "u3 never closes its quote: only that line is lost; 5" (a quote inside a field) is text.
    _run(str(path), interaction_parser(SPEC), [("u\n1", "i1", 5), ("u2", 'i"2', 6), ("u4", '5" tv', 8)],
         [("43", "wrong_column_count")], 4)


def _parquet(path, seconds: list[int]):
    table = pa.table({"user_id": [f"u{i}" for i in range(len(seconds))], "item_id": ["i1"] * len(seconds),
                      "ts": pa.array(seconds, pa.timestamp("s"))})
    pq.write_table(table, path, compression="none")


def test_parquet_out_of_range_and_implausible_timestamps_are_dead_letters(tmp_path):
    path = str(tmp_path / "interactions.parquet")
    year_1918 = int(datetime.datetime(1918, 5, 1, tzinfo=datetime.timezone.utc).timestamp())
    _parquet(path, [1_000_000_000, 10**12, year_1918, 1_000_000_001])  # 10**12 s: OverflowError on main.
    _run(path, interaction_parser(SPEC), [("u0", "i1", 1_000_000_000), ("u3", "i1", 1_000_000_001)],
         [("1", "invalid_value"), ("2", "implausible_timestamp")], 4)


def test_csv_implausible_timestamps_are_rejected_on_the_batched_path_too(tmp_path):
    from pipelines.features.interaction_batches import parse_csv_block
    from pipelines.io.readers import RawLine

    header = ("user_id", "item_id", "ts")
    lines = [RawLine("interactions", "f.csv", i, header, data) for i, data in
             enumerate([b"u1,i1,5", b"u2,i2,-1625097600", b"u3,i3,1700000000000", b"u4,i4,1700000000"])]
    batch, slow = parse_csv_block(lines, ("user_id", "item_id", "ts", None))
    assert batch.timestamps.tolist() == [5, 1_700_000_000] and slow == [1, 2]
    _run_lines(lines, [("u1", "i1", 5), ("u4", "i4", 1_700_000_000)],
               [("1", "implausible_timestamp"), ("2", "implausible_timestamp")])


def _run_lines(lines, expected_records, expected_dead):
    with TestPipeline() as p:
        parsed = p | beam.Create(lines) | ParseRecords(interaction_parser(SPEC))
        assert_that(parsed.records | beam.Map(lambda r: r[:3]), equal_to(expected_records), label="records")
        dead = parsed[DEAD_LETTER_TAG] | "Dead" >> beam.Map(lambda d: (d.position.rsplit("@", 1)[1], d.kind))
        assert_that(dead, equal_to(expected_dead), label="dead")


def test_interaction_batches_survive_deep_and_huge_jsonl_lines(tmp_path):
    """The feature pipeline's batched interaction path (JSONL goes through the per-record parser)."""
    from pipelines.features.interaction_batches import ParseInteractionBatches

    lines = ['{"user_id": "u1", "item_id": "i1", "ts": 5}', '{"user_id": ' + DEEP + "}",
             '{"user_id": "u2", "item_id": "i1", "ts": ' + HUGE_INT + "}", '{"user_id": "u3", "item_id": "i1", "ts": 1e300}']
    path = tmp_path / "interactions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with TestPipeline() as p:
        known = beam.pvalue.AsSingleton(p | "Known" >> beam.Create([frozenset({"i1"})]))
        out = (p | ReadSourceLines("interactions", str(path), 10)
               | ParseInteractionBatches("interactions", interaction_parser(SPEC), ("user_id", "item_id", "ts", None),
                                         known))
        assert_that(out.batches | beam.FlatMap(lambda b: b.user_ids.tolist()), equal_to(["u1"]), label="ok")
        assert_that(out[DEAD_LETTER_TAG] | beam.Map(lambda d: d.kind),
                    equal_to(["too_deeply_nested", "invalid_json", "implausible_timestamp"]), label="dead")
