"""Reading a feature-pipeline output directory into what training, evaluation and export need.

:class:`FeatureSet` holds the schema, the vocabularies, the item corpus as dense id matrices
(row ``r`` = the ``r``-th entry of ``vocab/item_id.txt``), item sampling probabilities, the
head/tail split and the item-feature MI matrix. Id conventions (shared with the towers'
``StringLookup`` layers): 0 = padding / no value, 1 = out-of-vocabulary, ``2 + i`` = the ``i``-th
vocabulary entry. So the item tower's ``item_id`` id of corpus row ``r`` is ``r + 2``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os

import numpy as np
import tensorflow as tf

from recsys_ssl import schema as fs

PAD_ID, OOV_ID, FIRST_ID = 0, 1, 2


@dataclasses.dataclass
class FeatureSet:
    """Everything the model needs from a feature directory (see the module docstring).

    Attributes:
      features_dir: the directory read.
      schema: its :class:`recsys_ssl.schema.FeatureSchema`.
      vocabularies: feature vocab name -> values (ids ``2 + index``), after ``min_count``.
      item_ids: [num_items] corpus item ids, in ``vocab/item_id.txt`` order.
      item_feature_ids: feature name -> int32 [num_items] (single-valued) or
        [num_items, max_values] (multivalent, 0-padded) ids of every corpus item.
      item_probability: float32 [num_items], train frequency / number of train examples.
      is_head: bool [num_items], the head slice of ``stats.json``.
      mutual_information: the ``item_feature_mi.json`` document.
    """

    features_dir: str
    schema: fs.FeatureSchema
    vocabularies: dict[str, list[str]]
    item_ids: np.ndarray
    item_feature_ids: dict[str, np.ndarray]
    item_probability: np.ndarray
    is_head: np.ndarray
    mutual_information: dict

    @property
    def is_cold(self) -> np.ndarray:
        """bool [num_items]: items without a single training interaction (a subset of the tail)."""
        return self.item_probability == 0

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def load(cls, features_dir: str, max_values: int = 16, min_count: int = 1) -> "FeatureSet":
        schema = fs.FeatureSchema.load(features_dir)
        vocabularies = read_vocabularies(features_dir, schema, min_count)
        item_ids = np.array(vocabularies[fs.ITEM_ID], dtype=object)
        with open(os.path.join(features_dir, fs.STATS_FILE)) as f:
            stats = json.load(f)
        with open(os.path.join(features_dir, fs.MI_FILE)) as f:
            mutual_information = json.load(f)
        frequency = stats["item_train_frequency"]
        counts = np.array([frequency.get(i, 0) for i in item_ids], dtype=np.float64)
        total = max(stats["splits"]["train"]["examples"], 1)
        head = set(stats["head_tail"]["head_items"])
        feature_ids = _corpus_feature_ids(features_dir, schema, vocabularies, item_ids, max_values)
        logging.info("features %s: %d items, %d train examples, %d head items", features_dir, len(item_ids),
                     total, len(head))
        return cls(
            features_dir=features_dir, schema=schema, vocabularies=vocabularies, item_ids=item_ids,
            item_feature_ids=feature_ids, item_probability=(counts / total).astype(np.float32),
            is_head=np.array([i in head for i in item_ids]), mutual_information=mutual_information,
        )

    def split_files(self, split: str) -> list[str]:
        files = sorted(glob.glob(os.path.join(self.features_dir, f"{split}-*{fs.TFRECORD_SUFFIX}")))
        if not files:
            raise FileNotFoundError(f"no {split}-*{fs.TFRECORD_SUFFIX} files in {self.features_dir}")
        return files

    def examples(self, split: str) -> tf.data.Dataset:
        """Unbatched parsed examples of a split: ``user_id`` string [], ``history`` string [H]
        (padded with ""), ``item_id`` string [], ``timestamp`` int64 []."""
        spec = self.schema.example_parse_spec()
        history_length = self.schema.history_length

        def parse(serialized):
            parsed = tf.io.parse_single_example(serialized, spec)
            history = tf.sparse.to_dense(parsed[fs.HISTORY], default_value="")[-history_length:]
            history = tf.pad(history, [[0, history_length - tf.shape(history)[0]]], constant_values="")
            return {
                fs.USER_ID: parsed[fs.USER_ID],
                fs.HISTORY: tf.reshape(history, [history_length]),
                fs.ITEM_ID: parsed[fs.ITEM_ID],
                fs.TIMESTAMP: parsed[fs.TIMESTAMP],
            }

        return tf.data.TFRecordDataset(self.split_files(split), compression_type="GZIP").map(
            parse, num_parallel_calls=tf.data.AUTOTUNE
        )

    def read_split(self, split: str) -> dict[str, np.ndarray]:
        """A whole split in memory: ``user_id``, ``item_id`` (object arrays), ``history``
        (object [n, H]), ``timestamp`` (int64)."""
        columns = {fs.USER_ID: [], fs.HISTORY: [], fs.ITEM_ID: [], fs.TIMESTAMP: []}
        for batch in self.examples(split).batch(8192).as_numpy_iterator():
            for key in columns:
                columns[key].append(batch[key])
        if not columns[fs.ITEM_ID]:
            return {fs.USER_ID: np.array([], object), fs.HISTORY: np.zeros([0, self.schema.history_length], object),
                    fs.ITEM_ID: np.array([], object), fs.TIMESTAMP: np.array([], np.int64)}
        result = {key: np.concatenate(parts) for key, parts in columns.items()}
        for key in (fs.USER_ID, fs.ITEM_ID, fs.HISTORY):
            result[key] = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(result[key])
        return result


def read_vocabularies(features_dir: str, schema: fs.FeatureSchema, min_count: int = 1) -> dict[str, list[str]]:
    """Vocab name -> values of every item and query feature (``model.min_count`` applied; every
    corpus item keeps its id)."""
    vocabularies = {}
    for feature in schema.item_features + schema.query_features:
        if feature.vocab_name in vocabularies:
            continue
        values, counts = fs.read_vocab(feature.vocab_path(features_dir))
        if feature.vocab_name != fs.ITEM_ID:
            values = [v for v, c in zip(values, counts) if c >= min_count]
        vocabularies[feature.vocab_name] = values
    return vocabularies


def _corpus_feature_ids(features_dir, schema, vocabularies, item_ids, max_values) -> dict[str, np.ndarray]:
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    feature_ids = {fs.ITEM_ID: np.arange(FIRST_ID, FIRST_ID + len(item_ids), dtype=np.int32)}
    index = {
        f.name: {value: FIRST_ID + i for i, value in enumerate(vocabularies[f.vocab_name])}
        for f in schema.item_features[1:]
    }
    for feature in schema.item_features[1:]:
        shape = (len(item_ids), max_values) if feature.multivalent else (len(item_ids),)
        feature_ids[feature.name] = np.zeros(shape, dtype=np.int32)
    files = sorted(glob.glob(os.path.join(features_dir, f"{fs.ITEMS_PREFIX}-*{fs.TFRECORD_SUFFIX}")))
    if not files:
        raise FileNotFoundError(f"no item corpus ({fs.ITEMS_PREFIX}-*{fs.TFRECORD_SUFFIX}) in {features_dir}")
    seen = 0
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(raw).features.feature
        item_id = example[fs.ITEM_ID].bytes_list.value[0].decode("utf-8")
        row = row_of.get(item_id)
        if row is None:
            raise ValueError(f"corpus item {item_id!r} is missing from vocab/item_id.txt")
        seen += 1
        for feature in schema.item_features[1:]:
            values = [index[feature.name].get(v.decode("utf-8"), OOV_ID)
                      for v in example[feature.name].bytes_list.value]
            if feature.multivalent:
                values = values[:max_values]
                feature_ids[feature.name][row, : len(values)] = values
            elif values:
                feature_ids[feature.name][row] = values[0]
    if seen != len(item_ids):
        raise ValueError(f"the item corpus has {seen} items but vocab/item_id.txt lists {len(item_ids)}")
    return feature_ids
