"""Writing a synthetic data set in the feature pipeline's generic input format (every regime).

A regime (:mod:`pipelines.synthetic.groups`, :mod:`pipelines.synthetic.long_tail`) samples an
item table and interactions; this module writes them atomically with ``input_schema.json`` and
``generation.json``, measures the realised feature dependence, and its config fields are
the ``python -m pipelines synthetic`` flags (:mod:`core.cli`). Two formats (``--format``), the same rows and schema fields:

- ``csv`` (default): ``items.jsonl`` (one JSON object per item, multivalent features as lists)
  and ``interactions.csv`` (or ``interactions-SSSSS-of-NNNNN.csv`` shards; header
  ``user_id,item_id,timestamp[,weight]``);
- ``parquet``: ``items.parquet`` (multivalent features as list<string> columns) and
  ``interactions.parquet`` (or shards; ``timestamp`` and ``weight`` int64).

Item ids are ``i`` + 7 digits, user ids ``u`` + 6 digits; feature values are strings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from tqdm import tqdm

from core.cli import flag
from pipelines.features.mutual_information import coded_mutual_information
from pipelines.io.input_schema import INPUT_SCHEMA_FILE

logger = logging.getLogger(__name__)

SUMMARY_FILE = "generation.json"
FORMATS = ("csv", "parquet")
ITEMS_FILES = {"csv": "items.jsonl", "parquet": "items.parquet"}
_WRITE_CHUNK = 200_000


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
    """What every regime shares: sizes, seed, time range, sessions and the output. Subclassed by each
    regime's config (which adds its own story's fields); every field is also a ``--flag``."""

    output_dir: str = flag("directory to write input_schema.json, items and interaction files")
    num_users: int = flag("number of users (each gets at least one interaction)", default=10_000)
    num_items: int = flag("number of items (all are written to the items file)", default=5_000)
    num_interactions: int = flag("number of interaction rows", default=200_000)
    seed: int = flag("random seed; the output is a deterministic function of the config", default=0)
    session_break_probability: float = flag("probability that an interaction starts a new session", default=0.20)
    start_timestamp: int = flag("earliest timestamp, seconds (2019-01-01 UTC)", default=1_546_300_800)
    end_timestamp: int = flag("latest timestamp, seconds (2024-01-01 UTC)", default=1_704_067_200)
    with_weights: bool = flag("write a 1-5 rating as the weight column", default=True)
    num_shards: int = flag("number of interaction files", default=1)
    format: Literal["csv", "parquet"] = flag("'csv' (interactions CSV + items JSONL) or 'parquet' (both Parquet)", default="csv")
    overwrite: bool = flag("replace an earlier generator output in output_dir", default=False)

    def __post_init__(self):
        for name in ("num_users", "num_items", "num_interactions", "num_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, received {getattr(self, name)}")
        if not 0.0 <= self.session_break_probability <= 1.0:
            raise ValueError(f"session_break_probability must be in [0, 1], received {self.session_break_probability}")
        if self.num_interactions < self.num_users:
            raise ValueError(f"num_interactions ({self.num_interactions}) must be >= num_users "
                             f"({self.num_users}): every user has at least one interaction")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, received {self.format!r}")
        if self.end_timestamp - self.start_timestamp < self.num_interactions:
            raise ValueError("end_timestamp - start_timestamp must be at least num_interactions seconds, "
                             f"received [{self.start_timestamp}, {self.end_timestamp}]")


@dataclasses.dataclass(frozen=True)
class GeneratedFiles:
    """Absolute paths of one generator output, plus the realised statistics (``generation.json``)."""

    schema: str
    items: str
    interactions: tuple[str, ...]
    summary: str
    stats: dict


def ids(prefix: str, count: int, min_width: int) -> list[str]:
    """``prefix`` + zero-padded index, for ``count`` ids (width >= ``min_width``)."""
    width = max(min_width, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def write_lines(path: str, header: str, lines: Iterable[str], total: int, label: str) -> None:
    """Writes ``header`` then ``lines`` in chunks, with a progress bar of ``total`` rows."""
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


def measure_dependence(items: dict[str, np.ndarray], features: Sequence[str],
                       multivalent: str = "tags") -> dict[str, float]:
    """MI (nats) between every pair of ``features`` of the item table, keyed ``"a|b"``.

    Same definition as the feature pipeline's ``item_feature_mi.json``: every item has unit
    mass, spread evenly over its values of the ``multivalent`` feature ([num_items, V] codes,
    -1 = none) for pairs with it. Plug-in estimates are biased upwards by about
    (|A| - 1)(|B| - 1) / (2 n), so compare pairs at similar cardinality.
    """
    has_value = items[multivalent] >= 0
    value_count = has_value.sum(axis=1)
    result = {}
    for i, a in enumerate(features):
        for b in features[i + 1:]:
            if multivalent in (a, b):
                other = np.repeat(items[b if a == multivalent else a], value_count)
                x, y, weight = items[multivalent][has_value], other, np.repeat(1.0 / value_count, value_count)
            else:
                x, y, weight = items[a], items[b], np.ones(len(items[a]))
            result[f"{a}|{b}"] = round(coded_mutual_information(x - x.min(), y - y.min(), weight), 4)
    return result


def schema(features: Sequence[str], multivalent: Sequence[str], with_weights: bool) -> dict:
    """The generic format's ``input_schema.json`` (file paths are filled in by :func:`write_dataset`)."""
    interactions = {"path": "", "user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}
    if with_weights:
        interactions["weight"] = "weight"
    columns = [{"name": name, "column": name, "multivalent": name in multivalent} for name in features]
    for column in columns:
        if column["multivalent"]:
            column["separator"] = "|"
    return {"interactions": interactions, "items": {"path": "", "item_id": "item_id", "features": columns},
            "item_events": []}


def check_output_dir(output_dir: str, overwrite: bool) -> str:
    """Absolute ``output_dir`` after checking it may receive a generator output.

    Raises:
      ValueError: ``output_dir`` is empty, holds a ``input_schema.json`` this generator did not write,
        or holds an earlier generator output and ``overwrite`` is false.
    """
    if not output_dir:
        raise ValueError("output_dir is required")
    output_dir = os.path.abspath(output_dir)
    schema_path = os.path.join(output_dir, INPUT_SCHEMA_FILE)
    if os.path.exists(schema_path):
        if not os.path.exists(os.path.join(output_dir, SUMMARY_FILE)):
            raise ValueError(f"{output_dir} holds a {INPUT_SCHEMA_FILE} that this generator did not write "
                             f"(no {SUMMARY_FILE}); choose another output_dir")
        if not overwrite:
            raise ValueError(f"{output_dir} already holds a generated data set; pass overwrite=True "
                             "(--overwrite) to replace it")
    return output_dir


def shard_names(num_shards: int, extension: str = "csv") -> list[str]:
    if num_shards == 1:
        return [f"interactions.{extension}"]
    return [f"interactions-{i:05d}-of-{num_shards:05d}.{extension}" for i in range(num_shards)]


def _write_tables(config, item_rows: Iterable[dict], inter: dict[str, np.ndarray], directory: str) -> list[str]:
    """Writes the items and interaction files of ``config.format``; returns the interaction file names."""
    extension = "csv" if config.format == "csv" else "parquet"
    item_ids, user_ids = ids("i", config.num_items, 7), ids("u", config.num_users, 6)
    names = shard_names(config.num_shards, extension)
    bounds = np.linspace(0, config.num_interactions, config.num_shards + 1).astype(np.int64)
    items_path = os.path.join(directory, ITEMS_FILES[config.format])
    if config.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(item_rows)), items_path)
        user_array, item_array = np.asarray(user_ids, dtype=object), np.asarray(item_ids, dtype=object)
        for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
            columns = {"user_id": pa.array(user_array[inter["user"][lo:hi]], pa.string()),
                       "item_id": pa.array(item_array[inter["item"][lo:hi]], pa.string()),
                       "timestamp": pa.array(inter["timestamp"][lo:hi], pa.int64())}
            if config.with_weights:
                columns["weight"] = pa.array(inter["weight"][lo:hi], pa.int64())
            pq.write_table(pa.table(columns), os.path.join(directory, name), row_group_size=100_000)
        return names
    write_lines(items_path, "", (json.dumps(row) + "\n" for row in item_rows), config.num_items,
                ITEMS_FILES[config.format])
    header = "user_id,item_id,timestamp" + (",weight\n" if config.with_weights else "\n")
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        columns = [inter["user"][lo:hi].tolist(), inter["item"][lo:hi].tolist(), inter["timestamp"][lo:hi].tolist()]
        if config.with_weights:
            lines = (f"{user_ids[u]},{item_ids[i]},{t},{w}\n"
                     for u, i, t, w in zip(*columns, inter["weight"][lo:hi].tolist()))
        else:
            lines = (f"{user_ids[u]},{item_ids[i]},{t}\n" for u, i, t in zip(*columns))
        write_lines(os.path.join(directory, name), header, lines, int(hi - lo), name)
    return names


def write_dataset(config, item_rows: Iterable[dict], inter: dict[str, np.ndarray], stats: dict,
                  dataset_schema: dict, summary: dict | None = None) -> GeneratedFiles:
    """Writes one generated data set into ``config.output_dir``.

    Files are written into a hidden temporary directory inside ``output_dir`` and moved into
    place when complete, ``input_schema.json`` last, so a reader that finds ``input_schema.json`` finds the
    whole data set.

    Args:
      config: the regime's config dataclass (``output_dir``, ``overwrite``, ``num_users``,
        ``num_items``, ``num_interactions``, ``num_shards``, ``with_weights``, ``format``).
      item_rows: one ``{column: value}`` dict per item, in item-id order (``i0000000``...):
        feature values as strings, multivalent ones as lists.
      inter: ``user``, ``item``, ``timestamp`` and ``weight`` int64 [num_interactions], time-ordered.
      stats: realised statistics (``generation.json``).
      dataset_schema: :func:`schema`'s document (this function sets the file paths).
      summary: extra top-level entries of ``generation.json``.
    """
    output_dir = check_output_dir(config.output_dir, config.overwrite)
    schema_path = os.path.join(output_dir, INPUT_SCHEMA_FILE)
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-synthetic-", dir=output_dir)
    items_name = ITEMS_FILES[config.format]
    try:
        names = _write_tables(config, item_rows, inter, staging)
        pattern = names[0] if config.num_shards == 1 else "interactions-*-of-*." + names[0].rsplit(".", 1)[1]
        dataset_schema = {**dataset_schema, "interactions": {**dataset_schema["interactions"], "path": pattern},
                          "items": {**dataset_schema["items"], "path": items_name}}
        with open(os.path.join(staging, SUMMARY_FILE), "w") as f:
            json.dump({"config": dataclasses.asdict(config), **(summary or {}), "stats": stats}, f, indent=2)
        with open(os.path.join(staging, INPUT_SCHEMA_FILE), "w") as f:
            json.dump(dataset_schema, f, indent=2)
        if os.path.exists(schema_path):  # overwrite: retire the earlier output, schema first
            os.remove(schema_path)
            for name in os.listdir(output_dir):
                if name.startswith(("interactions", "items.")) and name.endswith((".csv", ".jsonl", ".parquet")):
                    os.remove(os.path.join(output_dir, name))
        for name in [items_name, *names, SUMMARY_FILE, INPUT_SCHEMA_FILE]:
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return GeneratedFiles(schema=schema_path, items=os.path.join(output_dir, items_name),
                          interactions=tuple(os.path.join(output_dir, n) for n in names),
                          summary=os.path.join(output_dir, SUMMARY_FILE), stats=stats)


def generate(config: GeneratorSettings, sample_items, sample_interactions, item_rows, stats, features: Sequence[str],
             multivalent: Sequence[str], summary: dict | None = None) -> GeneratedFiles:
    """Samples and writes one data set of a regime into ``config.output_dir`` (atomically).

    Args:
      config: the regime's config.
      sample_items: ``(config, rng) -> item table`` (dict of arrays).
      sample_interactions: ``(config, items, rng) -> {"user", "item", "timestamp", "weight", ...}``.
      item_rows: ``(config, items, item_ids) -> iterable of {column: value}`` (see :func:`write_dataset`).
      stats: ``(config, items, interactions) -> dict`` of realised statistics.
      features / multivalent: the item columns of ``input_schema.json``.
      summary: extra top-level entries of ``generation.json``.

    Raises:
      ValueError: see :func:`check_output_dir`.
    """
    check_output_dir(config.output_dir, config.overwrite)
    started = time.perf_counter()
    item_seed, interaction_seed = np.random.SeedSequence(config.seed).spawn(2)
    items = sample_items(config, np.random.default_rng(item_seed))
    inter = sample_interactions(config, items, np.random.default_rng(interaction_seed))
    logger.info("sampled %d items and %d interactions in %.1fs", config.num_items, config.num_interactions,
                time.perf_counter() - started)
    realised = stats(config, items, inter)
    files = write_dataset(config, item_rows(config, items, ids("i", config.num_items, 7)), inter, realised,
                          schema(features, multivalent, config.with_weights), summary)
    logger.info("wrote %s in %.1fs: %s", config.output_dir, time.perf_counter() - started, realised)
    return files
