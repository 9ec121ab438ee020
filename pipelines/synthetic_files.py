"""Writing a sampled synthetic data set in the feature pipeline's generic input format.

Two formats (``--format``), the same rows and the same ``schema.json`` fields:

- ``csv`` (default): ``items.jsonl`` (one JSON object per item, ``tags`` a list) and
  ``interactions.csv`` (or ``interactions-SSSSS-of-NNNNN.csv`` shards; header ``user_id,item_id,
  timestamp[,weight]``);
- ``parquet``: ``items.parquet`` (``tags`` a list<string> column) and ``interactions.parquet``
  (or shards; ``timestamp`` and ``weight`` int64).

Item ids are ``i`` + 7 digits, user ids ``u`` + 6 digits; feature values are strings.
"""

from __future__ import annotations

import json
import os

import numpy as np
from tqdm import tqdm

ITEM_FEATURES = ("category", "subcategory", "brand", "tags", "price_bucket", "language", "year")
PRICE_BUCKETS = ("p0", "p1", "p2", "p3", "p4")
LANGUAGES = ("en", "es", "de", "fr", "ja", "pt")
FORMATS = ("csv", "parquet")
_WRITE_CHUNK = 200_000


def ids(prefix: str, count: int, min_width: int) -> list[str]:
    width = max(min_width, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def input_schema(config, items_name: str, interactions_pattern: str) -> dict:
    """The ``schema.json`` document of a generated data set."""
    interactions = {"path": interactions_pattern, "user_id": "user_id", "item_id": "item_id",
                    "timestamp": "timestamp"}
    if config.with_weights:
        interactions["weight"] = "weight"
    features = [{"name": name, "column": name, "multivalent": name == "tags"} for name in ITEM_FEATURES]
    features[ITEM_FEATURES.index("tags")]["separator"] = "|"
    return {"interactions": interactions, "items": {"path": items_name, "item_id": "item_id", "features": features},
            "item_events": []}


def item_rows(config, items: dict[str, np.ndarray], item_ids: list[str]):
    """One ``{column: value}`` dict per item (feature values as strings, ``tags`` a list)."""
    c = config
    cat_width = len(str(c.num_categories - 1))
    categories = [f"cat{i:0{cat_width}d}" for i in range(c.num_categories)]
    subcategories = [f"{categories[i // c.subcategories_per_category]}/sub{i % c.subcategories_per_category}"
                     for i in range(c.num_categories * c.subcategories_per_category)]
    brands = ids("brand", len(subcategories) * c.brands_per_subcategory, 4)
    tag_names = ids("tag", c.num_tags, 3)
    columns = zip(item_ids, items["category"].tolist(), items["subcategory"].tolist(), items["brand"].tolist(),
                  items["tags"].tolist(), items["price_bucket"].tolist(), items["language"].tolist(),
                  items["year"].tolist())
    for item_id, cat, sub, brand, tags, price, language, year in columns:
        yield {
            "item_id": item_id, "category": categories[cat], "subcategory": subcategories[sub],
            "brand": brands[brand], "tags": [tag_names[t] for t in tags if t >= 0],
            "price_bucket": PRICE_BUCKETS[price], "language": LANGUAGES[language], "year": str(year),
        }


def _write_lines(path: str, header: str, lines, total: int, label: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f, tqdm(total=total, desc=label, unit="row",
                                                                    unit_scale=True, leave=False) as bar:
        f.write(header)
        buffer = []
        for line in lines:
            buffer.append(line)
            if len(buffer) == _WRITE_CHUNK:
                f.write("".join(buffer))
                bar.update(len(buffer))
                buffer.clear()
        f.write("".join(buffer))
        bar.update(len(buffer))


def _shard_names(config, extension: str) -> list[str]:
    if config.num_shards == 1:
        return [f"interactions.{extension}"]
    return [f"interactions-{i:05d}-of-{config.num_shards:05d}.{extension}" for i in range(config.num_shards)]


def write_tables(config, items: dict[str, np.ndarray], inter: dict[str, np.ndarray],
                 directory: str) -> tuple[str, list[str], str]:
    """Writes the items and interaction files of ``config.format`` into ``directory``.

    Args:
      config: the generator's ``SyntheticConfig``.
      items: the sampled item table (integer codes, see ``synthetic.sample_items``).
      inter: the sampled interactions (``user``, ``item``, ``timestamp``, ``weight``: [n] int64).
      directory: where to write.

    Returns:
      ``(items file name, interaction file names, interactions glob for schema.json)``.
    """
    extension = "csv" if config.format == "csv" else "parquet"
    item_ids, user_ids = ids("i", config.num_items, 7), ids("u", config.num_users, 6)
    shard_names = _shard_names(config, extension)
    bounds = np.linspace(0, config.num_interactions, config.num_shards + 1).astype(np.int64)
    pattern = shard_names[0] if config.num_shards == 1 else f"interactions-*-of-*.{extension}"
    if config.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        items_name = "items.parquet"
        pq.write_table(pa.Table.from_pylist(list(item_rows(config, items, item_ids))),
                       os.path.join(directory, items_name))
        user_array, item_array = np.asarray(user_ids, dtype=object), np.asarray(item_ids, dtype=object)
        for name, lo, hi in zip(shard_names, bounds[:-1], bounds[1:]):
            columns = {"user_id": pa.array(user_array[inter["user"][lo:hi]], pa.string()),
                       "item_id": pa.array(item_array[inter["item"][lo:hi]], pa.string()),
                       "timestamp": pa.array(inter["timestamp"][lo:hi], pa.int64())}
            if config.with_weights:
                columns["weight"] = pa.array(inter["weight"][lo:hi], pa.int64())
            pq.write_table(pa.table(columns), os.path.join(directory, name), row_group_size=100_000)
        return items_name, shard_names, pattern
    items_name = "items.jsonl"
    _write_lines(os.path.join(directory, items_name), "",
                 (json.dumps(row) + "\n" for row in item_rows(config, items, item_ids)), config.num_items, items_name)
    header = "user_id,item_id,timestamp" + (",weight\n" if config.with_weights else "\n")
    for name, lo, hi in zip(shard_names, bounds[:-1], bounds[1:]):
        columns = [inter["user"][lo:hi].tolist(), inter["item"][lo:hi].tolist(), inter["timestamp"][lo:hi].tolist()]
        if config.with_weights:
            lines = (f"{user_ids[u]},{item_ids[i]},{t},{w}\n"
                     for u, i, t, w in zip(*columns, inter["weight"][lo:hi].tolist()))
        else:
            lines = (f"{user_ids[u]},{item_ids[i]},{t}\n" for u, i, t in zip(*columns))
        _write_lines(os.path.join(directory, name), header, lines, int(hi - lo), name)
    return items_name, shard_names, pattern
