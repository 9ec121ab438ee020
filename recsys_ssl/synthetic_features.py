"""A :class:`FeatureSet` of synthetic items built in memory, and training batches drawn from it.

For sizing and step-time measurements at catalogue sizes (1-10M items) that the feature
pipeline takes hours to produce, and for fast tests that need a model but not a feature
directory. The item features have the shape of the long-tail regime's
(:mod:`pipelines.synthetic.long_tail`): ``category`` (20), ``brand`` (1,000), ``series``
(~items / 6), ``tags`` (multivalent, 1-4 of 1,200), ``price_bucket`` (5), ``language`` (6);
popularity is Zipf over a random permutation of the items. The values are random (no
correlation): use the generator and the pipeline for anything about quality.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from recsys_ssl import schema as fs
from recsys_ssl.data import FIRST_ID, FeatureSet

# feature name -> number of values (None: items // 6); tags is the multivalent one.
FEATURE_CARDINALITY = {"category": 20, "brand": 1_000, "series": None, "tags": 1_200, "price_bucket": 5,
                       "language": 6}
MULTIVALENT = ("tags",)
MAX_TAGS = 4


def synthetic_schema(history_length: int = 20) -> fs.FeatureSchema:
    """The schema of :func:`synthetic_feature_set`: item_id and the six features above."""
    return fs.FeatureSchema(
        item_features=(fs.FeatureSpec(fs.ITEM_ID, identifier=True),)
        + tuple(fs.FeatureSpec(name, multivalent=name in MULTIVALENT) for name in FEATURE_CARDINALITY),
        history_length=history_length)


def synthetic_feature_set(num_items: int, num_users: int, max_values: int = 16, history_length: int = 20,
                          zipf_exponent: float = 1.0, seed: int = 0) -> FeatureSet:
    """Builds the feature set in memory (no files; ``features_dir`` is empty).

    Args:
      num_items: catalogue size (>= 10).
      num_users: user vocabulary size (>= 1).
      max_values: width of the multivalent corpus matrices (``model.max_values``).
      history_length: the schema's history length.
      zipf_exponent: item popularity ``~ rank^-zipf_exponent`` (item_probability).
      seed: everything random follows it.

    Returns:
      A FeatureSet: ``item_ids`` ``"i0".."i{N-1}"``, users ``"u0"..``, item_feature_ids int32
      [N] or [N, max_values], item_probability float32 [N] (sums to 1), the top 20% of items by
      probability as head, and an MI document with equal affinities (CFM groups at random).

    Raises:
      ValueError: ``num_items < 10`` or ``num_users < 1``.
    """
    if num_items < 10 or num_users < 1:
        raise ValueError(f"num_items must be >= 10 and num_users >= 1, received {num_items} and {num_users}")
    rng = np.random.default_rng(seed)
    schema = synthetic_schema(history_length)
    item_ids = np.array([f"i{i}" for i in range(num_items)], dtype=object)
    vocabularies = {fs.ITEM_ID: item_ids.tolist(), fs.USER_ID: [f"u{i}" for i in range(num_users)]}
    feature_ids = {fs.ITEM_ID: np.arange(FIRST_ID, FIRST_ID + num_items, dtype=np.int32)}
    for name, cardinality in FEATURE_CARDINALITY.items():
        cardinality = cardinality or max(1, num_items // 6)
        vocabularies[name] = [f"{name}{v}" for v in range(cardinality)]
        if name in MULTIVALENT:
            ids = np.zeros((num_items, max_values), np.int32)
            counts = rng.integers(1, min(MAX_TAGS, max_values) + 1, size=num_items)
            for slot in range(min(MAX_TAGS, max_values)):
                values = rng.integers(FIRST_ID, FIRST_ID + cardinality, size=num_items, dtype=np.int32)
                ids[:, slot] = np.where(slot < counts, values, 0)
        else:
            ids = rng.integers(FIRST_ID, FIRST_ID + cardinality, size=num_items, dtype=np.int32)
        feature_ids[name] = ids
    ranks = rng.permutation(num_items) + 1
    probability = ranks.astype(np.float64) ** -zipf_exponent
    probability = (probability / probability.sum()).astype(np.float32)
    names = schema.item_feature_names
    affinity = np.full((len(names), len(names)), 0.1)
    np.fill_diagonal(affinity, 1.0)
    return FeatureSet(
        features_dir="", schema=schema, vocabularies=vocabularies, item_ids=item_ids,
        item_feature_ids=feature_ids, item_probability=probability,
        is_head=ranks <= max(1, num_items // 5),
        mutual_information={"features": names, "mi": affinity.tolist(), "normalized_mi": affinity.tolist()})


def synthetic_batches(feature_set: FeatureSet, batch_size: int, num_batches: int, seed: int = 0) -> list[dict]:
    """Training batches: targets and history items drawn by popularity, random users.

    Returns:
      ``num_batches`` dicts ``user_id`` string [B], ``history`` string [B, H] (0..H items, padded
      with ""), ``item_id`` string [B].
    """
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(feature_set.item_probability.astype(np.float64))
    history_length = feature_set.schema.history_length
    users = feature_set.vocabularies[fs.USER_ID]

    def items(shape):
        rows = np.minimum(np.searchsorted(cumulative, rng.random(shape) * cumulative[-1]), feature_set.num_items - 1)
        return feature_set.item_ids[rows]

    batches = []
    for _ in range(num_batches):
        history = items((batch_size, history_length)).astype(str)
        lengths = rng.integers(0, history_length + 1, size=batch_size)
        history[np.arange(history_length)[None, :] >= lengths[:, None]] = ""
        batches.append({
            fs.USER_ID: tf.constant([users[i] for i in rng.integers(0, len(users), size=batch_size)]),
            fs.HISTORY: tf.constant(history),
            fs.ITEM_ID: tf.constant(items(batch_size).astype(str)),
        })
    return batches
