"""``pipelines.synthetic.groups`` (and the writing in ``pipelines.synthetic.output``): format, counts,
determinism, power law, dependence structure, CLI.

Every property is measured on the written files (as the feature pipeline will read them), with
this file's own numpy code, not with the generator's internals.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re

import numpy as np
import pytest

from pipelines.__main__ import main
from pipelines.synthetic import groups as synthetic

SMALL = dict(num_users=400, num_items=3000, num_interactions=30_000, seed=11)


def _config(output_dir, **overrides) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(output_dir=str(output_dir), **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    files = synthetic.generate(_config(tmp_path_factory.mktemp("synthetic")))
    with open(files.schema) as f:
        schema = json.load(f)
    with open(files.items) as f:
        items = [json.loads(line) for line in f]
    with open(files.interactions[0], newline="") as f:
        rows = list(csv.DictReader(f))
    return files, schema, items, rows


def _read_bytes(directory, name):
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


def _values(item: dict, feature: str) -> list[str]:
    value = item[feature]
    return list(value) if isinstance(value, list) else [value]


def _mutual_information(items: list[dict], a: str, b: str, permutation: np.ndarray | None = None) -> float:
    """MI in nats; each item has unit mass spread over the cross product of its values of a and b.

    With ``permutation``, b's values are taken from item ``permutation[i]`` (the independence null).
    """
    left, right, mass = [], [], []
    for i, item in enumerate(items):
        values_a = _values(item, a)
        values_b = _values(items[i if permutation is None else permutation[i]], b)
        for x in values_a:
            for y in values_b:
                left.append(x)
                right.append(y)
                mass.append(1.0 / (len(values_a) * len(values_b)))
    _, x_codes = np.unique(np.array(left), return_inverse=True)
    _, y_codes = np.unique(np.array(right), return_inverse=True)
    _, joint_codes = np.unique(np.stack([x_codes, y_codes], axis=1), axis=0, return_inverse=True)
    mass = np.array(mass) / len(items)
    p_joint = np.bincount(joint_codes.ravel(), weights=mass)
    p_x, p_y = np.bincount(x_codes, weights=mass), np.bincount(y_codes, weights=mass)
    pairs = np.unique(np.stack([x_codes, y_codes], axis=1), axis=0)
    return float(np.sum(p_joint * np.log(p_joint / (p_x[pairs[:, 0]] * p_y[pairs[:, 1]]))))


def test_schema_and_file_format(generated):
    files, schema, items, rows = generated
    assert schema["interactions"] == {"path": "interactions.csv", "user_id": "user_id", "item_id": "item_id",
                                      "timestamp": "timestamp", "weight": "weight"}
    assert schema["items"]["path"] == "items.jsonl" and schema["items"]["item_id"] == "item_id"
    assert schema["item_events"] == []
    features = {f["name"]: f for f in schema["items"]["features"]}
    assert set(features) == set(synthetic.ITEM_FEATURES) and len(features) == 7
    assert features["tags"] == {"name": "tags", "column": "tags", "multivalent": True, "separator": "|"}
    assert all(not f["multivalent"] and f["column"] == name for name, f in features.items() if name != "tags")
    base = os.path.dirname(files.schema)
    assert os.path.join(base, schema["items"]["path"]) == files.items
    assert glob.glob(os.path.join(base, schema["interactions"]["path"])) == list(files.interactions)
    with open(files.interactions[0], newline="") as f:
        assert f.readline() == "user_id,item_id,timestamp,weight\n"
    for item in items:
        assert set(item) == {"item_id", *synthetic.ITEM_FEATURES}
        assert re.fullmatch(r"i\d{7}", item["item_id"])
        assert isinstance(item["tags"], list) and 1 <= len(item["tags"]) <= 5
        assert len(set(item["tags"])) == len(item["tags"])
        assert all(isinstance(item[f], str) and item[f] for f in synthetic.ITEM_FEATURES if f != "tags")
        assert item["subcategory"].startswith(item["category"] + "/")  # nested
    assert all(re.fullmatch(r"u\d{6}", row["user_id"]) for row in rows)
    assert {row["weight"] for row in rows} <= {"1", "2", "3", "4", "5"}
    assert len({row["weight"] for row in rows}) == 5
    assert sorted(os.listdir(base)) == ["generation.json", "input_schema.json", "interactions.csv", "items.jsonl"]


def test_feature_pipeline_reader_accepts_every_row(generated):
    """The feature pipeline's own parsers (pipelines.io.records) read every row without a dead letter."""
    from pipelines.io import records as sources

    files, _, items, rows = generated
    spec = sources.InputSpec.from_schema_file(files.schema)
    assert spec.weight_column == "weight" and [f.name for f in spec.item_features] == list(synthetic.ITEM_FEATURES)
    parse_interaction, parse_item = sources.interaction_parser(spec), sources.item_parser(spec)
    interactions = []
    for path in sorted(glob.glob(spec.interactions_path)):
        with open(path, "rb") as f:
            header = tuple(f.readline().decode().rstrip("\n").split(","))
            for number, data in enumerate(f, 2):
                line = sources.RawLine("interactions", path, number, header, data.rstrip(b"\r\n"))
                interactions.append(parse_interaction(line, sources.parse_row(line)))
    assert [(i.user_id, i.item_id, i.timestamp, i.weight) for i in interactions] == [
        (r["user_id"], r["item_id"], int(r["timestamp"]), float(r["weight"])) for r in rows]
    with open(spec.items_path, "rb") as f:
        for number, (data, item) in enumerate(zip(f, items), 1):
            line = sources.RawLine("items", spec.items_path, number, None, data.rstrip(b"\n"))
            parsed = parse_item(line, sources.parse_row(line))
            assert parsed.item_id == item["item_id"]
            assert dict(parsed.features) == {name: tuple(_values(item, name)) for name in synthetic.ITEM_FEATURES}


def test_counts_ids_and_timestamps(generated):
    files, _, items, rows = generated
    assert len(rows) == SMALL["num_interactions"]
    item_ids = [item["item_id"] for item in items]
    assert len(set(item_ids)) == len(item_ids) == SMALL["num_items"]
    assert {row["item_id"] for row in rows} <= set(item_ids)
    assert len({row["user_id"] for row in rows}) == SMALL["num_users"]  # every user interacts
    timestamps = np.array([int(row["timestamp"]) for row in rows])
    config = _config("unused")
    assert config.start_timestamp <= timestamps.min() and timestamps.max() <= config.end_timestamp
    assert np.all(np.diff(timestamps) >= 0)  # the log is in time order
    per_user: dict[str, list[int]] = {}
    for row in rows:
        per_user.setdefault(row["user_id"], []).append(int(row["timestamp"]))
    assert all(np.all(np.diff(t) > 0) for t in per_user.values())  # strictly increasing per user
    gaps = np.concatenate([np.diff(t) for t in per_user.values()])
    assert np.median(gaps) < 3600 and np.percentile(gaps, 95) > 86_400  # sessions: short gaps and long breaks
    stats = json.load(open(files.summary))["stats"]
    assert stats["num_interactions"] == len(rows) and stats["num_items"] == len(items)


def test_power_law_popularity(generated):
    _, _, items, rows = generated
    counts = {item["item_id"]: 0 for item in items}
    for row in rows:
        counts[row["item_id"]] += 1
    per_item = np.sort(np.array(list(counts.values())))[::-1]
    top_20pct = per_item[: len(per_item) // 5].sum() / per_item.sum()
    assert top_20pct > 0.6, top_20pct  # a head of popular items
    never = int((per_item == 0).sum())
    cold = round(_config("unused").cold_item_fraction * len(items))
    assert never > cold  # the cold items plus tail items that were never drawn
    assert (per_item == 1).sum() > 0.05 * len(items)  # a long sparse tail
    assert per_item[0] > 50 * np.median(per_item[per_item > 0])


def test_dependence_structure(generated):
    """Dependent pairs carry clearly more MI than the permutation null; independent pairs do not."""
    files, _, items, _ = generated
    rng = np.random.default_rng(0)
    permutations = [rng.permutation(len(items)) for _ in range(3)]

    def excess(a, b):
        null = np.mean([_mutual_information(items, a, b, p) for p in permutations])
        return _mutual_information(items, a, b) - null

    strong = {pair: excess(*pair) for pair in [("category", "subcategory"), ("subcategory", "brand"),
                                                 ("category", "brand")]}
    via_topic = {pair: excess(*pair) for pair in [("category", "tags"), ("subcategory", "tags"), ("brand", "tags")]}
    weak = {pair: excess(*pair) for pair in [("category", "year"), ("subcategory", "year")]}
    independent = {pair: excess(*pair) for pair in [
        ("price_bucket", "language"), ("category", "price_bucket"), ("category", "language"),
        ("brand", "language"), ("tags", "price_bucket"), ("year", "language"), ("subcategory", "price_bucket")]}
    assert min(strong.values()) > 1.0, strong
    assert min(via_topic.values()) > 0.5, via_topic
    assert 0.03 < min(weak.values()) and max(weak.values()) < 0.5, weak
    assert max(abs(v) for v in independent.values()) < 0.02, independent
    # generation.json records the same plug-in MI (the feature pipeline's definition).
    recorded = json.load(open(files.summary))["stats"]["item_feature_mi_nats"]
    for a, b in [("category", "subcategory"), ("brand", "tags"), ("category", "year"), ("price_bucket", "language")]:
        key = f"{a}|{b}" if f"{a}|{b}" in recorded else f"{b}|{a}"
        assert recorded[key] == pytest.approx(_mutual_information(items, a, b), abs=2e-4), key


def test_item_features_predict_users(generated):
    """Users concentrate on few categories, far beyond what popularity alone explains."""
    _, _, items, rows = generated
    category = {item["item_id"]: item["category"] for item in items}
    users = np.array([row["user_id"] for row in rows])
    interacted = np.array([row["item_id"] for row in rows])

    def mean_top_category_share(item_column):
        shares = []
        for user in np.unique(users):
            mine = item_column[users == user]
            if len(mine) >= 10:
                _, counts = np.unique([category[i] for i in mine], return_counts=True)
                shares.append(counts.max() / len(mine))
        return float(np.mean(shares))

    observed = mean_top_category_share(interacted)
    shuffled = mean_top_category_share(np.random.default_rng(0).permutation(interacted))  # same popularity
    assert observed > shuffled + 0.2, (observed, shuffled)


def test_deterministic_under_seed(tmp_path):
    small = dict(num_users=50, num_items=300, num_interactions=2000)
    first = synthetic.generate(_config(tmp_path / "a", **small))
    second = synthetic.generate(_config(tmp_path / "b", **small))
    other = synthetic.generate(_config(tmp_path / "c", **small, seed=12))
    for name in ("input_schema.json", "items.jsonl", "interactions.csv"):
        assert _read_bytes(tmp_path / "a", name) == _read_bytes(tmp_path / "b", name)
    assert first.stats == second.stats
    assert _read_bytes(tmp_path / "a", "interactions.csv") != _read_bytes(tmp_path / "c", "interactions.csv")
    assert _read_bytes(tmp_path / "a", "items.jsonl") != _read_bytes(tmp_path / "c", "items.jsonl")
    assert other.stats["num_interactions"] == 2000


def test_shards_without_weights_and_overwrite(tmp_path):
    small = dict(num_users=50, num_items=300, num_interactions=2000)
    files = synthetic.generate(_config(tmp_path, **small, num_shards=3, with_weights=False))
    schema = json.load(open(files.schema))
    assert "weight" not in schema["interactions"]
    assert sorted(glob.glob(str(tmp_path / schema["interactions"]["path"]))) == sorted(files.interactions)
    total = 0
    for path in files.interactions:
        with open(path) as f:
            assert f.readline() == "user_id,item_id,timestamp\n"
            total += sum(1 for _ in f)
    assert total == 2000
    with pytest.raises(ValueError, match="already holds a generated data set"):
        synthetic.generate(_config(tmp_path, **small))
    before = _read_bytes(tmp_path, "items.jsonl")
    synthetic.generate(_config(tmp_path, **small, overwrite=True))
    assert sorted(os.listdir(tmp_path)) == ["generation.json", "input_schema.json", "interactions.csv", "items.jsonl"]
    assert _read_bytes(tmp_path, "items.jsonl") == before  # items do not depend on the interaction knobs


def test_refuses_foreign_schema_and_bad_configs(tmp_path):
    (tmp_path / "input_schema.json").write_text("{}")
    with pytest.raises(ValueError, match="did not write"):
        synthetic.generate(_config(tmp_path, overwrite=True))
    assert (tmp_path / "input_schema.json").read_text() == "{}"
    bad = [({"num_interactions": 10}, "every user has at least one interaction"),
           ({"num_items": 0}, "num_items must be >= 1, received 0"),
           ({"exploration": 1.5}, r"exploration must be in \[0, 1\], received 1.5"),
           ({"tags_per_topic": 400}, "tags_per_topic"),
           ({"cold_item_fraction": 1.0}, "cold_item_fraction")]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            _config(tmp_path, **overrides)
    with pytest.raises(ValueError, match="output_dir is required"):
        synthetic.generate(dataclasses.replace(_config(tmp_path), output_dir=""))


def test_cli(tmp_path, capsys):
    assert main(["synthetic", "--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ("--output_dir", "--num_users", "--num_items", "--num_interactions", "--seed",
                 "--zipf_exponent", "--num_topics", "--with_weights", "--overwrite"):
        assert flag in help_text
    argv = ["synthetic", "--output_dir", str(tmp_path / "cli"), "--num_users", "20", "--num_items", "100",
            "--num_interactions", "500", "--num_topics", "5", "--zipf_exponent", "1.2", "--with_weights=false"]
    assert main(argv) == 0
    recorded = json.load(open(tmp_path / "cli" / "generation.json"))["config"]
    assert recorded["num_topics"] == 5 and recorded["zipf_exponent"] == 1.2 and recorded["with_weights"] is False
    assert main(argv) == 1  # refuses to overwrite without --overwrite
    assert main(argv + ["--overwrite"]) == 0
    assert main(["synthetic", "--output_dir", str(tmp_path / "x"), "--num_users", "0"]) == 2
    assert "num_users must be >= 1" in capsys.readouterr().err
    assert main(["synthetic", "--num_users", "10"]) == 2  # --output_dir is required
    assert "--output_dir" in capsys.readouterr().err


def test_brand_preference_level_concentrates_users_on_brands():
    """With preference_level="brand" a user's items come from a few brands, unlike topic level."""
    import collections

    import numpy as np

    from pipelines.synthetic.groups import SyntheticConfig, sample_interactions, sample_items

    shares = {}
    for level in ("topic", "brand"):
        config = SyntheticConfig(output_dir="unused", num_users=400, num_items=4000, num_interactions=12000,
                                 preference_level=level, exploration=0.0)
        rng = np.random.default_rng(0)
        items = sample_items(config, rng)
        interactions = sample_interactions(config, items, rng)
        brands = items["brand"][interactions["item"]]
        per_user = [collections.Counter(brands[interactions["user"] == u]).most_common(1)[0][1]
                    / np.sum(interactions["user"] == u) for u in range(400) if np.sum(interactions["user"] == u) >= 10]
        shares[level] = float(np.mean(per_user))
    assert shares["brand"] > 0.5 > shares["topic"]
    with pytest.raises(ValueError, match="preference_level"):
        SyntheticConfig(output_dir="unused", preference_level="color")


def test_parquet_format_writes_the_same_rows(generated, tmp_path):
    import pyarrow.parquet as pq

    files, _, items, rows = generated
    parquet = synthetic.generate(_config(tmp_path / "pq", format="parquet"))
    assert os.path.basename(parquet.items) == "items.parquet"
    assert [os.path.basename(p) for p in parquet.interactions] == ["interactions.parquet"]
    table = pq.read_table(parquet.interactions[0])
    assert table.schema.field("timestamp").type == "int64" and table.schema.field("weight").type == "int64"
    assert [{k: str(v) for k, v in row.items()} for row in table.to_pylist()] == rows
    assert pq.read_table(parquet.items).to_pylist() == items
    schema = json.load(open(parquet.schema))
    assert (schema["interactions"]["path"], schema["items"]["path"]) == ("interactions.parquet", "items.parquet")
    with pytest.raises(ValueError, match="format must be one of"):
        _config(tmp_path / "x", format="orc")
