"""``pipelines.synthetic.long_tail``: the positive control's story, measured on samples and written files."""

from __future__ import annotations

import json

import numpy as np

from pipelines.__main__ import main


def _long_tail(tmp_path, **overrides):
    from pipelines.synthetic import long_tail as lt

    values = dict(output_dir=str(tmp_path), num_users=600, num_items=3000, num_interactions=30_000,
                  num_categories=6, brands_per_category=10, tags_per_category=12, seed=4)
    values.update(overrides)
    return lt, lt.LongTailConfig(**values)


def test_long_tail_regime_follows_its_story(tmp_path):
    lt, config = _long_tail(tmp_path)
    item_seed, interaction_seed = np.random.SeedSequence(config.seed).spawn(2)
    items = lt.sample_items(config, np.random.default_rng(item_seed))
    inter = lt.sample_interactions(config, items, np.random.default_rng(interaction_seed))
    # Nesting: brand inside category, series inside brand, tags from the category's own pool.
    assert (items["brand"] // config.brands_per_category == items["category"]).all()
    series_brand = {}
    for series, brand in zip(items["series"], items["brand"]):
        assert series_brand.setdefault(series, brand) == brand
    has_tag = items["tags"] >= 0
    assert has_tag.any(axis=1).all() and (has_tag.sum(axis=1) <= lt.MAX_TAGS).all()
    tag_category = np.where(has_tag, items["tags"] // config.tags_per_category, -1)
    assert ((tag_category == items["category"][:, None]) | ~has_tag).all()
    # Cold items: none of their interactions happen before the release window.
    low, _ = inter["cold_release"]
    cold_rows = items["cold"][inter["item"]]
    assert cold_rows.any() and (inter["timestamp"][cold_rows] >= low).all()
    assert (inter["timestamp"][~cold_rows] < low).mean() > 0.9
    # A long tail: the top 20% of items take most interactions.
    counts = np.sort(np.bincount(inter["item"], minlength=config.num_items))[::-1]
    assert counts[: config.num_items // 5].sum() / counts.sum() > 0.6
    dependence = lt.measure_dependence(items, lt.ITEM_FEATURES)
    assert dependence["brand|series"] > dependence["brand|price_bucket"] > dependence["brand|language"]
    assert dependence["series|tags"] > 1.0 and dependence["price_bucket|language"] < 0.01


def test_long_tail_regime_cli_writes_csv_and_parquet_and_refuses_foreign_flags(tmp_path, capsys):
    base = ["--num_users", "300", "--num_items", "1200", "--num_interactions",
            "6000", "--num_categories", "4", "--brands_per_category", "6"]
    assert main(["synthetic_long_tail", "--output_dir", str(tmp_path / "csv"), *base]) == 0
    assert main(["synthetic_long_tail", "--output_dir", str(tmp_path / "pq"), *base, "--format", "parquet"]) == 0
    import pyarrow.parquet as pq

    csv_items = [json.loads(line) for line in open(tmp_path / "csv" / "items.jsonl")]
    assert pq.read_table(tmp_path / "pq" / "items.parquet").to_pylist() == csv_items
    assert set(csv_items[0]) == {"item_id", "category", "brand", "series", "tags", "price_bucket", "language"}
    summary = json.load(open(tmp_path / "csv" / "generation.json"))
    assert summary["regime"] == "long_tail_features" and summary["stats"]["cold_items"] == 60
    # a flag of the other regime is not this regime's
    assert main(["synthetic_long_tail", "--output_dir", str(tmp_path / "x"), *base, "--preference_level", "brand"]) == 2
    assert main(["synthetic", "--output_dir", str(tmp_path / "y"), "--regime", "long_tail_features"]) == 2
    assert "use `python -m pipelines synthetic_long_tail`" in capsys.readouterr().err
