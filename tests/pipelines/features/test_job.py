"""End-to-end runs of ``python -m pipelines features`` (``pipelines/features/job.py``) on a fixture and on
ml-latest-small."""

from __future__ import annotations

import glob
import json
import os

import pytest

from pipelines.__main__ import main
from recsys_ssl import schema as fs


def _write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)


@pytest.fixture
def generic_input(tmp_path):
    """A small generic-format data set with one bad row of each kind."""
    root = tmp_path / "input"
    root.mkdir()
    rows = ["user_id,item_id,timestamp,weight"]
    for user in range(6):
        for step in range(10):
            rows.append(f"u{user},i{(user * 3 + step) % 12},{1000 + 10 * step + user},{1 + step % 5}")
    rows += [
        "u1,i1,1005",  # wrong column count
        "u1,i1,notatime,3",  # unparseable timestamp
        "u1,i999,1010,3",  # unknown item id
        ",i1,1010,3",  # empty user id
    ]
    _write(root / "interactions.csv", "\r\n".join(rows) + "\r\n")
    _write(root / "interactions.csv", b"u2,i\xe9,1010,3\n", mode="ab")  # undecodable bytes
    items = [{"item_id": f"i{k}", "category": f"c{k % 3}", "color": ["red", "blue"][k % 2],
              "labels": [f"l{k % 4}", f"l{(k + 1) % 4}"]} for k in range(14)]  # i12, i13 never interacted
    items.append({"item_id": "i3", "category": "dup"})  # duplicate id
    _write(root / "items.jsonl", "\n".join(json.dumps(i) for i in items) + "\n{broken\n")
    _write(root / "events.csv", "item,tag,ts,user\ni1,early,900,u9\ni2,late,99999,u9\ni3,x,950,u0\ni404,y,1,u1\n")
    _write(root / "input_schema.json", json.dumps({
        "interactions": {"path": "interactions.csv", "user_id": "user_id", "item_id": "item_id",
                         "timestamp": "timestamp", "weight": "weight"},
        "items": {"path": "items.jsonl", "item_id": "item_id", "features": [
            {"name": "category", "column": "category"}, {"name": "color", "column": "color"},
            {"name": "labels", "column": "labels", "multivalent": True},
            {"name": "tags", "column": "tags", "multivalent": True}]},
        "item_events": [{"path": "events.csv", "item_id": "item", "value": "tag", "timestamp": "ts",
                         "user_id": "user", "feature": "tags"}],
    }))
    return root


def _read_examples(pattern):
    import tensorflow as tf

    records = []
    for path in sorted(glob.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            records.append(tf.train.Example.FromString(raw.numpy()).features.feature)
    return records


def _run(argv):
    assert main(["features", *argv]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("beam_flags", [[], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]],
                         ids=["in_process", "two_workers"])
def test_generic_input_end_to_end(generic_input, tmp_path, beam_flags):
    out = str(tmp_path / "features")
    _run(["--input_format", "interactions", "--input", str(generic_input), "--output_dir", out,
          "--split", "time", "--eval_fraction", "0.2", "--validation_fraction", "0.25", "--history_length", "3",
          "--max_reject_fraction=0.3", "--runner=DirectRunner", *beam_flags])
    stats = json.load(open(os.path.join(out, fs.STATS_FILE)))
    inter = stats["sources"]["interactions"]
    assert inter["read"] == 65 and inter["accepted"] == 60 and inter["rejected"] == 5 and inter["reconciled"]
    assert inter["rejected_by_reason"] == {"empty_value": 1, "undecodable_bytes": 1, "unknown_item_id": 1,
                                           "unparseable_number": 1, "wrong_column_count": 1}
    items = stats["sources"]["items"]
    assert (items["read"], items["accepted"], items["rejected"]) == (16, 14, 2)
    events = stats["sources"]["item_events"]
    assert (events["read"], events["accepted"], events["rejected"]) == (4, 3, 1)
    assert events["excluded_from_features"] == {"after_eval_start": 1}
    assert stats["reconciled"]

    # Dead letters carry source, position and reason; their number matches the stats.
    dead = [json.loads(line) for path in glob.glob(os.path.join(out, "dead_letter", "*.jsonl")) for line in open(path)]
    assert len(dead) == 5 + 2 + 1
    assert {d["kind"] for d in dead if d["source"] == "items"} == {"duplicate_item_id", "invalid_json"}
    assert all(d["position"].rsplit("@", 1)[1].isdigit() and d["reason"] for d in dead)
    # Positions are byte offsets: they point at the rejected line.
    for letter in dead:
        path, offset = letter["position"].rsplit("@", 1)
        with open(path, "rb") as f:
            f.seek(int(offset))
            line = f.readline().rstrip(b"\r\n").decode("utf-8", errors="replace")
        if letter["kind"] in ("unknown_item_id", "duplicate_item_id"):  # rejected after parsing: the record
            assert json.loads(letter["raw"])["position"] == letter["position"] and json.loads(letter["raw"])["item_id"] in line
        else:
            assert line == letter["raw"]

    # Splits: a global time cutoff; every eval example is at or after every train example.
    split_examples = {s: _read_examples(os.path.join(out, f"{s}-*.tfrecord.gz")) for s in fs.SPLITS}
    assert sum(len(v) for v in split_examples.values()) == 60
    assert sum(v["examples"] for v in stats["splits"].values()) == 60
    times = {s: [e["timestamp"].int64_list.value[0] for e in v] for s, v in split_examples.items()}
    assert max(times["train"]) < min(times["validation"]) <= max(times["validation"]) < min(times["eval"])
    assert len(split_examples["eval"]) == 12 and len(split_examples["validation"]) == 12
    # Histories: previous items of the same user strictly before the example's time, at most 3.
    for example in split_examples["eval"]:
        user = example["user_id"].bytes_list.value[0].decode()
        t = example["timestamp"].int64_list.value[0]
        history = [h.decode() for h in example["history"].bytes_list.value]
        step = (t - 1000 - int(user[1:])) // 10
        expected = [f"i{(int(user[1:]) * 3 + s) % 12}" for s in range(max(0, step - 3), step)]
        assert history == expected

    # Item corpus: every catalogue item (incl. never-interacted), tags only from before eval start.
    corpus = {e["item_id"].bytes_list.value[0].decode(): e for e in _read_examples(os.path.join(out, "items-*.tfrecord.gz"))}
    assert sorted(corpus) == sorted(f"i{k}" for k in range(14))
    assert [v.decode() for v in corpus["i1"]["tags"].bytes_list.value] == ["early"]
    assert list(corpus["i2"]["tags"].bytes_list.value) == []
    assert corpus["i3"]["category"].bytes_list.value == [b"c0"]  # the first definition won

    # Vocabularies, schema, MI, head/tail.
    schema = fs.FeatureSchema.load(out)
    assert schema.item_feature_names == ["item_id", "category", "color", "labels", "tags"] and schema.has_weight
    values, counts = fs.read_vocab(os.path.join(out, "vocab", "item_id.txt"))
    assert len(values) == 14 and counts[values.index("i12")] == 0
    assert sum(counts) == len(split_examples["train"])
    assert os.path.isfile(os.path.join(out, "vocab", "user_id.txt"))
    mi = json.load(open(os.path.join(out, fs.MI_FILE)))
    assert mi["features"] == schema.item_feature_names
    assert all(mi["mi"][i][j] == mi["mi"][j][i] for i in range(5) for j in range(5))
    head = stats["head_tail"]
    assert head["num_head_items"] + head["num_tail_items"] == 14 and head["num_head_items"] == 3
    assert not glob.glob(os.path.join(out, "beam-temp-*"))


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    assert main(["features", "--input_format", "interactions", "--output_dir", str(tmp_path / "o")]) == 2
    assert "needs --input DIR (holding input_schema.json) or --input_schema FILE" in capsys.readouterr().err
    assert main(["features", "--input_format", "interactions", "--input", str(tmp_path),
                 "--output_dir", str(tmp_path / "o")]) == 2
    assert f"no input schema at {tmp_path / 'input_schema.json'}" in capsys.readouterr().err
    (tmp_path / "schema.json").write_text("{}")  # the name before issue 24
    assert main(["features", "--input_format", "interactions", "--input", str(tmp_path),
                 "--output_dir", str(tmp_path / "o")]) == 2
    assert "was renamed input_schema.json" in capsys.readouterr().err
    assert main(["features", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    assert "no MovieLens directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_movielens_small_reconciles(movielens_dir, tmp_path):
    out = str(tmp_path / "ml")
    _run(["--input_format", "movielens", "--input", movielens_dir, "--output_dir", out, "--split", "user_time",
          "--runner=DirectRunner"])
    stats = json.load(open(os.path.join(out, fs.STATS_FILE)))
    ratings = stats["sources"]["interactions"]
    assert ratings["read"] == 100_836 and ratings["accepted"] == 100_836 and ratings["rejected"] == 0
    assert sum(v["examples"] for v in stats["splits"].values()) == 100_836
    assert stats["splits"]["eval"]["users"] == 610
    assert stats["num_items"] == 9_742 and stats["sources"]["items"]["accepted"] == 9_742
    assert stats["sources"]["item_events"]["read"] == 3_683 and stats["reconciled"]
    items = _read_examples(os.path.join(out, "items-*.tfrecord.gz"))
    assert len(items) == 9_742
    mi = json.load(open(os.path.join(out, fs.MI_FILE)))
    assert mi["features"] == ["item_id", "genres", "year", "title_words", "tags"]


# Issue 14: bad input never silently changes what runs.

def _schema(root) -> dict:
    return json.loads((root / "input_schema.json").read_text())


def _features(root, tmp_path, *extra):
    return main(["features", "--input_format", "interactions", "--input", str(root), "--output_dir",
                 str(tmp_path / "features"), "--split", "time", "--runner=DirectRunner", *extra])


def test_a_misspelt_beam_option_is_a_usage_error(tmp_path, capsys):
    assert main(["features", "--output_dir", str(tmp_path / "o"), "--runner=DirectRunner",
                 "--direct_num_worker=2"]) == 2
    assert "unrecognized argument --direct_num_worker" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_valid_beam_options_are_accepted():
    from pipelines.beam_args import unknown_arguments

    assert unknown_arguments(["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK",
                              "--direct_num_workers=2", "--flink_master=host:8081", "--project", "p",
                              "--temp_location=gs://b/tmp"]) == []


@pytest.mark.parametrize("edit, field", [
    (lambda s: s["interactions"].update(user_id="userid"), "interactions.user_id names column 'userid'"),
    (lambda s: s["interactions"].update(weight="rating"), "interactions.weight names column 'rating'"),
    (lambda s: s["items"]["features"][1].update(column="colour"), "items.features[1].column names column 'colour'"),
    (lambda s: s["items"]["features"][2].update(multivalent="false"),
     'items.features[2].multivalent must be true or false, received "false"'),
    (lambda s: s["interactions"].update(timestmap="ts"), "unknown field interactions.'timestmap'"),
    (lambda s: s["item_events"][0].update(value="tagg"), "item_events[0].value names column 'tagg'"),
])
def test_schema_mistakes_fail_before_the_run_naming_file_and_field(generic_input, tmp_path, capsys, edit, field):
    schema = _schema(generic_input)
    edit(schema)
    (generic_input / "input_schema.json").write_text(json.dumps(schema))
    assert _features(generic_input, tmp_path) == 2
    err = capsys.readouterr().err
    assert field in err and str(generic_input / "input_schema.json") in err
    assert not (tmp_path / "features").exists()


def test_schema_json_syntax_errors_name_the_file(generic_input, tmp_path, capsys):
    (generic_input / "input_schema.json").write_text('{"interactions": {"path": "interactions.csv",}')
    assert _features(generic_input, tmp_path) == 2
    assert f"{generic_input / 'input_schema.json'}: not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_a_lone_surrogate_in_items_jsonl_is_a_dead_letter(generic_input, tmp_path):
    with open(generic_input / "items.jsonl", "a") as f:
        f.write('{"item_id": "i50", "category": "\\ud800", "color": "red", "labels": []}\n')
    assert _features(generic_input, tmp_path, "--max_reject_fraction=0.3") == 0
    out = tmp_path / "features"
    stats = json.loads((out / "stats.json").read_text())
    items = stats["sources"]["items"]
    assert items["rejected_by_reason"]["invalid_unicode"] == 1 and items["reconciled"] and items["read"] == 17
    dead = [json.loads(line) for path in glob.glob(str(out / "dead_letter" / "*.jsonl")) for line in open(path)]
    (letter,) = [d for d in dead if d["kind"] == "invalid_unicode"]
    path, offset = letter["position"].rsplit("@", 1)
    with open(path, "rb") as f:
        f.seek(int(offset))
        assert b"\\ud800" in f.readline()
    assert not glob.glob(str(out / "beam-temp-*"))


@pytest.mark.slow
def test_too_many_rejected_rows_fail_the_job_with_the_counts(generic_input, tmp_path, capsys):
    # The fixture rejects 5 of 65 interactions (7.7%), 2 of 16 items, 1 of 4 item events.
    assert _features(generic_input, tmp_path, "--max_reject_fraction=0.05") == 1
    assert "interactions: 5 of 65 records rejected (7.7%), more than --max_reject_fraction 0.05" in capsys.readouterr().err
    schema = _schema(generic_input)
    (generic_input / "bad.csv").write_text("user_id,item_id,timestamp,weight\nu1,i1,x,1\nu2,i2,y,1\n")
    schema["interactions"]["path"] = "bad.csv"
    (generic_input / "input_schema.json").write_text(json.dumps(schema))
    capsys.readouterr()
    assert _features(generic_input, tmp_path / "again", "--max_reject_fraction=1") == 1
    assert "interactions: every record was rejected (2 of 2)" in capsys.readouterr().err


def feature_snapshot(out) -> dict:
    """Everything a run wrote that must not depend on the input format or the runner: serialized
    examples and items (sorted), vocabularies, MI, and the stats without file positions."""
    import tensorflow as tf

    snapshot = {}
    for prefix in (*fs.SPLITS, "items"):
        records = []
        for path in sorted(glob.glob(os.path.join(str(out), f"{prefix}-*.tfrecord.gz"))):
            records += [raw.numpy() for raw in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        snapshot[prefix] = sorted(records)
    for path in sorted(glob.glob(os.path.join(str(out), "vocab", "*.txt"))):
        snapshot[os.path.basename(path)] = open(path).read()
    snapshot["mi"] = open(os.path.join(str(out), fs.MI_FILE)).read()
    stats = json.load(open(os.path.join(str(out), fs.STATS_FILE)))
    snapshot["stats"] = {k: v for k, v in stats.items() if k != "options"}
    snapshot["dead_letter_kinds"] = sorted(
        (json.loads(line)["source"], json.loads(line)["kind"])
        for path in glob.glob(os.path.join(str(out), "dead_letter", "*.jsonl")) for line in open(path))
    return snapshot


SYNTHETIC_SMALL = ["--num_users", "60", "--num_items", "80", "--num_interactions", "1500", "--seed", "3"]


@pytest.mark.slow
def test_parquet_input_gives_the_same_features_as_csv_and_jsonl(tmp_path):
    snapshots = {}
    for fmt in ("csv", "parquet"):
        data = tmp_path / f"data_{fmt}"
        assert main(["synthetic", "--output_dir", str(data), *SYNTHETIC_SMALL, "--format", fmt]) == 0
        assert glob.glob(str(data / f"interactions.{fmt}")) and glob.glob(str(data / "items.*"))
        out = tmp_path / f"features_{fmt}"
        _run(["--input_format", "interactions", "--input", str(data), "--output_dir", str(out), "--split", "time",
              "--runner=DirectRunner"])
        snapshots[fmt] = feature_snapshot(out)
    assert snapshots["csv"]["stats"]["sources"]["interactions"]["read"] == 1500
    assert len(snapshots["csv"]["items"]) == 80 and snapshots["csv"]["train"]
    assert snapshots["parquet"] == snapshots["csv"]


@pytest.mark.slow
def test_parquet_rows_are_dead_lettered_with_their_row_index(generic_input, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"user_id": f"u{k % 5}", "item_id": f"i{k % 12}", "timestamp": str(2000 + k), "weight": 1 + k % 5}
            for k in range(40)]
    rows[7]["user_id"] = None  # missing user id
    rows[19]["item_id"] = "i999"  # unknown item
    rows[33]["timestamp"] = "soon"  # unparseable timestamp
    pq.write_table(pa.Table.from_pylist(rows), generic_input / "interactions.parquet", row_group_size=16)
    schema = json.loads((generic_input / "input_schema.json").read_text())
    schema["interactions"]["path"] = "interactions.parquet"
    (generic_input / "input_schema.json").write_text(json.dumps(schema))
    out = tmp_path / "features"
    _run(["--input_format", "interactions", "--input", str(generic_input), "--output_dir", str(out),
          "--split", "time", "--max_reject_fraction=0.3", "--runner=DirectRunner"])
    stats = json.load(open(out / fs.STATS_FILE))
    inter = stats["sources"]["interactions"]
    assert (inter["read"], inter["accepted"], inter["rejected"]) == (40, 37, 3) and inter["reconciled"]
    dead = [json.loads(line) for path in glob.glob(str(out / "dead_letter" / "*.jsonl")) for line in open(path)]
    positions = sorted((d["position"].rsplit("@", 1)[1], d["kind"]) for d in dead if d["source"] == "interactions")
    assert positions == [("19", "unknown_item_id"), ("33", "unparseable_number"), ("7", "invalid_value")]
    assert all(d["position"].startswith(str(generic_input / "interactions.parquet")) for d in dead
               if d["source"] == "interactions")
    # A truncated Parquet file beside it is one dead letter, not a failed job.
    data = (generic_input / "interactions.parquet").read_bytes()
    (generic_input / "more.parquet").write_bytes(data[: len(data) // 2])
    schema["interactions"]["path"] = "*.parquet"
    (generic_input / "input_schema.json").write_text(json.dumps(schema))
    out = tmp_path / "features_truncated"
    _run(["--input_format", "interactions", "--input", str(generic_input), "--output_dir", str(out),
          "--split", "time", "--max_reject_fraction=0.3", "--runner=DirectRunner"])
    inter = json.load(open(out / fs.STATS_FILE))["sources"]["interactions"]
    assert inter["rejected_by_reason"]["unreadable_file"] == 1 and inter["read"] == 41 and inter["reconciled"]


PORTABLE = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]


@pytest.mark.slow
def test_portable_runner_gives_the_same_features_as_the_direct_runner(generic_input, tmp_path):
    """Beam's portable runner (Runner API + Fn API over gRPC, the path Flink, Spark and Dataflow
    Runner v2 take) with an embedded job server and a loopback SDK harness."""
    snapshots = {}
    for name, flags in (("direct", ["--runner=DirectRunner"]), ("portable", PORTABLE)):
        out = tmp_path / name
        _run(["--input_format", "interactions", "--input", str(generic_input), "--output_dir", str(out),
              "--split", "time", "--eval_fraction", "0.2", "--history_length", "3", "--max_reject_fraction=0.3",
              *flags])
        snapshots[name] = feature_snapshot(out)
    assert snapshots["direct"]["stats"]["sources"]["interactions"]["read"] == 65
    assert len(snapshots["direct"]["dead_letter_kinds"]) == 8
    assert snapshots["portable"] == snapshots["direct"]
